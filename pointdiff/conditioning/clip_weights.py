"""CLIP weight files: finding them locally and reading one tower's state dict out of them.

Shared by ``conditioning.text`` (text tower) and ``conditioning.image`` (visual tower): one
CLIP checkpoint serves both. Lookup never touches the network unless ``download=True``:

* an open_clip tag (``"ViT-L-14", "openai"``): open_clip's ``~/.cache/clip`` for URL downloads,
  the HF hub cache for hub-hosted tags; a miss fails at once naming where we looked and the
  local-file option (``--clip-weights PATH``);
* a local file: ``.safetensors``; ``.bin``/``.pt``/``.pth`` read with ``weights_only=True``;
  OpenAI's TorchScript ``ViT-L-14.pt`` through ``torch.jit.load`` (no pickle inside);
* ``hf-hub:org/repo``: ``open_clip_config.json`` + weights from the local HF cache.

Errors are :class:`ClipFilesError`; the encoders re-raise them as their own error types.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import open_clip
import torch
from safetensors.torch import load_file
from torch import nn


class ClipFilesError(ValueError):
    """A CLIP weights file that is missing (with where to put it), unreadable or mismatched."""


def missing_error(
    arch: str, tag: str, places: list[str], url: str = "", file_arch: str = ""
) -> ClipFilesError:
    """The offline error: where we looked, and how to hand over a local file instead."""
    fetch = f"Download {url} on a machine with network" if url else "Download the weights"
    file_arch = file_arch or arch
    return ClipFilesError(
        f"CLIP weights {arch}/{tag} are not in the local cache (looked in: "
        f"{'; '.join(places)}) and this run does not download. {fetch}, then pass the file with "
        f"`--clip-weights PATH` (Python: TextEncoder.from_pretrained({arch!r}, {tag!r}, "
        f"weights=PATH) or TextConfig(arch={file_arch!r}, pretrained=PATH)), or copy it to "
        f"{places[0]}. Or allow the download: `--clip-download` (from_pretrained(..., "
        "download=True))."
    )


def resolve_weights(arch: str, pretrained: str, tag_cfg: dict, cache_dir, download: bool) -> str:
    """A local file for (arch, pretrained): the path itself or open_clip's cached download.

    :param tag_cfg: ``open_clip.get_pretrained_cfg(arch, pretrained)`` ({} for a file path).
    """
    if not pretrained:
        raise ClipFilesError(f"{arch}: give a pretrained tag or a local weights file")
    if not tag_cfg:
        if Path(pretrained).is_file():
            return str(pretrained)
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ClipFilesError(
            f"{pretrained!r} is neither a file nor a known open_clip tag for {arch} "
            f"(tags: {', '.join(tags) or 'none'}); pass a local weights file with --clip-weights"
        )
    if download:
        return open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)
    places, found = [], None
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        repo, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_model.safetensors"]
        names.append("open_clip_pytorch_model.bin")
        for name in dict.fromkeys(names):
            found = found or hf_cached(repo, name, cache_dir)
        places.append(f"HF cache ({cache_dir or '$HF_HOME/hub'}) repo {repo}")
    url = tag_cfg.get("url", "") or (f"https://huggingface.co/{hub.rstrip('/')}" if hub else "")
    if tag_cfg.get("url"):
        target = Path(cache_dir or Path("~/.cache/clip").expanduser()) / os.path.basename(url)
        found = found or (str(target) if target.is_file() else None)
        places.insert(0, str(target))
    if found is None:
        qg = tag_cfg.get("quick_gelu", False) and "quickgelu" not in arch
        raise missing_error(arch, pretrained, places, url, f"{arch}-quickgelu" if qg else arch)
    return found


def hf_cached(repo: str, filename: str, cache_dir) -> str | None:
    """Path of ``filename`` of an HF repo in the local cache, or None (no network)."""
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    return hit if isinstance(hit, str) else None


def resolve_hf_hub(repo: str, cache_dir, download: bool) -> tuple[dict, str]:
    """(model_cfg, weights path) of an open_clip ``hf-hub:`` repo from the local cache."""
    if download:
        from huggingface_hub import hf_hub_download

        cfg_path = hf_hub_download(repo, "open_clip_config.json", cache_dir=cache_dir)
        weights = open_clip.pretrained.download_pretrained_from_hf(repo, cache_dir=cache_dir)
    else:
        cfg_path = hf_cached(repo, "open_clip_config.json", cache_dir)
        weights = hf_cached(repo, "open_clip_model.safetensors", cache_dir) or hf_cached(
            repo, "open_clip_pytorch_model.bin", cache_dir
        )
        if cfg_path is None or weights is None:
            raise ClipFilesError(
                f"hf-hub:{repo} is not in the local HF cache ({cache_dir or '$HF_HOME/hub'}) and "
                f"this run does not download. Download https://huggingface.co/{repo} on a machine "
                "with network and copy its cache there, or pass its weights file with "
                "`--clip-weights PATH` and the open_clip architecture name "
                "(TextConfig(arch=ARCH, pretrained=PATH)); or allow the download: "
                "`--clip-download`."
            )
    return json.loads(Path(cfg_path).read_text())["model_cfg"], weights


def is_torchscript(path: str) -> bool:
    """OpenAI's original CLIP files are TorchScript archives (``constants.pkl`` inside)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def tower_state_dict(
    path: str, tower: nn.Module, prefix: str, what: str
) -> dict[str, torch.Tensor]:
    """The state dict of one CLIP tower out of a weights file, checked against ``tower``.

    :param prefix: the tower's key prefix in full-CLIP files (``"visual."``; ``"text."`` for
        open_clip's CustomTextCLIP layout); files of the bare tower or OpenAI's flat text keys
        load as they are.
    :param what: the tower's name for errors (``"text-tower"``, ``"image-tower"``).
    """
    try:
        if str(path).endswith(".safetensors"):
            sd = load_file(path)
        elif is_torchscript(path):  # OpenAI's original ViT-L-14.pt (no pickle inside)
            sd = torch.jit.load(path, map_location="cpu").state_dict()
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any read failure the same way
        raise ClipFilesError(f"{path}: cannot read CLIP weights ({type(e).__name__}: {e})") from e
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if any(k.startswith(prefix) for k in sd):  # a full-CLIP file: keep this tower's keys
        sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    want = tower.state_dict()
    sd = {k: v.float() for k, v in sd.items() if k in want}
    missing = sorted(set(want) - set(sd))
    if missing:
        raise ClipFilesError(f"{path}: not CLIP {what} weights; missing e.g. {missing[:4]}")
    wrong = [k for k in want if sd[k].shape != want[k].shape]
    if wrong:
        raise ClipFilesError(
            f"{path}: shapes differ from the architecture, e.g. {wrong[0]}: "
            f"{tuple(sd[wrong[0]].shape)} vs {tuple(want[wrong[0]].shape)} (wrong CLIP arch?)"
        )
    return sd


__all__ = [
    "ClipFilesError",
    "hf_cached",
    "is_torchscript",
    "missing_error",
    "resolve_hf_hub",
    "resolve_weights",
    "tower_state_dict",
]
