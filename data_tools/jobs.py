"""What a source hands to the converter: one ``Job`` per object, plus ``Settings`` for a run.

Sources only *describe* objects (paths and metadata, cheap to list and to pickle to workers);
all file reading happens in ``convert.convert_object``.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import asdict, dataclass, field

SPLITS = ("train", "val", "test")
DEFAULT_SPLIT = "train=0.9,val=0.05,test=0.05"


class SourceError(ValueError):
    """A source that cannot be listed (missing folder, unreadable table), with the reason."""


class Filtered(Exception):
    """The object is deliberately not converted (licence filter, no caption): not an error.
    ``reason`` is the short tag counted in the summary, ``message`` says why."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(message or reason)
        self.reason = reason


@dataclass(frozen=True)
class Settings:
    """Conversion settings (``fingerprint()`` is stored in the work dir and checked on reruns).

    :param num_points: points per cloud after farthest point sampling.
    :param oversample: surface points drawn before visibility filtering and FPS.
    :param views: viewpoints for visible-surface filtering (0 keeps hidden surfaces too).
    :param sdf_queries: SDF query points per object (0: no SDF samples).
    :param max_disagree: share of queries whose two sign tests may disagree before the object
        is flagged ``sdf_reliable: false``.
    :param max_faces: larger meshes fail with reason ``too_many_faces``.
    :param strict_assets: missing MTL/texture files fail the object (else a warning). Not part
        of the work-directory check: objects with all assets convert identically either way, so
        a rerun with ``--allow-missing-assets --retry-failed`` converts just the failed ones.
    :param seed: mixed with each object id into that object's random stream.
    """

    num_points: int = 4096
    oversample: int = 32768
    views: int = 20
    sdf_queries: int = 8192
    max_disagree: float = 0.05
    max_faces: int = 4_000_000
    strict_assets: bool = True
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def fingerprint(self) -> dict:
        """The settings a work directory must keep (all that change a converted object)."""
        return {k: v for k, v in asdict(self).items() if k != "strict_assets"}


@dataclass(frozen=True)
class Job:
    """One object to convert.

    :param path: the mesh file; inside ``archive`` (a zip) when that is set.
    :param root: folder that referenced files may come from (default: the mesh's folder).
    :param texture: image applied to UV'd faces without a material (OBJ without ``mtllib``).
    :param rotation: 9 floats, a row-major 3×3 matrix applied to the vertices before ``up``.
    :param hook: name of a ``convert.HOOKS`` entry that completes metadata from the file
        (e.g. Objaverse licence and title from the GLB) and may filter the object.
    :param extras: JSON-able metadata copied into the index.
    :param kind: ``mesh`` (a mesh file to sample) or ``cloud`` (a point-cloud file to resample).
    """

    id: str
    path: str
    source: str
    caption: str = ""
    licence: str = "unknown"
    split: str = "train"
    category: str = ""
    up: str = "y"
    root: str | None = None
    texture: str | None = None
    archive: str | None = None
    rotation: tuple[float, ...] | None = None
    hook: str | None = None
    extras: dict = field(default_factory=dict)
    kind: str = "mesh"

    def metadata(self) -> dict:
        """The index fields this job contributes (overriding what its work file holds)."""
        meta = dict(self.extras)
        meta.update(id=self.id, caption=self.caption, source=self.source, licence=self.licence)
        meta.update(split=self.split, category=self.category, path=self.path)
        return meta


# ----------------------------------------------------------------------------------------------
# Deterministic helpers shared by the sources


def id_hash(key: str, seed: int = 0) -> int:
    """A stable 32-bit hash of an object id (crc32; identical on every machine and run)."""
    return zlib.crc32(f"{seed}:{key}".encode())


def in_part(object_id: str, part_index: int, num_parts: int) -> bool:
    """Whether an object belongs to part ``part_index`` of a job array: a hash of its id alone,
    so every task agrees without listing the others' objects, whatever each task listed."""
    return num_parts == 1 or id_hash(object_id, seed=-1) % num_parts == part_index


def parse_split(spec: str) -> dict[str, float] | str:
    """``train`` → every object in that split; ``train=0.9,val=0.05,test=0.05`` → fractions."""
    spec = spec.strip()
    if spec in SPLITS:
        return spec
    out = {}
    for part in spec.split(","):
        name, _, frac = part.partition("=")
        if name.strip() not in SPLITS or not frac:
            raise SourceError(f"bad --split {spec!r}: use a split name or e.g. {DEFAULT_SPLIT}")
        out[name.strip()] = float(frac)
    total = sum(out.values())
    if total <= 0:
        raise SourceError(f"bad --split {spec!r}: fractions sum to {total}")
    return {k: v / total for k, v in out.items()}


def assign_split(key: str, spec: dict[str, float] | str, seed: int = 0) -> str:
    """The split of object ``key`` under ``parse_split``'s result (hash of id and seed)."""
    if isinstance(spec, str):
        return spec
    u = id_hash(key, seed) / 2**32
    acc = 0.0
    for name, frac in spec.items():
        acc += frac
        if u < acc:
            return name
    return list(spec)[-1]


def with_article(phrase: str) -> str:
    """``armchair`` → ``an armchair``; phrases that already start with an article are kept."""
    phrase = phrase.strip()
    if not phrase or re.match(r"(?i)^(a|an|the)\s", phrase):
        return phrase
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def words_from_name(name: str) -> str:
    """``WaterBottle`` / ``stanford-bunny`` / ``office_chair2`` → ``water bottle`` / … words."""
    name = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)
    name = re.sub(r"[_\-.]+", " ", name)
    name = re.sub(r"(?<=[a-zA-Z])(\d+)$", r" \1", name)
    return " ".join(name.lower().split())
