"""Move a trained denoiser to another text encoder without forgetting what it learned.

A denoiser reads its condition through linear layers (``text_proj``, and ``text_bias`` in
``cond_bias`` models) applied to ``normalize(e) · √D``. Given the old and the new encoder's
embeddings of the same captions, a ridge least-squares map ``A`` [D_old, D_new] with
``u_old ≈ A · u_new`` lets the new layers start as ``W_new = W_old · A``: on the captions it
was trained on, the model then sees (nearly) the condition it knew, and fine-tuning starts from
its old behaviour instead of from an untrained condition path. How well the map fits is
reported (R², the share of the old conditions' variance it reproduces).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: The linear layers that read the text condition (``models.trunk.Trunk``).
CONDITION_LAYERS = ("text_proj.weight", "text_bias.weight")


def model_inputs(emb: torch.Tensor) -> torch.Tensor:
    """[N, D] embeddings → what the trunk's condition layers see: ``normalize(e) · √D``."""
    return F.normalize(emb.float(), dim=-1) * emb.shape[-1] ** 0.5


def fit_text_map(
    new: torch.Tensor, old: torch.Tensor, ridge: float = 1e-2
) -> tuple[torch.Tensor, float]:
    """Ridge least squares ``old ≈ A · new`` over paired rows.

    :param new: [N, D_new] model inputs of the new encoder (``model_inputs``).
    :param old: [N, D_old] model inputs of the old encoder for the same captions.
    :param ridge: Tikhonov weight, relative to the mean squared norm of ``new``'s rows.
    :return: (A [D_old, D_new], R² of the fit on these rows).
    """
    if new.shape[0] != old.shape[0] or new.shape[0] == 0:
        raise ValueError(f"need the same N > 0 rows, got {new.shape[0]} and {old.shape[0]}")
    x, y = new.double(), old.double()
    lam = ridge * x.pow(2).sum(1).mean()
    gram = x.T @ x + lam * torch.eye(x.shape[1], dtype=x.dtype)
    a = torch.linalg.solve(gram, x.T @ y).T  # [D_old, D_new]
    resid = (y - x @ a.T).pow(2).sum()
    total = (y - y.mean(0)).pow(2).sum().clamp(min=1e-12)
    return a.float(), float(1 - resid / total)


def transfer_condition(state: dict[str, torch.Tensor], a: torch.Tensor) -> dict[str, torch.Tensor]:
    """A copy of ``state`` whose condition layers read the new encoder: ``W ← W · A``.

    :param state: the old model's state dict (``text_proj.weight`` [width, D_old], …).
    :param a: [D_old, D_new] from ``fit_text_map``.
    """
    out = dict(state)
    for key in CONDITION_LAYERS:
        if key in out:
            w = out[key]
            out[key] = (w.float() @ a.to(w.device)).to(w.dtype)
    return out
