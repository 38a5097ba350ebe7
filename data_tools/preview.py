"""Contact sheet of converted clouds: a PNG grid with one tile per object and its caption."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

from PIL import Image

from pointdiff.data import ShardReader
from pointdiff.pointcloud import PointCloud
from pointdiff.render import render_grid, render_views


def preview(
    shards: str | os.PathLike,
    out: str | os.PathLike,
    count: int = 24,
    cols: int = 4,
    views: int = 2,
    size: int = 192,
    seed: int = 0,
    split: str | None = None,
) -> list[str]:
    """Render ``count`` objects of a shard directory (a seeded choice, in id order) to ``out``.

    Each tile shows ``views`` azimuths side by side; captions are ``caption [id tail]``.
    :return: the ids shown.
    """
    reader = ShardReader(shards)
    rows = [i for i, e in enumerate(reader.entries) if split is None or e["split"] == split]
    if not rows:
        raise ValueError(f"{shards}: no objects{'' if split is None else f' in split {split}'}")
    rows.sort(key=lambda i: zlib.crc32(f"{seed}:{reader.entries[i]['id']}".encode()))
    rows = sorted(rows[:count], key=lambda i: reader.entries[i]["id"])
    tiles: list[Image.Image] = []
    captions = []
    for i in rows:
        e = reader.entries[i]
        cloud = PointCloud(reader.get(i, "coords"), reader.get(i, "colors") / 255.0)
        tiles.append(render_views(cloud, views=views, size=size))
        tail = e["id"].split("/")[-1][:12]
        width = max(16, views * size // 7)  # the default bitmap font is ~6-7 px per char
        captions.append(f"{e['caption']} [{tail}]"[:width])
    sheet = render_grid(tiles, captions, cols=cols)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return [reader.entries[i]["id"] for i in rows]
