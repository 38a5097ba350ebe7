"""CLIP weight files: finding them locally and reading one tower's state dict out of them.

Shared by ``conditioning.text`` (text tower) and ``conditioning.image`` (visual tower): one
CLIP checkpoint serves both. Lookup:

* an open_clip tag (``"ViT-L-14", "openai"``): open_clip's ``~/.cache/clip`` for URL downloads,
  the HF hub cache for hub-hosted tags; a miss is downloaded where ``download=True`` (saying
  what is fetched from where; not when ``HF_HUB_OFFLINE=1``), and otherwise, or when the
  download fails, is an error naming the file to fetch and where to put it (or
  ``--clip-weights PATH`` / ``$POINTDIFF_CLIP_WEIGHTS``);
* a local file: ``.safetensors``; ``.bin``/``.pt``/``.pth`` read with ``weights_only=True``;
  OpenAI's TorchScript ``ViT-L-14.pt`` through ``torch.jit.load`` (no pickle inside);
* ``hf-hub:org/repo``: ``open_clip_config.json`` + weights from the local HF cache.

A tower's weights are identified by ``tower_sha256``: the SHA-256 of its tensors (float32, in
key order), so OpenAI's TorchScript file and the Hugging Face copy of the same tag agree.

Errors are :class:`ClipFilesError`; the encoders re-raise them as their own error types.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file
from torch import nn

WEIGHTS_ENV = "POINTDIFF_CLIP_WEIGHTS"  # a local CLIP weights file: the env form of --clip-weights
NO_DOWNLOAD = "this run does not download (--no-download, download=False)"


class ClipFilesError(ValueError):
    """A CLIP weights file that is missing (with where to put it), unreadable or mismatched."""


def missing_error(
    arch: str,
    tag: str,
    places: list[str],
    url: str = "",
    file_arch: str = "",
    why: str = NO_DOWNLOAD,
) -> ClipFilesError:
    """The offline error: where we looked, what to fetch and where to put it."""
    fetch = f"Download {url} on a machine with the internet" if url else "Download the weights"
    file_arch = file_arch or arch
    return ClipFilesError(
        f"CLIP weights {arch}/{tag} are not in the local cache (looked in: "
        f"{'; '.join(places)}) and {why}. {fetch} and copy it to {places[0]}, or pass the file "
        f"with `--clip-weights PATH` or {WEIGHTS_ENV}=PATH (Python: TextEncoder.from_pretrained("
        f"{arch!r}, {tag!r}, weights=PATH) or TextConfig(arch={file_arch!r}, pretrained=PATH))."
    )


def tower_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a tower's weights: names, shapes and float32 values in key order (the same
    for any file format holding the same weights)."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        v = state_dict[k].detach().to("cpu", torch.float32).contiguous()
        h.update(f"{k}:{tuple(v.shape)};".encode())
        h.update(v.numpy().data)
    return h.hexdigest()


def download_source(tag_cfg: dict, cache_dir=None) -> tuple[str, str]:
    """(where open_clip fetches a tag from, where it stores it): the HF hub repo when the tag
    has one and huggingface_hub is installed (open_clip's preference), else the URL."""
    import open_clip  # here, not at the top: importing it takes about 2 s

    hub = tag_cfg.get("hf_hub", "")
    if hub and open_clip.pretrained.has_hf_hub():
        repo = os.path.split(hub)[0]
        return f"https://huggingface.co/{repo}", f"the HF hub cache ({cache_dir or '$HF_HOME/hub'})"
    url = tag_cfg.get("url", "")
    return url, str(Path(cache_dir or Path("~/.cache/clip").expanduser()) / os.path.basename(url))


def download_weights(arch: str, tag: str, tag_cfg: dict, cache_dir, places: list[str]) -> str:
    """Fetch a tag's weights with open_clip (into its cache: ``~/.cache/clip`` or the HF hub
    cache), saying what comes from where; a failure is the offline error."""
    import open_clip  # here, not at the top: importing it takes about 2 s

    source, dest = download_source(tag_cfg, cache_dir)
    print(
        f"downloading CLIP {arch}/{tag} weights from {source} to {dest} (once: later runs read "
        "the local copy)",
        file=sys.stderr,
        flush=True,
    )
    fetch = tag_cfg.get("url") or source
    try:
        # no name resolution, no download: fail now, not after the hub client's retries
        socket.getaddrinfo(urlparse(source).hostname, 443)
        path = open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001 - no network, HTTP errors, checksum: all one story
        why = f"the download from {source} failed ({type(e).__name__}: {e})"
        raise missing_error(arch, tag, places, fetch, why=why) from None
    if not path or not Path(path).is_file():
        why = f"the download from {source} gave no file"
        raise missing_error(arch, tag, places, fetch, why=why)
    return str(path)


def resolve_weights(arch: str, pretrained: str, tag_cfg: dict, cache_dir, download: bool) -> str:
    """A local file for (arch, pretrained): the path itself or open_clip's cached download.

    :param tag_cfg: ``open_clip.get_pretrained_cfg(arch, pretrained)`` ({} for a file path).
    """
    import open_clip  # here, not at the top: importing it takes about 2 s

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
    if found is not None:
        return found
    if download and os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        download, why = False, "HF_HUB_OFFLINE is set"
    else:
        why = NO_DOWNLOAD
    if download:
        return download_weights(arch, pretrained, tag_cfg, cache_dir, places)
    qg = tag_cfg.get("quick_gelu", False) and "quickgelu" not in arch
    raise missing_error(arch, pretrained, places, url, f"{arch}-quickgelu" if qg else arch, why)


def hf_cached(repo: str, filename: str, cache_dir) -> str | None:
    """Path of ``filename`` of an HF repo in the local cache, or None (no network)."""
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    return hit if isinstance(hit, str) else None


def resolve_hf_hub(repo: str, cache_dir, download: bool) -> tuple[dict, str]:
    """(model_cfg, weights path) of an open_clip ``hf-hub:`` repo from the local cache."""
    import open_clip  # here, not at the top: importing it takes about 2 s

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
                "(TextConfig(arch=ARCH, pretrained=PATH)); or allow the download (the default "
                "of `pointdiff sample` and training)."
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
    "WEIGHTS_ENV",
    "download_source",
    "download_weights",
    "hf_cached",
    "is_torchscript",
    "missing_error",
    "resolve_hf_hub",
    "resolve_weights",
    "tower_sha256",
    "tower_state_dict",
]
