"""Text alignment: category R-precision (classifier) and CLIP R-precision (renders + CLIP).

* **Category R-precision**: clouds generated from prompts of known categories; a hit when the
  classifier scores the prompted category highest among N candidate categories (the prompted
  one + N−1 others drawn at random; N = all classes gives plain top-1 accuracy).
* **Nearest-reference category accuracy**: a judge with no trained weights — the category of the
  training cloud nearest by Chamfer distance (per-shape bbox normalisation) — to cross-check a
  classifier, whose quirks (e.g. calling every diffuse cloud a plant) it does not share.
* **CLIP R-precision** (Point-E Table 1; its code is not released, so the protocol is ours and
  stated in every result): each cloud is rendered from ``views`` azimuths with pointdiff's point
  splatter, the L2-normalised CLIP image embeddings of the views are averaged, and a hit is when
  the cloud's own prompt has the highest cosine similarity among N candidate prompts (its own +
  N−1 others from the evaluation set; N = all distinct prompts by default).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pointdiff.metrics.distances import pairwise_matrix
from pointdiff.metrics.sets import normalize_clouds
from pointdiff.pointcloud import PointCloud
from pointdiff.render import render_cloud


def _candidates(n_items: int, true_idx: np.ndarray, pool: int, n: int | None, seed: int):
    """For each item, candidate indices into a pool of ``pool``: the true one first, then N−1
    others."""
    if n is None or n >= pool:
        return np.tile(np.arange(pool), (n_items, 1))
    if n < 2:
        raise ValueError(f"need at least 2 candidates, got {n}")
    rng = np.random.default_rng(seed)
    out = np.empty((n_items, n), dtype=np.int64)
    for i, t in enumerate(true_idx):
        others = np.delete(np.arange(pool), t)
        out[i, 0], out[i, 1:] = t, rng.choice(others, size=n - 1, replace=False)
    return out


def r_precision(scores: np.ndarray, true_idx: np.ndarray, n: int | None = None, seed: int = 0):
    """Fraction of rows whose true column scores highest among its candidates.

    :param scores: [K, P] scores of K items against a pool of P labels/prompts.
    :param true_idx: [K] the true column of each row. Ties count as misses.
    :return: (r_precision, hits [K] bool).
    """
    scores, true_idx = np.asarray(scores, dtype=np.float64), np.asarray(true_idx)
    if scores.ndim != 2 or len(scores) != len(true_idx) or len(scores) == 0:
        raise ValueError(f"scores {scores.shape} and true indices {true_idx.shape} do not match")
    cand = _candidates(len(scores), true_idx, scores.shape[1], n, seed)
    cand_scores = np.take_along_axis(scores, cand, axis=1)
    true_score = scores[np.arange(len(scores)), true_idx]
    is_true = cand == true_idx[:, None]
    hits = ((cand_scores < true_score[:, None]) | is_true).all(axis=1)
    return float(hits.mean()), hits


def category_r_precision(
    logits, prompted: Sequence[str], class_names: Sequence[str], n: int | None = None, seed: int = 0
) -> dict:
    """Category R-precision of classifier logits [K, C] for clouds prompted with ``prompted``.

    :return: {"r_precision", "n_candidates", "per_category": {name: value}, "count"}.
    """
    names = list(class_names)
    unknown = sorted(set(prompted) - set(names))
    if unknown:
        raise ValueError(f"prompted categories {unknown} are not classifier classes {names}")
    true_idx = np.array([names.index(p) for p in prompted])
    value, hits = r_precision(np.asarray(logits), true_idx, n, seed)
    prompted = np.asarray(prompted)
    per = {c: float(hits[prompted == c].mean()) for c in sorted(set(prompted))}
    return {
        "r_precision": value,
        "n_candidates": n or len(names),
        "per_category": per,
        "count": len(hits),
    }


def nearest_reference_categories(
    clouds, refs, ref_categories: Sequence[str], protocol: str = "bbox", memory_mb: float = 512.0
) -> list[str]:
    """The category of each cloud's nearest reference cloud by Chamfer distance, after the
    protocol's per-shape normalisation (``bbox``: shape only, not size or position).

    :param clouds: [K, N, 3]. :param refs: [R, M, 3] (e.g. the training clouds).
    :param ref_categories: R labels. :return: K labels.
    """
    if len(ref_categories) != len(refs):
        raise ValueError(f"{len(refs)} reference clouds but {len(ref_categories)} categories")
    m = pairwise_matrix(
        normalize_clouds(clouds, protocol),
        normalize_clouds(refs, protocol),
        metric="cd",
        memory_mb=memory_mb,
    )
    return [ref_categories[j] for j in m.argmin(1).tolist()]


def nearest_reference_accuracy(
    clouds, prompted: Sequence[str], refs, ref_categories: Sequence[str], protocol: str = "bbox"
) -> dict:
    """Top-1 accuracy of ``nearest_reference_categories`` against the prompted categories.

    :return: {"accuracy", "per_category": {name: value}, "count"}.
    """
    pred = np.asarray(nearest_reference_categories(clouds, refs, ref_categories, protocol))
    prompted = np.asarray(prompted)
    if len(pred) != len(prompted):
        raise ValueError(f"{len(pred)} clouds but {len(prompted)} prompted categories")
    hits = pred == prompted
    per = {c: float(hits[prompted == c].mean()) for c in sorted(set(prompted.tolist()))}
    return {"accuracy": float(hits.mean()), "per_category": per, "count": len(hits)}


# ----------------------------------------------------------------------------------------------
# CLIP R-precision


@dataclass
class ClipScorer:
    """An image-text model: ``model.encode_image``/``encode_text``, its preprocess and tokenizer."""

    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    name: str = "open_clip"
    device: str = "cpu"

    @torch.no_grad()
    def embed_images(self, images: list) -> torch.Tensor:
        x = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        return torch.nn.functional.normalize(self.model.encode_image(x).float(), dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)


def load_clip_scorer(
    arch: str = "ViT-B-32", pretrained: str | os.PathLike | None = None, device: str = "cpu"
) -> ClipScorer:
    """An open_clip model from local files only (no download).

    :param arch: an open_clip architecture name (``ViT-B-32``, ``ViT-L-14``), or
        ``local-dir:PATH`` holding ``open_clip_config.json`` (+ weights).
    :param pretrained: a local weights file for a named architecture.
    """
    import open_clip  # lazily: only CLIP R-precision needs it

    if not arch.startswith("local-dir:"):
        if pretrained is None or not Path(pretrained).is_file():
            raise FileNotFoundError(
                f"CLIP R-precision needs local weights for {arch}: pass pretrained=PATH to an "
                "open_clip checkpoint file (e.g. open_clip_pytorch_model.bin), or a local-dir:"
            )
        pretrained = str(pretrained)
    model, _, preprocess = open_clip.create_model_and_transforms(
        arch, pretrained=pretrained, device=device, load_weights=True
    )
    return ClipScorer(model.eval(), preprocess, open_clip.get_tokenizer(arch), arch, device)


def render_clip_views(cloud: PointCloud, views: int = 4, size: int = 224, elevation: float = 20.0):
    """``views`` PIL renders of a cloud at evenly spaced azimuths (white background)."""
    from PIL import Image

    return [
        Image.fromarray(
            render_cloud(cloud, azimuth=30.0 + 360.0 * i / views, elevation=elevation, size=size)
        )
        for i in range(views)
    ]


def clip_r_precision(
    clouds: Sequence[PointCloud],
    prompts: Sequence[str],
    scorer: ClipScorer,
    views: int = 4,
    size: int = 224,
    n: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> dict:
    """CLIP R-precision of clouds against their prompts (protocol in the module docstring).

    :return: {"r_precision", "n_candidates", "views", "size", "model", "count"}.
    """
    if len(clouds) != len(prompts) or not clouds:
        raise ValueError(f"{len(clouds)} clouds for {len(prompts)} prompts")
    pool = sorted(set(prompts))
    text = scorer.embed_texts(pool)
    image = []
    for s in range(0, len(clouds), max(1, batch_size // views)):
        ims = [
            im
            for c in clouds[s : s + max(1, batch_size // views)]
            for im in render_clip_views(c, views, size)
        ]
        e = scorer.embed_images(ims).view(-1, views, text.shape[-1]).mean(1)
        image.append(torch.nn.functional.normalize(e, dim=-1))
    scores = (torch.cat(image) @ text.T).cpu().numpy()
    value, _ = r_precision(scores, np.array([pool.index(p) for p in prompts]), n, seed)
    return {
        "r_precision": value,
        "n_candidates": n or len(pool),
        "views": views,
        "size": size,
        "model": scorer.name,
        "count": len(clouds),
    }
