"""``run_eval``: every metric for a set of generated clouds against a reference set, written as
JSON + Markdown + a PNG grid (each sample beside its nearest reference).

Inputs (object space, Z-up, the frame of ``pointdiff.pointcloud``):

* **samples**: a directory of ``.ply``/``.npz`` clouds (sorted by name; an optional
  ``metadata.jsonl`` with ``{"file", "prompt", "category"}`` lines gives their prompts), or one
  ``.npz`` with ``arr_0`` [N, K, 3 or 6] (point-e's evaluation format) or ``coords`` [N, K, 3]
  (+ ``colors``), optionally ``prompts``/``categories`` string arrays.
* **reference**: a shard directory (``pointdiff.data``; objects of ``split``) or an ``.npz`` as
  above.

Each seed draws the same number n = min(#samples, #references) of clouds from both sets and
``num_points`` points per cloud, then computes the set metrics; the report gives mean ± std over
seeds (1-NNA moves by ±5–8 points between runs in the literature).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from pointdiff.atomic import write_text_atomic
from pointdiff.data import ShardReader
from pointdiff.evaluation.alignment import ClipScorer, category_r_precision, clip_r_precision
from pointdiff.evaluation.classifier import PointNet2Classifier, load_classifier
from pointdiff.evaluation.features import extract_features, p_fid, p_is
from pointdiff.metrics import PROTOCOLS, MetricInputError, compute_set_metrics
from pointdiff.pointcloud import PointCloud, PointCloudError
from pointdiff.render import render_grid

_SCALES = {"mmd_cd": 1e3, "mmd_emd": 1e2, "mmd_cd_l1": 1e2, "mmd_emd_exact": 1e2, "jsd": 1e3}


# ----------------------------------------------------------------------------------------------
# Loading


def load_cloud_set(path: str | os.PathLike, split: str | None = "test") -> dict:
    """Clouds of a directory, ``.npz`` or shard directory (see the module docstring).

    :return: {"clouds": list of [K_i, 6] float32 (xyz, rgb in [0, 1]), "prompts": list | None,
              "categories": list | None, "source": str}.
    """
    path = Path(path)
    if path.is_dir() and (path / "meta.json").is_file():
        reader = ShardReader(path)
        rows = [i for i, e in enumerate(reader.entries) if split is None or e["split"] == split]
        clouds = [
            np.concatenate([reader.get(i, "coords"), reader.get(i, "colors") / 255.0], -1)
            for i in rows
        ]
        entries = [reader.entries[i] for i in rows]
        prompts = [e.get("caption") for e in entries]
        cats = [e.get("category") for e in entries]
        out = {"clouds": clouds, "prompts": prompts, "categories": cats}
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".ply", ".npz"))
        if not files:
            raise MetricInputError(f"{path}: no .ply or .npz clouds")
        clouds = []
        for f in files:
            c = PointCloud.load(f)
            clouds.append(np.concatenate([c.coords, c.colors], -1))
        meta = {}
        if (path / "metadata.jsonl").is_file():
            for line in (path / "metadata.jsonl").read_text().splitlines():
                if line.strip():
                    m = json.loads(line)
                    meta[m["file"]] = m
        prompts = [meta.get(f.name, {}).get("prompt") for f in files]
        cats = [meta.get(f.name, {}).get("category") for f in files]
        out = {"clouds": clouds, "prompts": prompts, "categories": cats}
    elif path.suffix == ".npz" and path.is_file():
        out = _load_npz_set(path)
    else:
        raise MetricInputError(f"{path}: not a cloud directory, shard directory or .npz file")
    if not out["clouds"]:
        raise MetricInputError(f"{path}: empty set (split {split!r})")
    for k in ("prompts", "categories"):
        if out[k] is not None and any(v is None for v in out[k]):
            out[k] = None
    for i, c in enumerate(out["clouds"]):
        if c.ndim != 2 or c.shape[0] == 0 or not np.isfinite(c).all():
            raise MetricInputError(f"{path}: cloud {i} is empty or has NaN/inf values")
    out["source"] = str(path)
    return out


def _load_npz_set(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as d:
        key = next((k for k in ("arr_0", "coords", "xyz") if k in d), None)
        if key is None:
            raise MetricInputError(
                f"{path}: npz needs arr_0, coords or xyz (has {sorted(d.files)})"
            )
        x = d[key].astype(np.float32)
        if x.ndim == 2:  # a single cloud
            c = PointCloud.load(path)
            return {
                "clouds": [np.concatenate([c.coords, c.colors], -1)],
                "prompts": None,
                "categories": None,
            }
        if x.ndim != 3 or x.shape[-1] not in (3, 6):
            raise MetricInputError(f"{path}: {key} must be [N, K, 3 or 6], got {x.shape}")
        if x.shape[-1] == 3:
            col = d["colors"].astype(np.float32) if "colors" in d else np.full_like(x, 0.5)
            if col.max(initial=0) > 1.0:
                col = col / 255.0
            x = np.concatenate([x, col], -1)
        prompts = [str(p) for p in d["prompts"]] if "prompts" in d else None
        cats = [str(c) for c in d["categories"]] if "categories" in d else None
    return {"clouds": list(x), "prompts": prompts, "categories": cats}


def _draw(
    clouds: list[np.ndarray], idx: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """[len(idx), k, 6]: k random points (without replacement) of each selected cloud."""
    out = []
    for i in idx:
        c = clouds[i]
        if len(c) < k:
            raise MetricInputError(f"cloud {i} has {len(c)} points, fewer than num_points={k}")
        out.append(c if len(c) == k else c[rng.choice(len(c), k, replace=False)])
    return np.stack(out).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# The evaluation


def run_eval(
    samples,
    reference,
    out_dir: str | os.PathLike,
    protocol: str = "global",
    seeds: tuple[int, ...] = (0,),
    split: str | None = "test",
    num_points: int = 2048,
    metrics: tuple[str, ...] = ("cd", "emd"),
    emd_cost: str = "squared",
    classifier: str | os.PathLike | PointNet2Classifier | None = None,
    classifier_points: int = 1024,
    clip: ClipScorer | None = None,
    clip_views: int = 4,
    grid: int = 16,
    device: str | None = None,
    progress: bool = False,
) -> dict:
    """Evaluate generated clouds against references; write report.json, report.md, grid.png.

    :param samples, reference: paths (see the module docstring).
    :param protocol: ``global`` (PointFlow/LION) | ``bbox`` (DPM) | ``lion_box``.
    :param seeds: one evaluation per seed (subset + point draw); the report has mean ± std.
    :param metrics: distances for MMD/COV/1-NNA (``cd``, ``emd`` = approxmatch, ``emd_exact``).
    :param classifier: a classifier directory (``train/train_classifier.py``) or a model (e.g.
        ``load_pointe_evaluator(path)`` for point-e's numbers): adds P-FID, P-IS and, when the
        samples carry categories the classifier knows, category R-precision.
    :param clip: a ``ClipScorer``: adds CLIP R-precision when the samples carry prompts.
    :return: the report dict (also written to ``out_dir/report.json``).
    """
    t0 = time.time()
    if protocol not in PROTOCOLS:
        raise MetricInputError(f"unknown protocol {protocol!r} ({' | '.join(PROTOCOLS)})")
    if not seeds:
        raise MetricInputError("need at least one seed")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    smp = load_cloud_set(samples, split=None)
    ref = load_cloud_set(reference, split=split)
    n = min(len(smp["clouds"]), len(ref["clouds"]))
    k = min(num_points, *(len(c) for c in smp["clouds"] + ref["clouds"]))
    warnings = []
    if k < num_points:
        warnings.append(f"some clouds have fewer than {num_points} points: evaluated with {k}")
    if n < len(smp["clouds"]) or n < len(ref["clouds"]):
        warnings.append(
            f"sets differ in size ({len(smp['clouds'])} samples, "
            f"{len(ref['clouds'])} references): each seed draws {n} of each"
        )
    warnings += _scale_warnings(smp["clouds"], ref["clouds"], protocol)

    per_seed, first = [], None
    for seed in seeds:
        rng = np.random.default_rng(seed)
        si = np.sort(rng.choice(len(smp["clouds"]), n, replace=False))
        ri = np.sort(rng.choice(len(ref["clouds"]), n, replace=False))
        s, r = _draw(smp["clouds"], si, k, rng), _draw(ref["clouds"], ri, k, rng)
        res = compute_set_metrics(
            s[..., :3],
            r[..., :3],
            protocol,
            metrics,
            emd_cost,
            device=device,
            progress=progress,
            return_matrices=True,
        )
        if first is None:
            first = (s, r, si, ri, res["matrices"][metrics[0]]["rs"])
        per_seed.append({kk: v for kk, v in res.items() if isinstance(v, float)})
    summary = {
        key: {"mean": float(np.mean(v)), "std": float(np.std(v)), "values": v}
        for key in per_seed[0]
        for v in [[p[key] for p in per_seed]]
    }
    report = {
        "samples": smp["source"],
        "reference": ref["source"],
        "split": split,
        "protocol": protocol,
        "protocol_description": PROTOCOLS[protocol],
        "seeds": list(seeds),
        "num_points": k,
        "n_eval": n,
        "n_samples_total": len(smp["clouds"]),
        "n_refs_total": len(ref["clouds"]),
        "distance_metrics": list(metrics),
        "emd": f"approxmatch (Fan et al.), {emd_cost} cost, /N" if "emd" in metrics else None,
        "metrics": summary,
    }
    if classifier is not None:
        report["classifier"] = _classifier_metrics(classifier, smp, ref, classifier_points, device)
    if clip is not None and smp["prompts"] is not None:
        clouds = [PointCloud(c[:, :3], c[:, 3:]) for c in smp["clouds"]]
        report["clip_r_precision"] = clip_r_precision(clouds, smp["prompts"], clip, clip_views)
    elif clip is not None:
        warnings.append("CLIP R-precision skipped: the samples carry no prompts")
    report["warnings"] = warnings
    report["time_s"] = round(time.time() - t0, 2)
    if grid > 0:
        report["grid"] = str(_write_grid(out / "grid.png", *first, grid))
    _write_json(out / "report.json", report)
    (out / "report.md").write_text(format_markdown(report))
    return report


def _scale_warnings(s_clouds, r_clouds, protocol: str) -> list[str]:
    if protocol != "global":
        return []
    ext = [np.median([np.ptp(c[:, :3], axis=0).max() for c in cs]) for cs in (s_clouds, r_clouds)]
    ratio = ext[0] / max(ext[1], 1e-12)
    if 0.67 < ratio < 1.5:
        return []
    return [
        f"samples are {ratio:.2f}x the references' size under the global protocol: are both "
        "in object space (xyz in [-0.5, 0.5])? Use protocol='bbox' to compare shapes only"
    ]


def _classifier_metrics(classifier, smp: dict, ref: dict, k: int, device) -> dict:
    model = classifier if isinstance(classifier, torch.nn.Module) else load_classifier(classifier)
    if device is not None:
        model = model.to(device)
    rng = np.random.default_rng(0)
    k = min(k, *(len(c) for c in smp["clouds"] + ref["clouds"]))
    ch = model.cfg.in_channels
    fs, ps = extract_features(
        model, _draw(smp["clouds"], np.arange(len(smp["clouds"])), k, rng)[..., :ch]
    )
    fr, pr = extract_features(
        model, _draw(ref["clouds"], np.arange(len(ref["clouds"])), k, rng)[..., :ch]
    )
    out = {
        "num_points": k,
        "feature_dim": fs.shape[1],
        "classes": list(model.cfg.class_names),
        "p_fid": p_fid(fs, fr),
        "p_is": p_is(ps),
        "p_is_reference": p_is(pr),
    }
    names = list(model.cfg.class_names)
    if smp["categories"] is not None and names:
        known = [i for i, c in enumerate(smp["categories"]) if c in names]
        if known:
            logits = np.log(np.clip(ps[known], 1e-30, None))
            out["category_r_precision"] = category_r_precision(
                logits, [smp["categories"][i] for i in known], names
            )
            out["category_r_precision"]["skipped_unknown_categories"] = len(
                smp["categories"]
            ) - len(known)
    return out


def _write_grid(path: Path, s, r, si, ri, m_rs: torch.Tensor, count: int) -> Path:
    """Samples (left) beside their nearest reference by the first distance (right)."""
    nearest = m_rs.argmin(dim=0)  # [n_s] index of the nearest reference of each sample
    items, caps = [], []
    for j in range(min(count, len(s))):
        q = int(nearest[j])
        items += [PointCloud(s[j, :, :3], s[j, :, 3:]), PointCloud(r[q, :, :3], r[q, :, 3:])]
        caps += [f"sample {si[j]}", f"ref {ri[q]} d={float(m_rs[q, j]):.2g}"]
    render_grid(items, caps, cols=4, size=192).save(path)
    return path


def _write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, default=_jsonable))


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v)}")


def format_markdown(report: dict) -> str:
    """The report as a Markdown page (metric table with mean ± std over seeds)."""
    lines = [
        "# pointdiff evaluation",
        "",
        f"- samples: `{report['samples']}` ({report['n_samples_total']} clouds)",
        f"- reference: `{report['reference']}` split `{report['split']}` "
        f"({report['n_refs_total']} clouds)",
        f"- protocol: **{report['protocol']}** ({report['protocol_description']})",
        f"- seeds: {report['seeds']}; {report['n_eval']} clouds per set per seed, "
        f"{report['num_points']} points each",
        f"- EMD: {report['emd']}" if report.get("emd") else "- EMD: not computed",
        "",
        "| metric | mean ± std | unit |",
        "|---|---|---|",
    ]
    for key, v in report["metrics"].items():
        if key.startswith(("1nna", "cov")):
            scale, unit = 100.0, "%"
        else:
            scale = _SCALES.get(key, 1.0)
            unit = f"×10^{int(np.log10(scale))}" if scale != 1 else ""
        lines.append(f"| {key} | {v['mean'] * scale:.3f} ± {v['std'] * scale:.3f} | {unit} |")
    c = report.get("classifier")
    if c:
        lines += [
            "",
            f"Classifier features ({c['feature_dim']}-d, {c['num_points']} points):",
            f"P-FID {c['p_fid']:.4g}, P-IS {c['p_is']:.4g} (references: {c['p_is_reference']:.4g})",
        ]
        cr = c.get("category_r_precision")
        if cr:
            lines.append(
                f"Category R-precision: {100 * cr['r_precision']:.1f}% among "
                f"{cr['n_candidates']} ({cr['count']} clouds); per category: "
                + ", ".join(f"{k} {100 * v:.0f}%" for k, v in cr["per_category"].items())
            )
    cl = report.get("clip_r_precision")
    if cl:
        lines.append(
            f"CLIP R-precision ({cl['model']}, {cl['views']} views): "
            f"{100 * cl['r_precision']:.1f}% among {cl['n_candidates']} prompts"
        )
    for w in report.get("warnings", []):
        lines.append(f"\n> warning: {w}")
    if report.get("grid"):
        lines += ["", "![samples beside nearest references](grid.png)"]
    return "\n".join(lines) + "\n"


__all__ = ["run_eval", "load_cloud_set", "format_markdown", "PointCloudError"]
