"""Words a model never saw, read as the nearest words it knows, through WordNet's noun hierarchy.

The shipped base model reads prompts with a hashed bag of words (``text.WordEncoder``): a word
absent from its ~300 training captions ("desk", "stool", "vase") is a random vector it never
learned, so such a prompt gives an arbitrary shape. A pretrained CLIP would know that a desk is a
table; offline, WordNet (Princeton, a 28 MB lexical database in Debian's ``wordnet-base``) knows it
too: desk.n.01 → hypernym table.n.02. :func:`build_aliases` maps every WordNet noun of one or two
words to the training-vocabulary word closest to it in the hypernym tree; the table ships beside the
weights (``lexicon.json``, no WordNet needed at sampling time) and :func:`rewrite` swaps unknown
words for their alias before the prompt is embedded.

    wn = WordNet.load("/usr/share/wordnet")
    aliases = build_aliases(wn, vocab_counts(captions))  # {"desk": "table", "stool": "chair", ...}
    rewrite("a desk (office)", aliases, vocab)  # ("a table (office)", {"desk": "table"})

:class:`PromptReader` reads a prompt once, for the whole pipeline: the user's text, the text the
model is given, the words swapped and the warnings, in one frozen :class:`Prompt`.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import re
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from pointdiff.atomic import write_text_atomic
from pointdiff.conditioning.words import STOPWORDS, WordEncoder

LEXICON_NAME = "lexicon.json"
WORDNET_DIRS = ("/usr/share/wordnet", "/usr/local/share/wordnet")

# WordNet's licence asks that its notice and disclaimer travel with every copy and derivative.
WORDNET_NOTICE = (
    "Derived from WordNet 3.0. WordNet 3.0 Copyright 2006 by Princeton University. All rights "
    'reserved. THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY MAKES NO '
    "REPRESENTATIONS OR WARRANTIES, EXPRESS OR IMPLIED. BY WAY OF EXAMPLE, BUT NOT LIMITATION, "
    "PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES OF MERCHANTABILITY OR FITNESS FOR "
    "ANY PARTICULAR PURPOSE OR THAT THE USE OF THE LICENSED SOFTWARE, DATABASE OR DOCUMENTATION "
    "WILL NOT INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS OR OTHER RIGHTS. The name "
    "of Princeton University or Princeton may not be used in advertising or publicity pertaining "
    "to distribution of the software and/or database."
)

# WordNet's regular noun inflections (morphy): suffix -> base suffix.
_NOUN_SUFFIXES = (
    ("ses", "s"),
    ("xes", "x"),
    ("zes", "z"),
    ("ches", "ch"),
    ("shes", "sh"),
    ("men", "man"),
    ("ies", "y"),
    ("s", ""),
)


class LexiconError(RuntimeError):
    """A WordNet folder or a lexicon file that cannot be read."""


@dataclass(frozen=True)
class WordNet:
    """The noun part of a WordNet database folder (``index.noun``, ``data.noun``, ``noun.exc``).

    ``senses[word]`` lists a lemma's synset offsets, most frequent sense first; ``hypernyms[s]``
    the synsets ``s`` is a kind (``@``) or an instance (``@i``) of; ``lemmas[s]`` its words;
    ``adjectives`` the words that are also adjectives (``index.adj``: "black", "double").
    """

    senses: dict[str, list[str]]
    hypernyms: dict[str, list[str]]
    lemmas: dict[str, list[str]]
    exceptions: dict[str, str]
    adjectives: frozenset[str] = frozenset()

    @classmethod
    def load(cls, folder: str | os.PathLike | None = None) -> WordNet:
        """Read a WordNet 3.x database folder (default: the first of ``WORDNET_DIRS`` present)."""
        root = (
            Path(folder)
            if folder
            else next((Path(d) for d in WORDNET_DIRS if Path(d).is_dir()), None)
        )
        if (
            root is None
            or not (root / "index.noun").is_file()
            or not (root / "data.noun").is_file()
        ):
            raise LexiconError(
                f"no WordNet database at {folder or ' or '.join(WORDNET_DIRS)} "
                "(index.noun, data.noun); "
                "install it with `apt-get install -y wordnet-base` or pass the folder that holds it"
            )
        senses, hypernyms, lemmas, exceptions = {}, {}, {}, {}
        for line in _records(root / "index.noun"):
            f = line.split()
            n_ptr = int(f[3])
            senses[f[0].lower()] = f[6 + n_ptr :]
        for line in _records(root / "data.noun"):
            f = line.split("|")[0].split()
            offset, n_words = f[0], int(f[3], 16)
            lemmas[offset] = [f[4 + 2 * i].lower() for i in range(n_words)]
            i = 4 + 2 * n_words
            n_ptr = int(f[i])
            ptrs = [f[i + 1 + 4 * k : i + 5 + 4 * k] for k in range(n_ptr)]
            hypernyms[offset] = [p[1] for p in ptrs if p[0] in ("@", "@i") and p[2] == "n"]
        if (root / "noun.exc").is_file():
            for line in _records(root / "noun.exc"):
                f = line.split()
                if len(f) >= 2:
                    exceptions.setdefault(f[0], f[1])
        adjectives = (
            frozenset(line.split()[0].lower() for line in _records(root / "index.adj"))
            if (root / "index.adj").is_file()
            else frozenset()
        )
        return cls(senses, hypernyms, lemmas, exceptions, adjectives)

    def base_forms(self, word: str) -> list[str]:
        """The noun lemmas a word form can be (``"shelves"`` → ``["shelf"]``), itself first."""
        out = [word] if word in self.senses else []
        if word in self.exceptions and self.exceptions[word] in self.senses:
            out.append(self.exceptions[word])
        for suffix, base in _NOUN_SUFFIXES:
            if (
                word.endswith(suffix)
                and (stem := word[: len(word) - len(suffix)] + base) in self.senses
            ):
                out.append(stem)
        return list(dict.fromkeys(out))

    def synsets(self, word: str) -> list[str]:
        """Synset offsets of a word form, most frequent sense first."""
        return list(dict.fromkeys(s for b in self.base_forms(word) for s in self.senses[b]))

    def depth(self, synset: str) -> int:
        """Fewest hypernym edges from ``synset`` up to a root (entity.n.01 has depth 0)."""
        d, frontier, seen = 0, [synset], {synset}
        while frontier and all(self.hypernyms.get(s) for s in frontier):
            frontier = [h for s in frontier for h in self.hypernyms[s] if h not in seen]
            seen.update(frontier)
            d += 1
        return d

    def ancestors(self, synset: str, max_depth: int) -> dict[str, int]:
        """``{synset: depth}`` for ``synset`` (depth 0) and its hypernyms up to ``max_depth``."""
        depth, frontier = {synset: 0}, [synset]
        for d in range(1, max_depth + 1):
            frontier = [h for s in frontier for h in self.hypernyms.get(s, ()) if h not in depth]
            depth.update((h, d) for h in frontier)
        return depth


def _records(path: Path) -> Iterable[str]:
    """Lines of a WordNet file without its licence header (lines that start with spaces)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            yield from (line for line in f if line.strip() and not line.startswith(" "))
    except OSError as e:
        raise LexiconError(f"cannot read {path}: {e.strerror}") from None


def vocab_counts(captions: Iterable[str]) -> collections.Counter:
    """How often each content word (``WordEncoder.words``) occurs in the training captions."""
    return collections.Counter(w for c in captions for w in WordEncoder.words(c))


def build_aliases(
    wordnet: WordNet,
    vocab: collections.Counter,
    max_distance: int = 3,
    min_depth: int = 7,
    words: Iterable[str] | None = None,
) -> dict[str, str]:
    """Map unknown words to the nearest known word in WordNet's noun hierarchy.

    The distance of an unknown word ``w`` to a known word ``v`` is the fewest hypernym edges from
    ``w``'s most frequent sense and one of ``v``'s two most frequent senses (a caption's "table" is
    table.n.02, the furniture) up to a common synset (0: synonyms, 1: ``v`` is what ``w`` is a kind
    of, 2: siblings). That common synset must lie ``min_depth`` edges or more below WordNet's root:
    a desk and a table meet at table.n.02 (depth 8), a stool and a chair at seat.n.03 (8), but a
    bicycle and a drinking glass only at container.n.01 (6), which says nothing about shape. Ties
    go to the known word used most in the captions. Stop-words, words under 3 letters and words
    that are also adjectives ("black" is a colour noun too: swapping it for "white" would change
    the prompt) get no alias.

    :param vocab: known word -> caption count (:func:`vocab_counts`).
    :param max_distance: words farther than this from every known word get no alias.
    :param min_depth: the shallowest common synset that counts.
    :param words: the words to map (default: every WordNet noun of one word or two, "coffee_table").
    :return: ``{unknown word: known word}``; known words are never keys.
    """
    deep = functools.lru_cache(maxsize=None)(lambda s: wordnet.depth(s) >= min_depth)
    # Every deep synset within reach of a known word: synset -> [(depth, -count, word)].
    reach: dict[str, list[tuple[int, int, str]]] = collections.defaultdict(list)
    for v, count in vocab.items():
        best: dict[str, int] = {}
        for s in wordnet.synsets(v)[:2]:
            for a, d in wordnet.ancestors(s, max_distance).items():
                best[a] = min(best.get(a, d), d)
        for a, d in best.items():
            if deep(a):
                reach[a].append((d, -count, v))
    if words is None:  # the loop keeps single words and two-word compounds ("coffee_table")
        words = wordnet.senses
    aliases = {}
    for w in words:
        if (
            w in vocab
            or w in STOPWORDS
            or w in wordnet.adjectives
            or not re.fullmatch(r"[a-z]{3,}(_[a-z]+)?", w)
        ):
            continue
        candidates = [
            (d + dv, c, v)
            for s in wordnet.synsets(w)[:1]
            for a, d in wordnet.ancestors(s, max_distance).items()
            for dv, c, v in reach.get(a, ())
            if d + dv <= max_distance
        ]
        if candidates:
            aliases[w] = min(candidates)[2]
    return aliases


def rewrite(
    prompt: str, aliases: dict[str, str], vocab: AbstractSet[str]
) -> tuple[str, dict[str, str]]:
    """Swap the words of ``prompt`` that are not in ``vocab`` for their alias.

    - Two words that WordNet knows as one noun ("coffee table" -> coffee_table) are read together
      when either is unknown: "a coffee table" -> "a table", not "a drink table".
    - An unknown word right before another content word modifies it (English compounds put the
      head last: "a desk lamp" is a lamp), so it is dropped: "a desk lamp" -> "a lamp".
    - An unknown word without an alias is dropped: to the model it is a random vector it never
      learned, noise. A prompt left with no known word is returned unchanged (and warned about).
    - Otherwise the word becomes its alias; if the prompt already holds that alias, the word is
      dropped instead ("a desk, table" -> "a table"): the bag-of-words encoder sums word vectors,
      so a repeated word would weigh double.

    :return: the rewritten prompt and ``{word(s): alias}`` for what changed ("" = dropped).
    """
    known = vocab
    head, *rest = re.split(r"([A-Za-z0-9]+(?:'[A-Za-z]+)?)", prompt)  # "captain's": one token
    words = [w.lower().split("'")[0] for w in rest[0::2]]
    seps = rest[1::2]  # word i is followed by seps[i]
    ahead = collections.Counter(words)  # words not yet read
    written: set[str] = set()
    done: dict[str, str] = {}
    out = [head]

    def emit(alias: str, sep: str) -> None:
        if alias and alias not in written and not ahead[alias]:
            written.add(alias)
            out.extend([alias, sep])
        else:  # dropped: keep the separator's brackets, not its comma or space
            out.append(re.sub(r"^[\s,]+", "", sep))

    i = 0
    while i < len(words):
        w, sep = words[i], seps[i]
        ahead[w] -= 1
        joined = i + 1 < len(words) and sep.isspace()
        pair = f"{w}_{words[i + 1]}" if joined else ""
        if pair in aliases and not {w, words[i + 1]} <= known:
            ahead[words[i + 1]] -= 1
            done[f"{w} {words[i + 1]}"] = aliases[pair]
            emit(aliases[pair], seps[i + 1])
            i += 2
            continue
        if w in known or w in STOPWORDS:
            written.add(w)
            out.extend([rest[2 * i], sep])
        elif w not in aliases or (joined and (words[i + 1] in known or words[i + 1] in aliases)):
            done[w] = ""  # noise to the model / a modifier of the next word
            out.append(re.sub(r"^[\s,]+", "", sep))
        else:
            done[w] = aliases[w]
            emit(aliases[w], sep)
        i += 1
    if not written - STOPWORDS:  # nothing known would remain: leave it (the pipeline warns)
        return prompt, {}
    text = "".join(out)
    if done:  # what a dropped last word of a list leaves: "a table, )" / "a table, " / "()"
        text = re.sub(r"[,\s]+(?=\))", "", text)
        text = re.sub(r"[,\s]+$", "", text)
        text = re.sub(r"\s*\(\s*\)", "", text)
    return text, done


# ----------------------------------------------------------------------------------------------
# Reading a prompt once


@dataclass(frozen=True)
class Prompt:
    """A prompt as the pipeline reads it, once; every stage takes this value.

    :param text: what the user typed (it names the output folder).
    :param read: what the text encoder is given (``text`` with unknown words swapped).
    :param swaps: ``{word(s): alias}`` swapped in ``read`` (``""``: dropped); read-only.
    :param warnings: why the sample may not follow the prompt (no known word in it).
    """

    text: str
    read: str
    swaps: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    warnings: tuple[str, ...] = ()

    def notes(self) -> list[str]:
        """One line per swap set, for the user (empty when nothing was swapped)."""
        if not self.swaps:
            return []
        words = ", ".join(
            f"{w!r} as {a!r}" if a else f"{w!r} dropped" for w, a in self.swaps.items()
        )
        return [f"words the model never saw (WordNet lexicon): {words}; it reads {self.read!r}"]


@dataclass(frozen=True)
class PromptReader:
    """What a base model knows of words: its training captions and their lexicon aliases.

    ``read(text)`` rewrites unknown words (:func:`rewrite`) and warns when the prompt shares no
    word with the captions: a model trained on a few hundred captions cannot generalise to
    unseen words, and saying so beats silently returning noise. With no captions there is
    nothing to compare with: the prompt is read as typed, without warnings.
    """

    known_captions: tuple[str, ...] = ()
    aliases: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    _vocab: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "known_captions", tuple(self.known_captions))
        object.__setattr__(self, "aliases", MappingProxyType(dict(self.aliases)))
        object.__setattr__(self, "_vocab", frozenset(vocab_counts(self.known_captions)))

    def read(self, text: str) -> Prompt:
        """The :class:`Prompt` of ``text`` (a non-empty string)."""
        read, swaps = text, {}
        if self.aliases and self.known_captions:
            read, swaps = rewrite(text, self.aliases, self._vocab)
        warnings = ()
        if self.known_captions and not set(WordEncoder.words(read)) & self._vocab:
            warnings = (
                f"prompt {read!r} shares no word with the {len(self.known_captions)} training "
                "captions; expect an arbitrary shape (see `pointdiff prompts`)",
            )
        return Prompt(text, read, MappingProxyType(swaps), warnings)


def save_lexicon(
    out_dir: str | os.PathLike, aliases: dict[str, str], notice: str = WORDNET_NOTICE
) -> Path:
    """Write ``lexicon.json`` (``{"notice": ..., "aliases": {...}}``) into a checkpoint folder."""
    path = Path(out_dir) / LEXICON_NAME
    data = {"notice": notice, "aliases": dict(sorted(aliases.items()))}
    write_text_atomic(path, json.dumps(data, indent=0))
    return path


def load_lexicon(folder: str | os.PathLike) -> dict[str, str]:
    """The aliases of a checkpoint folder's ``lexicon.json`` (empty when there is none)."""
    path = Path(folder) / LEXICON_NAME
    if not path.is_file():
        return {}
    try:
        aliases = json.loads(path.read_text())["aliases"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LexiconError(
            f"{path} is not a lexicon file ({e}); re-export the checkpoint"
        ) from None
    if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
        raise LexiconError(f"{path}: 'aliases' must map words to words; re-export the checkpoint")
    return aliases
