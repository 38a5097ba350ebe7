"""Shared fixtures: synthetic shapes every clone has, and the one way to reach downloaded data.

Tests that only need *some* mesh or cloud use ``synthetic_meshes`` / ``synthetic_clouds``
(built here in code). Tests that need the real datasets (the ShapeNet subset, glTF and Objaverse
samples, point-e's example clouds; see tests/data/README.md) take the ``shared_data`` fixture:
it reads the folder named by ``POINTDIFF_TEST_DATA`` and skips without it, or fails when
``POINTDIFF_REQUIRE_DATA=1`` (what ``.ci/run`` sets, so CI cannot silently skip them).
``random_pointe_state_dict`` stands in for a released point-e file in the compat tests, and
``converted_pointe`` writes and converts a tiny released text base and upsampler.
"""

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

# Two cores in CI: keep each test process lean and deterministic.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

DATA_ENV = "POINTDIFF_TEST_DATA"
REQUIRE_ENV = "POINTDIFF_REQUIRE_DATA"
DATA_HELP = (
    f"needs the downloadable test data (ShapeNet subset, glTF/Objaverse samples, point-e "
    f"examples): fetch it as tests/data/README.md describes and set {DATA_ENV}=/path/to/data"
)


def pytest_configure(config):
    config.addinivalue_line("markers", f"data: needs the datasets in ${DATA_ENV}")


def pytest_collection_modifyitems(config, items):
    # every test that reads the datasets carries `data`, so `-m "not data"` deselects them
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.data)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The dataset folder named by ``$POINTDIFF_TEST_DATA`` (layout: tests/data/README.md)."""
    value = os.environ.get(DATA_ENV, "")
    root = Path(value).expanduser().resolve() if value else None
    if root is None or not root.is_dir():
        where = f"{DATA_ENV}={value!r} is not a directory" if value else f"{DATA_ENV} is unset"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{where} but {REQUIRE_ENV}=1: {DATA_HELP}", pytrace=False)
        pytest.skip(f"{where}; {DATA_HELP}")
    return root


@pytest.fixture
def sigterm_job():
    """``stop(argv, log, lines) -> (step, output)``: start a training command in its own process
    group (as a scheduler's job), wait until its ``log.jsonl`` has ``lines`` entries, SIGTERM
    the whole group; check it exits with the requeue status after saying so, and return the step
    its last checkpoint holds and its stdout + stderr. One intra-op thread."""
    import json
    import signal
    import subprocess
    import time

    from pointdiff.training.preemption import REQUEUE_EXIT_CODE

    def stop(argv: list[str], log: Path, lines: int) -> tuple[int, str]:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        job = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, as a job's
        )
        deadline = time.monotonic() + 300
        while not (log.is_file() and len(log.read_text().splitlines()) >= lines):
            assert job.poll() is None and time.monotonic() < deadline, job.communicate()[1][-3000:]
            time.sleep(0.05)
        os.killpg(job.pid, signal.SIGTERM)
        out, err = job.communicate(timeout=300)
        assert job.returncode == REQUEUE_EXIT_CODE, err[-3000:]
        assert "SIGTERM: stopped after step" in out + err
        return json.loads((log.parent / "latest.json").read_text())["step"], out + err

    return stop


@pytest.fixture
def one_thread():
    """One intra-op thread for tiny models: on a busy 2-core box a second one only spins
    (measured 18 ms vs 300 ms per training step under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def random_pointe_state_dict():
    """``make(cfg, seed)``: a random-weight model of ``cfg`` as a released point-e file would hold
    it: point-e's parameter names (diffusion nets: ``resblocks``, ``clip_embed``; the upsampler's
    channel-scale buffers), plain tensors for ``torch.save``."""
    from pointdiff.models import build_model

    def make(cfg, seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        sd = {}
        for k, v in build_model(cfg).state_dict().items():
            k = re.sub(r"^backbone\.blocks\.", "backbone.resblocks.", k)
            k = re.sub(r"^(text_proj|grid_embed)\.", "clip_embed.", k)
            sd[k] = torch.randn_like(v) * (0.15 if v.ndim > 1 else 0.05)
        if cfg.kind == "upsampler":
            sd["channel_scales"] = torch.tensor([2.0, 2.0, 2.0] + [1 / 127.5] * 3)
            sd["channel_biases"] = torch.tensor([0.0, 0.0, 0.0, -1.0, -1.0, -1.0])
        return sd

    return make


@pytest.fixture(scope="session")
def converted_pointe(random_pointe_state_dict):
    """``make(root, n_base, n_up) -> root``: a tiny random "released" point-e text base
    (``base40M-textvec``: ``n_base`` points, 32-d text vectors) and upsampler (``upsample``:
    ``n_up`` new points on ``n_base``), each written as point-e's ``root/<name>.pt`` and converted
    to ``root/<name>/``. Width 32, one block, two heads, point-e's 12 output channels (ε and the
    variance)."""
    from pointdiff.compat.pointe import save_converted
    from pointdiff.config import DenoiserConfig, UpsamplerConfig

    def make(root: Path, n_base: int, n_up: int) -> Path:
        size = dict(width=32, depth=1, heads=2, out_channels=12)
        configs = {
            "base40M-textvec": DenoiserConfig(**size, num_points=n_base, cond_dim=32),
            "upsample": UpsamplerConfig(
                **size, num_points=n_up, num_cond_points=n_base, grid_tokens=256, grid_dim=64
            ),
        }
        root.mkdir(parents=True, exist_ok=True)
        for seed, (name, cfg) in enumerate(configs.items()):
            torch.save(random_pointe_state_dict(cfg, seed), root / f"{name}.pt")
            # what the conversion cannot read off the weights' shapes: heads and point counts
            counts = {"num_points": cfg.num_points}
            if cfg.kind == "upsampler":
                counts["num_cond_points"] = cfg.num_cond_points
            save_converted(root / f"{name}.pt", name, root / name, heads=cfg.heads, **counts)
        return root

    return make


# ----------------------------------------------------------------------------------------------
# Synthetic shapes: closed meshes built in code, coloured clouds sampled from them


def _synthetic_meshes() -> dict[str, trimesh.Trimesh]:
    c = trimesh.creation
    stretch = np.diag([1.0, 0.6, 1.8, 1.0])  # an ellipsoid from a sphere
    return {
        "torus": c.torus(0.3, 0.1, major_sections=48, minor_sections=24),
        "box": c.box((0.6, 0.4, 0.3)),
        "sphere": c.icosphere(3, 0.4),
        "cylinder": c.cylinder(0.2, 0.8, sections=48),
        "cone": c.cone(0.35, 0.7, sections=48),
        "capsule": c.capsule(0.6, 0.2, count=(24, 24)),
        "slab": c.box((0.9, 0.9, 0.1)),
        "rod": c.cylinder(0.05, 1.0, sections=24),
        "ellipsoid": c.icosphere(3, 0.25).apply_transform(stretch),
        "ring": c.torus(0.4, 0.04, major_sections=64, minor_sections=12),
        "disc": c.cylinder(0.45, 0.08, sections=64),
        "spike": c.cone(0.1, 1.0, sections=24),
    }


# distinct base colours (rgb in [0, 1]), one per shape above
_COLORS = [(0.9, 0.2, 0.1), (0.1, 0.3, 0.9), (0.2, 0.8, 0.2), (0.9, 0.8, 0.1), (0.6, 0.2, 0.8),
           (0.1, 0.8, 0.8), (0.5, 0.3, 0.1), (0.9, 0.5, 0.7), (0.4, 0.4, 0.4), (1.0, 0.6, 0.0),
           (0.0, 0.5, 0.3), (0.3, 0.1, 0.5)]  # fmt: skip


@pytest.fixture(scope="session")
def synthetic_meshes() -> dict[str, trimesh.Trimesh]:
    """Twelve closed (watertight) meshes, name -> mesh, roughly in [-0.5, 0.5]."""
    meshes = _synthetic_meshes()
    assert all(m.is_watertight for m in meshes.values())
    return meshes


@pytest.fixture(scope="session")
def synthetic_clouds(synthetic_meshes) -> list[dict]:
    """One shard record per synthetic mesh: 4096 surface points, bbox-normalised to [-0.5, 0.5],
    coloured by the shape's base colour shaded along z; captions name colour and shape."""
    records = []
    for i, (name, mesh) in enumerate(synthetic_meshes.items()):
        points, _ = trimesh.sample.sample_surface(mesh, 4096, seed=i)
        lo, hi = points.min(0), points.max(0)
        coords = ((points - (lo + hi) / 2) / (hi - lo).max()).astype(np.float32)
        shade = 0.6 + 0.8 * (coords[:, 2:] + 0.5) / 2  # 0.6 (bottom) .. 1.0 (top)
        colors = np.clip(np.float32(_COLORS[i]) * shade, 0, 1)
        rgb = (colors * 255).round().astype(np.uint8)
        records.append({"id": name, "caption": f"a {name}", "source": "synthetic",
                        "licence": "generated by tests/conftest.py", "split": "train",
                        "coords": coords, "colors": rgb})  # fmt: skip
    return records


def tiny_open_clip_config(embed_dim: int = 16, text_layers: int = 2, context_length: int = 77):
    """An open_clip model config (a ViT with one layer, a text tower of ``text_layers``) small
    enough to build a whole CLIP in a test; register it with ``open_clip.add_model_config``."""
    vision = {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16}
    text = {"context_length": context_length, "vocab_size": 49408, "width": 32, "heads": 2}
    return {
        "embed_dim": embed_dim,
        "vision_cfg": vision,
        "text_cfg": {**text, "layers": text_layers},
    }


@pytest.fixture(scope="session")
def tiny_clip_config():
    """``tiny_open_clip_config`` as a fixture (test modules do not import conftest)."""
    return tiny_open_clip_config
