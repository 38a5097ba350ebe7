"""BERT's encoder (Hugging Face ``BertModel`` without its pooler) in plain torch, with the
``tokenizers`` library's fast WordPiece tokenizer: the frozen MiniLM sentence encoder without
importing ``transformers`` (which takes longer than sampling a shape with the distilled model).

Module and parameter names are ``BertModel``'s, so its ``model.safetensors`` loads unchanged;
``tests/test_hf_text.py`` checks the outputs against ``transformers`` on a random BERT and on the
bundled MiniLM.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn


class WordPiece:
    """The model's own fast tokenizer (``tokenizer.json``, the ``tokenizers`` library): ids and
    mask as ``transformers``' tokenizer gives them (padding to the longest, truncation)."""

    def __init__(self, folder: Path, max_length: int):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tok.enable_truncation(max_length=max_length)
        pad = self.tok.token_to_id("[PAD]")
        self.tok.enable_padding(pad_id=0 if pad is None else pad, pad_token="[PAD]")

    def __call__(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tok.encode_batch(list(prompts))
        return {
            "input_ids": torch.tensor([e.ids for e in enc]),
            "attention_mask": torch.tensor([e.attention_mask for e in enc]),
        }


class _SelfAttention(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)


class _DenseNorm(nn.Module):
    """``dense`` then ``LayerNorm`` of (output + residual): BERT's sub-layer output."""

    def __init__(self, d_in: int, d: int, eps: float):
        super().__init__()
        self.dense, self.LayerNorm = nn.Linear(d_in, d), nn.LayerNorm(d, eps=eps)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class _Layer(nn.Module):
    def __init__(self, d: int, heads: int, inner: int, eps: float):
        super().__init__()
        self.heads = heads
        self.attention = nn.Module()
        self.attention.self = _SelfAttention(d)
        self.attention.output = _DenseNorm(d, d, eps)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(d, inner)
        self.output = _DenseNorm(inner, d, eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """:param x: [B, L, D]. :param keep: [B, 1, 1, L] bool, True for real tokens."""
        b, n, d = x.shape
        att = self.attention.self

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(att.query(x)), split(att.key(x)), split(att.value(x))
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        x = self.attention.output(h.transpose(1, 2).reshape(b, n, d), x)
        return self.output(F.gelu(self.intermediate.dense(x)), x)


class BertEncoder(nn.Module):
    """``BertModel(...).last_hidden_state`` for a Hugging Face BERT ``config.json``.

    :param cfg: the config (``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
        ``intermediate_size``, ``vocab_size``, ``max_position_embeddings``, ``type_vocab_size``,
        ``layer_norm_eps``; ``hidden_act`` gelu, absolute positions).
    """

    def __init__(self, cfg: dict):
        super().__init__()
        d, eps = cfg["hidden_size"], cfg.get("layer_norm_eps", 1e-12)
        self.config = cfg
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(cfg["vocab_size"], d)
        self.embeddings.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], d)
        self.embeddings.token_type_embeddings = nn.Embedding(cfg.get("type_vocab_size", 2), d)
        self.embeddings.LayerNorm = nn.LayerNorm(d, eps=eps)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(
            _Layer(d, cfg["num_attention_heads"], cfg["intermediate_size"], eps)
            for _ in range(cfg["num_hidden_layers"])
        )

    @classmethod
    def supports(cls, cfg: dict) -> bool:
        """Whether ``cfg`` is a model this class computes exactly (else use ``transformers``)."""
        return (
            cfg.get("model_type") == "bert"
            and cfg.get("hidden_act", "gelu") == "gelu"
            and cfg.get("position_embedding_type", "absolute") == "absolute"
        )

    @classmethod
    def load(cls, folder: Path) -> BertEncoder:
        """The encoder of ``folder`` (``config.json`` + ``model.safetensors``), eval mode."""
        model = cls(json.loads((folder / "config.json").read_text()))
        weights = load_file(str(folder / "model.safetensors"))
        state = {k.removeprefix("bert."): v for k, v in weights.items()}
        want = model.state_dict()
        missing = sorted(set(want) - set(state))
        if missing:
            raise ValueError(f"{folder}: weights lack {missing[:3]}")
        model.load_state_dict({k: state[k].float() for k in want})
        return model.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """:param input_ids, attention_mask: [B, L]. :return: [B, L, D] last hidden states."""
        e = self.embeddings
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = e.word_embeddings(input_ids) + e.position_embeddings(pos)[None]
        x = e.LayerNorm(x + e.token_type_embeddings(torch.zeros_like(input_ids)))
        keep = attention_mask.bool()[:, None, None, :]
        for layer in self.encoder.layer:
            x = layer(x, keep)
        return x
