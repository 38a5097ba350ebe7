"""Bad inputs to the converters, generated on the fly: every one ends in a named reason or a
clear error (exit code and message), never a traceback, a silent loss or a partial shard."""

import base64
import dataclasses
import errno
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

from data_tools import folder, runner, work_files
from data_tools.__main__ import main
from data_tools.jobs import Settings

SMALL = ["--num-points", "64", "--oversample", "1024", "--sdf-queries", "64", "--views", "4"]
SETTINGS = Settings(num_points=64, oversample=1024, views=4, sdf_queries=64)
SQUARE = [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]]


def _convert(capsys, *args) -> tuple[int, str]:
    """(exit code, stderr) of ``python -m data_tools ...``."""
    code = main([*args, *SMALL, "--no-progress"])
    return code, capsys.readouterr().err


def _errors(out: Path) -> dict[str, dict]:
    lines = (out / "errors.jsonl").read_text().splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


def _files(out: Path) -> dict[str, bytes]:
    names = ["meta.json", "index.jsonl", *sorted(p.name for p in out.glob("shard-*"))]
    return {n: (out / n).read_bytes() for n in names}


def _glb(positions, indices=None, mode: int = 4, draco: bool = False) -> bytes:
    """A one-primitive GLB. ``draco``: the primitive claims Draco compression, with accessors
    that have no plain data (as real Draco files), so only a decoder could read it."""
    pos = np.asarray(positions, dtype=np.float32)
    buf = pos.tobytes()
    views = [{"buffer": 0, "byteOffset": 0, "byteLength": len(buf)}]
    accessors = [
        {
            "bufferView": 0,
            "componentType": 5126,
            "count": len(pos),
            "type": "VEC3",
            "min": pos.min(0).tolist(),
            "max": pos.max(0).tolist(),
        }
    ]
    prim = {"attributes": {"POSITION": 0}, "mode": mode}
    if indices is not None:
        views.append({"buffer": 0, "byteOffset": len(buf), "byteLength": 4 * len(indices)})
        accessors.append(
            {"bufferView": 1, "componentType": 5125, "count": len(indices), "type": "SCALAR"}
        )
        prim["indices"] = 1
        buf += np.asarray(indices, dtype=np.uint32).tobytes()
    doc = {
        "asset": {"version": "2.0"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [prim]}],
        "accessors": accessors,
        "bufferViews": views,
        "buffers": [{"byteLength": len(buf)}],
    }
    if draco:
        ext = "KHR_draco_mesh_compression"
        prim["extensions"] = {ext: {"bufferView": 0, "attributes": {"POSITION": 0}}}
        doc["extensionsUsed"] = doc["extensionsRequired"] = [ext]
        for a in accessors:
            del a["bufferView"]
    js = json.dumps(doc).encode()
    js += b" " * (-len(js) % 4)
    buf += b"\0" * (-len(buf) % 4)
    body = struct.pack("<II", len(js), 0x4E4F534A) + js
    body += struct.pack("<II", len(buf), 0x004E4942) + buf
    return struct.pack("<III", 0x46546C67, 2, 12 + len(body)) + body


def _gltf(glb: bytes) -> bytes:
    """The same model as a self-contained .gltf (buffer as a data URI)."""
    n = struct.unpack("<I", glb[12:16])[0]
    doc = json.loads(glb[20 : 20 + n])
    data = glb[28 + n :]
    doc["buffers"][0]["uri"] = (
        "data:application/octet-stream;base64," + base64.b64encode(data).decode()
    )
    return json.dumps(doc).encode()


def _good(fmt: str) -> bytes:
    """A closed box (a sphere for STL) in format ``fmt``; ``plya``/``stla``: ASCII."""
    box = trimesh.creation.box()
    if fmt in ("glb", "gltf"):
        glb = _glb(box.vertices, box.faces.ravel())
        return glb if fmt == "glb" else _gltf(glb)
    if fmt in ("stl", "stla"):
        data = trimesh.creation.icosphere(1).export(
            file_type="stl_ascii" if fmt == "stla" else "stl"
        )
        return data.encode() if isinstance(data, str) else data
    if fmt in ("ply", "plya"):
        return box.export(file_type="ply", encoding="ascii" if fmt == "plya" else "binary")
    return box.export(file_type=fmt).encode()


def _obj(coords: str = "", scale: float = 1.0) -> str:
    """A box OBJ scaled by ``scale``; ``coords`` replaces the first vertex."""
    lines = _good("obj").decode().splitlines()
    lines = [
        "v " + " ".join(str(scale * float(x)) for x in ln.split()[1:4]) if ln[:2] == "v " else ln
        for ln in lines
    ]
    if coords:
        lines[next(i for i, ln in enumerate(lines) if ln[:2] == "v ")] = f"v {coords}"
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory) -> Path:
    """Three small good meshes (OBJ, binary PLY, STL)."""
    root = tmp_path_factory.mktemp("good")
    (root / "box.obj").write_bytes(_good("obj"))
    (root / "crate.ply").write_bytes(_good("ply"))
    (root / "ball.stl").write_bytes(_good("stl"))
    return root


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, good_folder) -> Path:
    out = tmp_path_factory.mktemp("clean")
    assert main(["folder", str(good_folder), "--out", str(out), *SMALL, "--no-progress"]) == 0
    return out


# ----------------------------------------------------------------------------------------------
# Files: each bad one fails alone, with a reason that says why


# file name → bytes; reason expected in errors.jsonl
FORMATS = {
    "obj": ".obj",
    "ply": ".ply",
    "plya": ".ply",
    "off": ".off",
    "stl": ".stl",
    "stla": ".stl",
    "glb": ".glb",
    "gltf": ".gltf",
}
TRUNCATED = {
    "obj": "truncated",
    "ply": "truncated",
    "plya": "truncated",
    "off": "truncated",
    "stl": "truncated",
    "stla": "truncated",
    "glb": "truncated",
    "gltf": "unreadable",
}
GARBAGE = {
    ".obj": "no_faces",
    ".ply": "unreadable",
    ".off": "unreadable",
    ".stl": "truncated",
    ".glb": "unreadable",
    ".gltf": "unreadable",
}


def _bad_files() -> dict[str, tuple[bytes, str]]:
    garbage = np.random.default_rng(0).bytes(300)
    cases = {}
    for fmt, suffix in FORMATS.items():
        good = _good(fmt)
        cut = good[: int(len(good) * 0.9)]  # an interrupted download
        cases[f"cut_{fmt}{suffix}"] = (cut, TRUNCATED[fmt])
        cases[f"empty_{fmt}{suffix}"] = (b"", "empty_file")
    for suffix, reason in GARBAGE.items():
        cases[f"garbage{suffix}"] = (garbage, reason)
    box = trimesh.creation.box()
    cases |= {
        "nan.obj": (_obj("nan 0 0").encode(), "non_finite_vertices"),
        "inf.obj": (_obj("inf 0 0").encode(), "non_finite_vertices"),
        "huge.obj": (_obj(scale=1e300).encode(), "bad_coordinates"),
        "flt_max.glb": (_glb(box.vertices * 3e38, box.faces.ravel()), "bad_coordinates"),
        "index.obj": ((_obj() + "f 1 2 99\n").encode(), "bad_index"),
        "index.glb": (_glb(SQUARE, [0, 1, 7, 0, 2, 3]), "bad_index"),
        "fan.glb": (_glb(SQUARE, [0, 1, 2, 3], mode=6), "unsupported_primitive:triangle_fan"),
        "points.glb": (_glb(SQUARE, mode=0), "unsupported_primitive:points"),
        "lines.glb": (_glb(SQUARE, [0, 1, 1, 2], mode=1), "unsupported_primitive:lines"),
        "cloud.ply": (
            trimesh.PointCloud(box.vertices).export(file_type="ply"),
            "unsupported_primitive:points",
        ),
        "flat.obj": (b"v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n", "degenerate"),
    }
    try:
        import DracoPy  # noqa: F401  (with a decoder the fake Draco payload is just corrupt)
    except ImportError:
        cases["draco.glb"] = (_glb(SQUARE, [0, 1, 2, 0, 2, 3], draco=True), "missing_decoder:draco")
    return cases


def test_bad_files_fail_alone_with_named_reasons(tmp_path, capsys):
    root = tmp_path / "bad"
    root.mkdir()
    cases = _bad_files()
    for name, (data, _) in cases.items():
        (root / name).write_bytes(data)
    (root / "good.obj").write_bytes(_good("obj"))
    (root / "dangling.obj").symlink_to(root / "nowhere.obj")
    (root / "loop.stl").symlink_to(root / "loop.stl")
    (root / "link.obj").symlink_to(root / "good.obj")  # a symlink to a good file converts
    (root / "folder.obj").mkdir()  # a directory is a folder, not a mesh
    out = tmp_path / "out"
    code, err = _convert(capsys, "folder", str(root), "--out", str(out))
    assert code == 0, err
    errors = _errors(out)
    got = {i.removeprefix("folder/"): r["reason"] for i, r in errors.items()}
    stems = [Path(n).stem for n in cases]  # same-named files keep their suffix in the id
    want = {
        (n if stems.count(Path(n).stem) > 1 else Path(n).stem): r for n, (_, r) in cases.items()
    }
    want |= {"dangling": "missing_file", "loop": "missing_file"}
    assert got == want
    assert "dangling symlink" in errors["folder/dangling"]["message"]
    assert "the GLB header says" in errors["folder/cut_glb"]["message"]
    assert "triangle fans" in errors["folder/fan"]["message"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["converted"] == 2 and summary["failed"] == len(want)
    assert "Traceback" not in err


def test_nothing_converted_is_an_error(tmp_path, capsys):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "empty.obj").write_bytes(b"")
    code, err = _convert(capsys, "folder", str(root), "--out", str(tmp_path / "out"))
    assert code == 1 and "no object was converted" in err
    assert _errors(tmp_path / "out")["folder/empty"]["reason"] == "empty_file"


# ----------------------------------------------------------------------------------------------
# Names and arguments


def test_same_named_files_get_distinct_ids(tmp_path, capsys):
    root = tmp_path / "dup"
    root.mkdir()
    (root / "a.obj").write_bytes(_good("obj"))
    (root / "a.ply").write_bytes(_good("ply"))
    (root / "m.glb").write_bytes(_good("glb"))
    (root / "m.gltf").write_bytes(_good("gltf"))
    (root / "solo.stl").write_bytes(_good("stl"))
    out = tmp_path / "out"
    code, err = _convert(capsys, "folder", str(root), "--out", str(out))
    assert code == 0, err
    assert "2 files are named a.*" in err and "2 files are named m.*" in err
    ids = [json.loads(x)["id"] for x in (out / "index.jsonl").read_text().splitlines()]
    assert ids == ["folder/a.obj", "folder/a.ply", "folder/m.glb", "folder/m.gltf", "folder/solo"]


def test_runner_keeps_the_first_of_two_jobs_with_one_id(tmp_path, good_folder, capsys):
    jobs = folder.open_source(good_folder)
    twin = dataclasses.replace(jobs[0], path=str(good_folder / "crate.ply"))
    summary = runner.run([*jobs, twin], tmp_path / "out", SETTINGS, progress=False)
    assert summary.converted == 3 and summary.by_reason == {"filtered:duplicate_id": 1}
    assert f"{good_folder / 'crate.ply'} has the id {jobs[0].id}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--num-points", "0"], "argument --num-points: must be positive, got 0"),
        (["--num-points", "-3"], "argument --num-points: must be positive"),
        (["--num-points", "1e3"], "argument --num-points: expected an integer"),
        (["--oversample", "0"], "argument --oversample: must be positive"),
        (["--workers", "0"], "argument --workers: must be positive"),
        (["--limit", "0"], "argument --limit: must be positive"),
        (["--objects-per-shard", "0"], "argument --objects-per-shard: must be positive"),
        (["--sdf-queries", "-1"], "argument --sdf-queries: must be at least 0"),
        (["--views", "-1"], "argument --views: must be at least 0"),
        (["--max-faces", "0"], "argument --max-faces: must be positive"),
        (["--seed", "-1"], "argument --seed: must be at least 0"),
        (["--max-disagree", "nan"], "argument --max-disagree: must be a number in [0, 1]"),
        (["--max-disagree", "inf"], "argument --max-disagree: must be a number in [0, 1]"),
        (["--max-disagree", "1.5"], "argument --max-disagree: must be a number in [0, 1]"),
        (["--num-points", "4096", "--oversample", "100"], "--oversample (100) must be ≥"),
    ],
)
def test_numeric_arguments_are_checked_at_the_edge(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["folder", str(tmp_path), "--out", str(out), *SMALL, *args])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_preview_and_merge_arguments_are_checked(tmp_path, capsys):
    for argv in (
        ["preview", str(tmp_path), "--png", "x.png", "--count", "0"],
        ["merge", str(tmp_path), "--objects-per-shard", "0"],
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and "must be positive" in capsys.readouterr().err


@pytest.mark.parametrize("sub", ["", "sub/dir"])
def test_out_under_a_regular_file_is_refused_before_work(sub, tmp_path, good_folder, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = blocker / sub if sub else blocker
    code, err = _convert(capsys, "folder", str(good_folder), "--out", str(out))
    assert code == 2
    where = f"lies under {blocker}, which is" if sub else "is"
    assert f"error: --out {out} {where} a file, not a directory" in err
    assert blocker.read_text() == "not a directory"


# ----------------------------------------------------------------------------------------------
# Killed workers


class _KillOnArrival:
    """Kills the worker process that unpickles it (SIGKILL, as the OOM killer does) while
    ``marker`` exists; ``once`` removes the marker, so only the first arrival dies. The call
    is ``eval`` of a string: a builtin, so the worker needs no test module to run it."""

    def __init__(self, marker: Path, once: bool):
        self.marker, self.once = str(marker), once

    def __reduce__(self):
        m = repr(self.marker)
        kill = "__import__('os').kill(__import__('os').getpid(), 9)"
        remove = f"__import__('os').remove({m}), " if self.once else ""
        return eval, (f"({remove}{kill}) if __import__('os').path.exists({m}) else None",)


def _trapped_jobs(root: Path, trap) -> list:
    """The folder's jobs; ``crate`` carries ``trap`` (every job an ``extras`` entry, so the
    index is the same with or without one)."""
    jobs = folder.open_source(root)
    return [
        dataclasses.replace(j, extras={**j.extras, "trap": trap if "crate" in j.id else None})
        for j in jobs
    ]


@pytest.fixture(scope="module")
def trap_baseline(tmp_path_factory, good_folder) -> Path:
    out = tmp_path_factory.mktemp("trap-clean")
    runner.run(_trapped_jobs(good_folder, None), out, SETTINGS, progress=False)
    return out


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_worker_killed_once_is_retried(tmp_path, good_folder, trap_baseline, capsys):
    marker = tmp_path / "kill-next"
    marker.touch()
    jobs = _trapped_jobs(good_folder, _KillOnArrival(marker, once=True))
    out = tmp_path / "out"
    summary = runner.run(jobs, out, SETTINGS, workers=2, progress=False)
    assert not marker.exists()  # the trap fired
    assert "worker process died while converting" in capsys.readouterr().err
    assert summary.total == summary.converted == 3 and summary.failed == 0
    assert (out / "errors.jsonl").read_text() == ""
    assert _files(out) == _files(trap_baseline)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_worker_killed_twice_is_recorded_and_a_rerun_converts_it(
    tmp_path, good_folder, trap_baseline
):
    marker = tmp_path / "kill-always"
    marker.touch()
    out = tmp_path / "out"
    jobs = _trapped_jobs(good_folder, _KillOnArrival(marker, once=False))
    summary = runner.run(jobs, out, SETTINGS, workers=2, progress=False)
    assert summary.total == 3 and summary.converted == 2 and summary.failed == 1
    assert summary.by_reason == {"failed:worker_crashed": 1}
    assert _errors(out)["folder/crate"]["reason"] == "worker_crashed"
    marker.unlink()  # memory freed: the retry goes through
    summary = runner.run(jobs, out, SETTINGS, workers=2, retry_failed=True, progress=False)
    assert summary.converted == 3 and summary.skipped == 2
    assert _files(out) == _files(trap_baseline)


# ----------------------------------------------------------------------------------------------
# Disk full


def _fill_disk_after(calls: int):
    """A ``save_file`` that writes the first ``calls`` files, then half a file and ENOSPC."""
    from safetensors.numpy import save_file

    count = [0]

    def save(tensors, path, metadata=None):
        count[0] += 1
        if count[0] <= calls:
            return save_file(tensors, path, metadata=metadata)
        Path(path).write_bytes(b"\0" * 100)  # what a full disk leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    return save


def test_disk_full_while_converting_stops_cleanly_and_resumes(
    tmp_path, good_folder, clean_run, capsys, monkeypatch
):
    out = tmp_path / "out"
    monkeypatch.setattr(work_files, "save_file", _fill_disk_after(1))
    code, err = _convert(capsys, "folder", str(good_folder), "--out", str(out))
    assert code == 1
    assert "No space left on device" in err and "rerun the same command" in err
    assert not list(out.rglob("*.tmp*")) and not list(out.glob("shard-*"))
    assert not list(out.rglob("*.fail.json"))  # the object is not blamed
    assert len(list(out.rglob("*.safetensors"))) == 1  # the one finished object is kept
    monkeypatch.undo()
    code, err = _convert(capsys, "folder", str(good_folder), "--out", str(out))
    assert code == 0, err
    assert _files(out) == _files(clean_run)


def test_disk_full_while_packing_keeps_the_previous_shards(
    tmp_path, good_folder, clean_run, capsys, monkeypatch
):
    import pointdiff.data

    out = tmp_path / "out"
    monkeypatch.setattr(pointdiff.data, "save_file", _fill_disk_after(0))
    code, err = _convert(capsys, "folder", str(good_folder), "--out", str(out))
    assert code == 1 and "cannot write shards" in err and "No space left on device" in err
    left = {p.name for p in out.iterdir()}  # the work files and reports: no shard, no index
    assert left == {"work", "errors.jsonl", "filtered.jsonl"}
    monkeypatch.undo()
    assert _convert(capsys, "folder", str(good_folder), "--out", str(out))[0] == 0
    before = _files(out)
    assert before == _files(clean_run)
    # A repack that fails leaves the previous complete set in place.
    monkeypatch.setattr(pointdiff.data, "save_file", _fill_disk_after(0))
    assert _convert(capsys, "folder", str(good_folder), "--out", str(out))[0] == 1
    assert _files(out) == before and not (out / ".staging").exists()
