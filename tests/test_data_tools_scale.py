"""Conversion at cluster scale: CPU limits, per-object timeouts, job-array listings, streaming
merge, licence reports, Objaverse downloads (a fake ``objaverse`` module) and point-cloud
sources (Cap3D's layout), all on small synthetic files."""

import dataclasses
import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from data_tools import convert, folder, runner, work_files
from data_tools.__main__ import main
from data_tools.jobs import Settings, in_part
from data_tools.workers import available_cpus
from pointdiff.data import ShardReader, read_index
from pointdiff.pointcloud import PointCloud

SMALL = ["--num-points", "64", "--oversample", "1024", "--sdf-queries", "64", "--views", "4"]
SETTINGS = Settings(num_points=64, oversample=1024, views=4, sdf_queries=64)


def _files(out: Path) -> dict[str, bytes]:
    names = ["meta.json", "index.jsonl", *sorted(p.name for p in out.glob("shard-*"))]
    return {n: (out / n).read_bytes() for n in names}


def _jsonl(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def _run(*args) -> int:
    return main([*args, *SMALL, "--no-progress"])


@pytest.fixture(scope="module")
def meshes(tmp_path_factory) -> Path:
    """Three small good meshes."""
    root = tmp_path_factory.mktemp("meshes")
    trimesh.creation.box().export(root / "box.obj")
    trimesh.creation.box(extents=(1, 2, 3)).export(root / "crate.ply")
    trimesh.creation.icosphere(1).export(root / "ball.stl")
    return root


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, meshes) -> Path:
    out = tmp_path_factory.mktemp("clean")
    assert _run("folder", str(meshes), "--out", str(out)) == 0
    return out


# ----------------------------------------------------------------------------------------------
# CPUs


def test_available_cpus_follows_affinity_and_the_cgroup_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path / "none") == affinity  # no cgroup files: the affinity mask
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # v2: 1.5 CPUs -> 2
    assert available_cpus(tmp_path) == min(affinity, 2)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == affinity
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu/cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu/cpu.cfs_period_us").write_text("100000\n")
    assert available_cpus(v1) == 1
    (v1 / "cpu/cpu.cfs_quota_us").write_text("-1\n")
    assert available_cpus(v1) == affinity


# ----------------------------------------------------------------------------------------------
# Per-object timeout


class _HangOnArrival:
    """Registers a ``hang`` hook (sleeps an hour) in the worker that unpickles it; the job that
    carries it names the hook, so it hangs inside ``run_one``, as a stuck parser would."""

    def __reduce__(self):
        register = (
            "__import__('data_tools.convert', fromlist=['HOOKS']).HOOKS.__setitem__("
            "'hang', lambda job: __import__('time').sleep(3600))"
        )
        return eval, (register,)


def _hanging_crate(root: Path) -> list:
    return [
        dataclasses.replace(j, hook="hang", extras={"trap": _HangOnArrival()})
        if "crate" in j.id
        else j
        for j in folder.open_source(root)
    ]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_hung_object_times_out_and_the_others_convert(tmp_path, meshes, capsys):
    out = tmp_path / "out"
    t0 = time.time()
    summary = runner.run(
        _hanging_crate(meshes), out, SETTINGS, workers=2, timeout=8, progress=False
    )
    assert time.time() - t0 < 120  # not the hour the hook sleeps
    assert summary.converted == 2 and summary.by_reason == {"failed:timeout": 1}
    assert "ran past --timeout 8 s" in capsys.readouterr().err
    errors = _jsonl(out / "errors.jsonl")
    assert set(errors) == {"folder/crate"} and errors["folder/crate"]["reason"] == "timeout"
    assert {e["id"] for e in read_index(out)} == {"folder/box", "folder/ball"}
    # once the file is fixed, --retry-failed converts it
    summary = runner.run(
        folder.open_source(meshes), out, SETTINGS, workers=2, retry_failed=True, progress=False
    )
    assert summary.converted == 3 and summary.skipped == 2


def test_in_process_runs_time_out_too(tmp_path, meshes, monkeypatch):
    monkeypatch.setitem(convert.HOOKS, "hang", lambda job: time.sleep(3600))
    jobs = [dataclasses.replace(j, hook="hang") if "ball" in j.id else j for j in _jobs(meshes)]
    summary = runner.run(jobs, tmp_path / "out", SETTINGS, timeout=1, progress=False)
    assert summary.converted == 2 and summary.by_reason == {"failed:timeout": 1}
    assert "1 s" in _jsonl(tmp_path / "out/errors.jsonl")["folder/ball"]["message"]


def _jobs(root: Path) -> list:
    return folder.open_source(root)


def test_timeout_is_checked_at_the_edge(tmp_path, meshes, capsys):
    with pytest.raises(SystemExit):
        _run("folder", str(meshes), "--out", str(tmp_path / "o"), "--timeout", "-1")
    assert "--timeout" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Job arrays: one listing, parts by id hash, streaming merge


def test_parts_share_one_listing_and_merge_to_the_clean_run(tmp_path, meshes, clean_run):
    src = tmp_path / "src"
    src.mkdir()
    for f in meshes.iterdir():
        (src / f.name).symlink_to(f)
    out = tmp_path / "array"
    assert _run("folder", str(src), "--out", str(out), "--num-parts", "3", "--part-index", "0") == 0
    assert len(list((out / "work").glob("listing-*.jsonl"))) == 1
    (src / "late.obj").write_text((meshes / "box.obj").read_text())  # after the listing
    for i in (1, 2):
        assert (
            _run("folder", str(src), "--out", str(out), "--num-parts", "3", "--part-index", str(i))
            == 0
        )
    assert main(["merge", str(out)]) == 0
    # the late file is in no part (the list is shared); rows differ only in their path
    rows = [{k: v for k, v in e.items() if k != "path"} for e in read_index(out)]
    assert rows == [{k: v for k, v in e.items() if k != "path"} for e in read_index(clean_run)]
    assert _files(out)["shard-00000.safetensors"] == _files(clean_run)["shard-00000.safetensors"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["converted"] == summary["total"] == 3


def test_parts_are_a_hash_partition():
    ids = [f"objaverse/{i:032x}" for i in range(3000)]
    parts = [[i for i in ids if in_part(i, p, 7)] for p in range(7)]
    assert sorted(sum(parts, [])) == sorted(ids)  # each id in exactly one part
    assert min(map(len, parts)) > 3000 / 7 * 0.8  # and balanced
    assert all(in_part(i, 0, 1) for i in ids[:10])


def test_merge_streams_in_order_with_bounded_reads(clean_run, tmp_path):
    pulled = []

    def items():
        for i in range(200):
            pulled.append(i)
            yield i

    results = work_files.map_files(lambda i: i * 2, items(), threads=3)
    assert next(results) == 0 and len(pulled) <= 4 * 3 + 1  # read ahead, not all at once
    assert list(results) == [2 * i for i in range(1, 200)]
    # one thread or many: the same bytes
    for threads in (1, 4):
        out = tmp_path / f"merge{threads}"
        (out / "work").mkdir(parents=True)
        for f in (clean_run / "work").rglob("*"):
            dest = out / "work" / f.relative_to(clean_run / "work")
            if f.is_dir():
                dest.mkdir(exist_ok=True)
            else:
                dest.write_bytes(f.read_bytes())
        summary = runner.merge(out, threads=threads)
        assert summary.packed == 3 and _files(out) == _files(clean_run)


# ----------------------------------------------------------------------------------------------
# Objaverse: licence report, download through the objaverse package


def _glb(path: Path, licence: str | None = None) -> Path:
    scene = trimesh.Scene(trimesh.creation.box())
    data = scene.export(file_type="glb")
    if licence:  # put asset.extras.license into the JSON chunk, as Sketchfab does
        length = int.from_bytes(data[12:16], "little")
        doc = json.loads(data[20 : 20 + length])
        doc["asset"]["extras"] = {"license": licence, "title": "a box"}
        chunk = json.dumps(doc).encode()
        chunk += b" " * (-len(chunk) % 4)
        rest = data[20 + length :]
        head = (
            b"glTF"
            + (2).to_bytes(4, "little")
            + (20 + len(chunk) + len(rest)).to_bytes(4, "little")
        )
        data = head + len(chunk).to_bytes(4, "little") + b"JSON" + chunk + rest
    path.write_bytes(data)
    return path


def test_unknown_licences_are_reported_and_can_be_included(tmp_path, capsys):
    root = tmp_path / "glbs"
    root.mkdir()
    _glb(root / "aaa.glb", "CC-BY-4.0 (http://creativecommons.org/licenses/by/4.0/)")
    _glb(root / "bbb.glb")  # no licence
    _glb(root / "ccc.glb", "CC-BY-NC-4.0")
    captions = tmp_path / "captions.csv"
    captions.write_text("aaa,a box\nbbb,a box\nccc,a box\n")
    out = tmp_path / "out"
    args = ["objaverse", str(root), "--captions", str(captions), "--licences", "CC-BY-4.0"]
    assert _run(*args, "--out", str(out)) == 0
    filtered = _jsonl(out / "filtered.jsonl")
    assert filtered["objaverse/bbb"]["reason"] == "licence unknown"
    assert "--include-unknown-licences" in filtered["objaverse/bbb"]["message"]
    assert filtered["objaverse/ccc"]["reason"] == "licence CC-BY-NC-4.0"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["by_reason"] == {
        "filtered:licence CC-BY-NC-4.0": 1,
        "filtered:licence unknown": 1,
    }
    assert "licence unknown" in capsys.readouterr().out  # the table names what was filtered
    research = tmp_path / "research"
    assert _run(*args, "--include-unknown-licences", "--out", str(research)) == 0
    licences = {e["id"]: e["licence"] for e in read_index(research)}
    assert licences == {"objaverse/aaa": "CC-BY-4.0", "objaverse/bbb": "unknown"}


def _fake_objaverse(paths: dict, fail: Exception | None = None) -> types.ModuleType:
    mod = types.ModuleType("objaverse")
    calls = {}

    def load_annotations(uids=None):
        calls["annotations"] = list(uids)
        return {
            u: {"license": "by", "name": f"thing {u}", "user": {"username": "ann"}} for u in uids
        }

    def load_objects(uids, download_processes=1):
        calls["objects"] = list(uids)
        if fail:
            raise fail
        return {u: str(paths[u]) for u in uids if u in paths}

    mod.load_annotations, mod.load_objects, mod.calls = load_annotations, load_objects, calls
    return mod


def test_download_converts_what_objaverse_returns(tmp_path, monkeypatch):
    glbs = tmp_path / "cache"
    glbs.mkdir()
    paths = {u: _glb(glbs / f"{u}.glb") for u in ("u1", "u2")}
    uids = tmp_path / "uids.txt"
    uids.write_text("u1\nu2\nu3\n")
    fake = _fake_objaverse(paths)
    monkeypatch.setitem(sys.modules, "objaverse", fake)
    out = tmp_path / "out"
    args = ["objaverse", "--download", str(uids), "--licences", "CC-BY-4.0", "--out", str(out)]
    assert _run(*args) == 0
    assert fake.calls["objects"] == ["u1", "u2", "u3"]
    recs = {e["id"]: e for e in read_index(out)}
    assert set(recs) == {"objaverse/u1", "objaverse/u2"}
    assert recs["objaverse/u1"]["licence"] == "CC-BY-4.0"  # from the annotations
    assert recs["objaverse/u1"]["caption"] == "thing u1" and recs["objaverse/u1"]["author"] == "ann"
    assert _jsonl(out / "errors.jsonl")["objaverse/u3"]["reason"] == "missing_file"
    # a job array downloads only its part
    part = tmp_path / "part"
    assert _run(*args[:-1], str(part), "--num-parts", "2", "--part-index", "1") == 0
    assert fake.calls["objects"] == [
        u for u in ("u1", "u2", "u3") if in_part(f"objaverse/{u}", 1, 2)
    ]


def test_download_offline_or_without_the_package_says_what_to_fetch(tmp_path, monkeypatch, capsys):
    uids = tmp_path / "uids.txt"
    uids.write_text("u1\n")
    args = ["objaverse", "--download", str(uids), "--out", str(tmp_path / "out")]
    monkeypatch.setitem(sys.modules, "objaverse", _fake_objaverse({}, ConnectionError("no route")))
    assert _run(*args) == 2
    err = capsys.readouterr().err
    assert "could not download 1 Objaverse objects" in err and "objaverse.load_objects" in err
    assert (tmp_path / "uids.not-downloaded.txt").read_text() == "u1\n"
    monkeypatch.setitem(sys.modules, "objaverse", None)  # not installed
    assert _run(*args) == 2
    assert "pip install 'pointdiff[objaverse]'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a root and --download
        _run("objaverse", str(tmp_path), "--download", str(uids), "--out", str(tmp_path / "o"))


# ----------------------------------------------------------------------------------------------
# Point clouds (Cap3D layout)


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")  # would create the marker if ever unpickled


def _sphere(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 3))
    return (x / np.linalg.norm(x, axis=1, keepdims=True) * [1.0, 2.0, 0.5]).astype(np.float32)


@pytest.fixture(scope="module")
def cap3d(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cap3d")
    pcs = root / "Cap3D_pcs"
    (pcs / "zip_00").mkdir(parents=True)
    red = np.tile(np.float32([1, 0, 0]), (1000, 1))
    PointCloud(_sphere(1000, 0), red).save(pcs / "zip_00/ply1.ply")  # float xyz + uchar rgb
    xyz = _sphere(1000, 1)
    np.savez(pcs / "npz1.npz", coords=xyz, R=np.zeros(1000), G=np.ones(1000), B=np.zeros(1000))
    pt = torch.cat([torch.from_numpy(_sphere(1000, 2)), torch.full((1000, 3), -1.0)], 1)
    torch.save(pt.T.contiguous(), pcs / "pt1.pt")  # [6, N], colours in [-1, 1]: black
    torch.save({"xyz": torch.zeros(3), "x": _Evil(str(root / "pwned"))}, pcs / "evil.pt")
    PointCloud(_sphere(1000, 3), red).save(pcs / "nocap.ply")
    rows = ["ply1,a red ellipsoid", "npz1,a green ball", 'pt1,"a black, round thing"']
    (root / "Cap3D_automated_Objaverse.csv").write_text("\n".join(rows + ["evil,evil"]) + "\n")
    return root


def test_clouds_resample_cap3d_files_and_refuse_pickles(cap3d, tmp_path):
    out = tmp_path / "out"
    args = ["clouds", "--points", str(cap3d / "Cap3D_pcs"), "--split", "train"]
    args += ["--captions", str(cap3d / "Cap3D_automated_Objaverse.csv")]
    assert _run(*args, "--out", str(out)) == 0
    assert not (cap3d / "pwned").exists()  # never unpickled
    errors = _jsonl(out / "errors.jsonl")
    assert errors["objaverse/evil"]["reason"] == "unsafe_pickle"
    assert _jsonl(out / "filtered.jsonl")["objaverse/nocap"]["reason"] == "no caption"
    reader = ShardReader(out)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_points"] == 64 and meta["num_sdf"] == 0
    assert meta["point_order"] == "fps"  # resampled by FPS, stored in its order
    want = {"objaverse/ply1": [255, 0, 0], "objaverse/npz1": [0, 255, 0], "objaverse/pt1": [0] * 3}
    for i, e in enumerate(reader.entries):
        coords, colors = reader.get(i, "coords"), reader.get(i, "colors")
        assert coords.shape == (64, 3) and (np.abs(coords) <= 0.5 + 1e-6).all()
        assert np.ptp(coords, axis=0).max() > 0.9  # FPS keeps the extremes of the bbox
        assert (colors == want[e["id"]]).all(), e["id"]
        assert e["source"] == "clouds" and e["num_source_points"] == 1000
    assert reader.entries[[e["id"] for e in reader.entries].index("objaverse/pt1")]["caption"] == (
        "a black, round thing"
    )
    again = tmp_path / "again"
    assert _run(*args, "--out", str(again), "--workers", "2") == 0  # deterministic
    assert _files(again) == _files(out)
