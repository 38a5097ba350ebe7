"""The words text encoder: a frozen hashed bag of words (``--text words`` / ``words-D``).

``WordEncoder.embed(prompts) -> [B, D]`` needs no weights and no network. ``STOPWORDS`` and
``WordEncoder.words`` are also what the lexicon and the pipeline use to tell which words of a
prompt a model knows.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pointdiff.atomic import write_json_atomic
from pointdiff.conditioning.prompts import check_prompts

ARCH = "words"
CONFIG_NAME = "text_config.json"  # the file ``save`` writes, read back by ``load_text_encoder``

# Words that carry no shape: dropped by ``WordEncoder`` and by the pipeline's prompt check.
STOPWORDS = frozenset(
    {"a", "an", "the", "of", "with", "and", "in", "on", "for", "to", "3d", "model"}
)


class WordEncoder(nn.Module):
    """A frozen hashed bag of words: ``embed(prompts) -> [B, D]``, no weights, no network.

    Each word (lower-case ``[a-z0-9]+``, stop-words dropped) maps to a fixed ±1/√D vector read
    from SHAKE-256 of the word (the same on every machine and library version); a prompt's
    embedding is the L2-normalised sum of its words' vectors (a prompt without words uses the
    vector of ``"<empty>"``). Prompts with no word in common are nearly orthogonal (two words:
    cos ~ N(0, 1/D)), shared words make prompts similar, and the denoiser's linear text
    projection learns what each word means.

    Why it exists: with ~300 captions and no pretrained CLIP, the small open_clip tower trained
    jointly from scratch collapsed (all pairwise cosines of its embeddings ≥ 0.99), and the
    base model's output was the same for the true, a shuffled or the null prompt — it had
    learned an unconditional model. This encoder separates the conditions from step 0 at no
    cost. Words never seen in training get vectors too, which the model has not learned: the
    pipeline warns about such prompts.
    """

    ARCH = ARCH

    def __init__(self, dim: int = 512):
        super().__init__()
        if dim < 1:
            raise ValueError(f"words encoder: dimension must be >= 1, got {dim}")
        self.dim = dim  # embedding size D
        self.spec = {"arch": f"{ARCH}-{dim}", "embed_dim": dim, "pretrained": ""}
        self.register_buffer("_probe", torch.zeros(0), persistent=False)  # follows .to(device)

    @classmethod
    def from_arch(cls, arch: str) -> WordEncoder:
        """``"words"`` (512-d, the ``small`` denoiser's ``cond_dim``) or ``"words-D"``."""
        dim = arch[len(ARCH) + 1 :] or "512"
        if not arch.startswith(ARCH) or not dim.isdigit():
            raise ValueError(f"unknown words encoder {arch!r}; use 'words' or 'words-D'")
        return cls(int(dim))

    @property
    def trainable(self) -> bool:
        return False

    def freeze(self) -> WordEncoder:
        return self.eval()

    def save(self, out_dir: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write ``text_config.json`` (there are no weights; ``dtype`` is ignored)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / CONFIG_NAME, self.spec)
        return out

    @staticmethod
    def words(prompt: str) -> list[str]:
        """The content words of a prompt, in order."""
        return [w for w in re.findall(r"[a-z0-9]+", prompt.lower()) if w not in STOPWORDS]

    def word_vector(self, word: str) -> torch.Tensor:
        """[D] the fixed ±1/√D vector of ``word``."""
        bits = np.unpackbits(
            np.frombuffer(hashlib.shake_256(word.encode()).digest(-(-self.dim // 8)), np.uint8)
        )
        return torch.from_numpy(bits[: self.dim].astype(np.float32) * 2 - 1) / self.dim**0.5

    def embed(self, prompts: list[str], batch_size: int = 64) -> torch.Tensor:
        """[B, D] float32 L2-normalised bag-of-words embeddings on the encoder's device
        (``batch_size`` is ignored: there is no model to batch)."""
        check_prompts(prompts)
        rows = [
            torch.stack([self.word_vector(w) for w in (self.words(p) or ["<empty>"])]).sum(0)
            for p in prompts
        ]
        return F.normalize(torch.stack(rows), dim=-1).to(self._probe.device)
