"""The import diagram of README/STYLE.md, checked by walking every module's imports."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "pointdiff"

# module (or package prefix) -> pointdiff modules it must never import
FORBIDDEN = {
    "config": ["*"],
    "pointcloud": ["*"],
    "dist": ["*"],
    "clip_files": ["*"],
    "diffusion": ["models", "data", "text", "mesh", "pipeline", "training", "checkpoint"],
    "models": ["diffusion", "data", "text", "checkpoint", "mesh", "pipeline", "training"],
    "text": ["models", "diffusion", "data", "mesh", "pipeline", "training"],
    "hf_text": ["models", "diffusion", "data", "mesh", "pipeline", "training", "checkpoint"],
    "text_transfer": ["*"],
    "image": ["models", "diffusion", "data", "mesh", "pipeline", "training"],
    "mesh": ["models", "diffusion", "data", "text", "pipeline", "training"],
    "data": ["models", "diffusion", "text", "mesh", "pipeline", "training"],
    "render": ["models", "diffusion", "data", "text", "pipeline", "training"],
    "lexicon": ["models", "diffusion", "data", "mesh", "pipeline", "training", "checkpoint"],
}
ALLOWED_ALWAYS = {"config", "pointcloud"}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("pointdiff.")
        ):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("pointdiff.")}
    return found


def test_import_direction():
    errors = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).with_suffix("")
        top = rel.parts[0]
        rule = FORBIDDEN.get(top)
        if rule is None:
            continue
        for imp in _imports(path) - {top}:
            if (rule == ["*"] and imp not in ALLOWED_ALWAYS - {top}) or imp in rule:
                if not (rule == ["*"] and imp in ALLOWED_ALWAYS):
                    errors.append(f"{rel} imports pointdiff.{imp}")
    assert not errors, "\n".join(errors)


def test_library_never_imports_clis():
    for path in PKG.rglob("*.py"):
        bad = {"train", "data_tools", "tests"} & {
            (a.name if isinstance(node, ast.Import) else node.module or "").split(".")[0]
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Import | ast.ImportFrom)
            for a in (node.names if isinstance(node, ast.Import) else [node])
        }
        assert not bad, f"{path} imports {bad}"
