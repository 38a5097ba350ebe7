"""Atomic file writes: a file is written to a temporary sibling and renamed into place
(``os.replace``), so a crash, a full disk or an interrupt never leaves half a file where a reader
expects a whole one; the temporary file is removed when the write fails.

``atomic_path(path)`` yields the temporary path for writers that take a file name (numpy,
safetensors, trimesh); ``write_bytes_atomic`` / ``write_text_atomic`` / ``write_json_atomic`` are
the common cases.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers that pick the format by
    suffix still work); on a clean exit it replaces ``path``, on an exception it is deleted."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes | list[bytes]) -> None:
    """Write ``data`` (bytes, or chunks written in order) to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for chunk in [data] if isinstance(data, bytes) else data:
            f.write(chunk)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj, sort_keys: bool = True) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=sort_keys))


__all__ = ["atomic_path", "write_bytes_atomic", "write_text_atomic", "write_json_atomic"]
