"""The import diagram of README.md ("Layout and import diagram"), checked on every module's imports.

A whitelist: each top-level module or package of ``pointdiff`` names the other ones it may
import (imports inside one package are free). A module with no rule fails the test, so a new
module has to be placed in the diagram.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "pointdiff"

BASE = {"config", "atomic", "colours", "pointcloud_io", "pointcloud"}
ANYTHING = None  # the entry points: every pointdiff module

# top-level module or package -> the pointdiff modules it may import
ALLOWED: dict[str, set[str] | None] = {
    # the base: numbers, files and the point-cloud conventions
    "config": set(),
    "atomic": set(),
    "colours": set(),
    "pointcloud_io": {"atomic"},
    "pointcloud": {"pointcloud_io"},
    "__init__": {"pointcloud"},
    # the hardware: which device and precision to run on (no other pointdiff module)
    "precision": set(),
    # the stages, which never import each other: the pipeline and the training loop join them
    "diffusion": {"config"},
    "models": {"config"},
    "conditioning": {"config", "atomic", "colours", "pointcloud"},
    "meshing": {"config", "atomic", "colours", "pointcloud"},
    "densify": {"config", "pointcloud"},
    "render": {"config", "colours", "pointcloud"},
    "data": {"config", "atomic", "pointcloud"},
    "checkpoint": {"config", "atomic", "models"},
    # judging samples (evaluation trains and loads its own classifier: checkpoint hashes)
    "metrics": {"config", "pointcloud"},
    "evaluation": BASE | {"metrics", "data", "render", "checkpoint"},
    # joining the stages
    "training": BASE | {"diffusion", "models", "data", "checkpoint", "conditioning", "evaluation"},
    "pipeline": BASE
    | {"diffusion", "models", "conditioning", "meshing", "checkpoint", "densify", "render"}
    | {"precision"},
    "compat": BASE
    | {"diffusion", "models", "conditioning", "checkpoint", "pipeline", "meshing", "nerf"},
    # rendering implicit fields (NeRF volume rendering, STF meshes): takes callables, not models;
    # its mesh turntables shade surface samples as render's previews do
    "nerf": {"config", "atomic", "colours", "pointcloud", "meshing", "render"},
    # entry points
    "outputs": ANYTHING,
    "release": ANYTHING,
    "cli": ANYTHING,
    "cli_checks": ANYTHING,
    "demo": ANYTHING,  # the web demo: an entry point like cli
}
# the stages: none of them may import another (only what joins them does)
STAGES = {"diffusion", "models", "conditioning", "meshing", "data"}


def _top(path: Path) -> str:
    return path.relative_to(PKG).with_suffix("").parts[0]


def _imported_modules(path: Path) -> set[str]:
    """Top-level names of everything ``path`` imports (absolute imports), at any depth."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            if node.module == "pointdiff":  # from pointdiff import pointcloud
                names |= {f"pointdiff.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


def _pointdiff_imports(path: Path) -> set[str]:
    parts = [n.split(".") for n in _imported_modules(path)]
    return {p[1] for p in parts if p[0] == "pointdiff" and len(p) > 1}


def test_every_module_has_a_rule():
    missing = sorted({_top(p) for p in PKG.rglob("*.py")} - set(ALLOWED))
    assert not missing, f"no import rule for pointdiff.{missing} (add it to ALLOWED and README)"


def test_modules_import_only_what_their_layer_allows():
    errors = []
    for path in sorted(PKG.rglob("*.py")):
        top = _top(path)
        allowed = ALLOWED.get(top, set())
        if allowed is ANYTHING:
            continue
        for imp in sorted(_pointdiff_imports(path) - {top} - allowed):
            errors.append(f"{path.relative_to(ROOT)} imports pointdiff.{imp}")
    assert not errors, "\n".join(errors)


def test_stages_never_import_each_other():
    for stage in STAGES:
        assert not ALLOWED[stage] & (STAGES - {stage}), stage


def test_library_never_imports_clis_tools_or_tests():
    for path in PKG.rglob("*.py"):
        tops = {name.split(".")[0] for name in _imported_modules(path)}
        bad = tops & {"train", "data_tools", "benchmarks", "tests"}
        assert not bad, f"{path} imports {bad}"
