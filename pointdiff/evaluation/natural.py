"""Natural prompts: prompts written the way people type them, each with its expected shape class
and, where the prompt names one, its expected basic colour (``pointdiff.colours``).

A suite is a tab-separated file with the header ``prompt	class	colour`` (an empty colour when
the prompt names none); ``benchmarks/natural_prompts.tsv`` is the shipped one. Scoring:

* category: the prompted class against a judge's class (the evaluation classifier, the
  nearest-reference judge; ``evaluation.alignment``);
* colour (prompts that name one): a hit when the named colour is among the one or two words
  ``colours.describe_colours`` gives for the generated cloud — what a person would call the
  object, so "a red sofa" that comes out mostly red with grey legs counts, a brown sofa with a
  few red points does not. Beside it: the named colour's mean share of the points (a graded
  score) and the chance level, the hit rate with the named colours shuffled among the clouds.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pointdiff.colours import BASIC_COLOURS, colour_shares, describe_colours

HEADER = ("prompt", "class", "colour")


@dataclass(frozen=True)
class NaturalPrompt:
    prompt: str
    category: str  # expected shape class (a class name of the evaluation classifier)
    colour: str | None  # expected basic colour (``colours.BASIC_COLOURS``), None if unnamed


def load_natural_prompts(path: str | os.PathLike) -> list[NaturalPrompt]:
    """Read a natural-prompt suite (module docstring), in file order.

    :raises ValueError: on a wrong header, a row without 3 fields, an empty prompt or class, a
        colour outside ``BASIC_COLOURS``, or a repeated prompt (each names its line).
    """
    out: list[NaturalPrompt] = []
    seen: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, None)
        if header is None or tuple(h.strip() for h in header) != HEADER:
            raise ValueError(f"{path}: header must be {' / '.join(HEADER)}, got {header}")
        for line, row in enumerate(rows, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 3:
                raise ValueError(f"{path}:{line}: expected 3 tab-separated fields, got {row}")
            prompt, category, colour = (s.strip() for s in row)
            if not prompt or not category:
                raise ValueError(f"{path}:{line}: empty prompt or class")
            if colour and colour not in BASIC_COLOURS:
                raise ValueError(f"{path}:{line}: colour {colour!r} is not one of {BASIC_COLOURS}")
            if prompt in seen:
                raise ValueError(f"{path}:{line}: prompt {prompt!r} repeats line {seen[prompt]}")
            seen[prompt] = line
            out.append(NaturalPrompt(prompt, category, colour or None))
    if not out:
        raise ValueError(f"{path}: no prompts")
    return out


def colour_scores(colors: Sequence[np.ndarray], named: Sequence[str | None]) -> dict:
    """Colour accuracy of generated clouds whose prompt names a colour (others are skipped).

    :param colors: per cloud, [N, 3] float sRGB in [0, 1].
    :param named: per cloud, the expected basic colour or None.
    :return: {"accuracy": hit rate (describe_colours rule), "share": mean share of the named
        colour, "chance": the hit rate were the named colours shuffled among the scored clouds
        (mean over all cloud/colour pairs: what a model that ignores colour words scores),
        "per_colour": {colour: hit rate}, "described": per scored cloud its words,
        "hits": per scored cloud bool, "count": clouds scored}; NaN rates when none is scored.
    """
    if len(colors) != len(named):
        raise ValueError(f"{len(colors)} clouds but {len(named)} colours")
    pick = [i for i, c in enumerate(named) if c is not None]
    words = [describe_colours(colors[i]) for i in pick]
    hits = np.array([named[i] in w for i, w in zip(pick, words, strict=True)], dtype=bool)
    shares = [colour_shares(colors[i]).get(named[i], 0.0) for i in pick]
    expected = np.array([named[i] for i in pick])
    per = {c: float(hits[expected == c].mean()) for c in sorted(set(expected.tolist()))}
    chance = np.mean([[e in w for e in expected] for w in words]) if pick else float("nan")
    nan = float("nan")
    return {
        "accuracy": float(hits.mean()) if pick else nan,
        "share": float(np.mean(shares)) if pick else nan,
        "chance": float(chance),
        "per_colour": per,
        "described": words,
        "hits": hits.tolist(),
        "count": len(pick),
    }


def hit_rates(predicted: Sequence[str], expected: Sequence[str]) -> tuple[float, dict[str, float]]:
    """Share of ``predicted == expected``, overall and per expected class (sorted)."""
    hits, expected = np.asarray(predicted) == np.asarray(expected), np.asarray(expected)
    return float(hits.mean()), {c: float(hits[expected == c].mean()) for c in sorted(set(expected))}


def natural_table(summary: dict, suite: Sequence[NaturalPrompt]) -> str:
    """Per-class and per-colour rates of a summary with ``per_category``, ``nn_per_category``
    and ``colour_per_colour`` (class/colour -> rate) as a plain-text table."""
    lines = [f"{'class':10s} {'n':>3s} {'classifier':>10s} {'nearest':>8s}"]
    for c, rate in summary["per_category"].items():
        n = sum(p.category == c for p in suite)
        lines.append(f"{c:10s} {n:3d} {rate:10.3f} {summary['nn_per_category'][c]:8.3f}")
    lines.append(f"{'colour':10s} {'n':>3s} {'named':>10s}")
    for c, rate in summary["colour_per_colour"].items():
        lines.append(f"{c:10s} {sum(p.colour == c for p in suite):3d} {rate:10.3f}")
    return "\n".join(lines)
