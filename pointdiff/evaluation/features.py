"""Classifier features and the feature metrics P-FID and P-IS (Point-E §5.1, ``point_e/evals``).

* **P-FID**: Fréchet distance between Gaussian fits (mean, covariance) of the classifier's
  ``bn2(fc2(·))`` features of two sets (``fid_is.py`` / guided-diffusion evaluator maths).
* **P-IS**: Inception score exp(E_x KL(p(y|x) ‖ p(y))) of the softmax, in splits of 5000.

Both ignore colour with point-e's evaluator (xyz only); our own classifier may use it.
"""

from __future__ import annotations

import numpy as np
import torch

from pointdiff.evaluation.classifier import ClassifierError, PointNet2Classifier


@torch.no_grad()
def extract_features(
    model: PointNet2Classifier,
    clouds,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Features and class probabilities of every cloud.

    :param clouds: [N, K, 3 or 6] array/tensor (object space; colours in [0, 1] after xyz).
    :return: (features [N, D] float64, probabilities [N, C] float64).
    """
    x = torch.as_tensor(np.asarray(clouds) if not isinstance(clouds, torch.Tensor) else clouds)
    if x.dim() != 3 or x.shape[0] == 0 or x.shape[-1] < model.cfg.in_channels:
        raise ClassifierError(
            f"expected clouds [N, K, >={model.cfg.in_channels}], got {tuple(x.shape)}"
        )
    if not torch.isfinite(x).all():
        raise ClassifierError("clouds contain non-finite (NaN/inf) values")
    device = device or next(model.parameters()).device
    model.eval()
    feats, probs = [], []
    for s in range(0, len(x), batch_size):
        out = model(x[s : s + batch_size].float().to(device))
        feats.append(out["features"].double().cpu())
        probs.append(out["logits"].double().softmax(-1).cpu())
    return torch.cat(feats).numpy(), torch.cat(probs).numpy()


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (``np.cov``, unbiased) of features [N, D]."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need features [N >= 2, D], got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """‖μ1−μ2‖² + tr(Σ1) + tr(Σ2) − 2 tr((Σ1 Σ2)^½).

    tr((Σ1 Σ2)^½) is computed as Σ √λ_i of the symmetric PSD matrix Σ1^½ Σ2 Σ1^½ (same eigenvalues
    as Σ1 Σ2), which stays real and stable when the covariances are singular (N < D), where
    point-e's ``scipy.linalg.sqrtm`` needs its eps fallback.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    s1, s2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"statistics differ in size: {mu1.shape} vs {mu2.shape}")
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def p_fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """P-FID between two feature sets [N, D] and [M, D]."""
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


def p_is(probs: np.ndarray, split_size: int = 5000) -> float:
    """P-IS of class probabilities [N, C] (mean over splits of ``split_size``, as point-e)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or len(p) == 0:
        raise ValueError(f"need probabilities [N, C], got shape {p.shape}")
    scores = []
    for s in range(0, len(p), split_size):
        part = np.clip(p[s : s + split_size], 1e-30, None)
        kl = part * (np.log(part) - np.log(part.mean(axis=0, keepdims=True)))
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores))
