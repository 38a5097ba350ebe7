"""The one check of text prompts, used by every text encoder and by the pipeline.

A prompt list is a non-empty ``list`` or ``tuple`` of strings, none of them blank. A single
string is refused rather than read as a list of characters, and a blank prompt is refused
because no encoder gives it a meaning the models were trained on (converters skip objects
without a caption, so no training caption is blank).
"""

from __future__ import annotations


class PromptError(ValueError):
    """Prompts that are not a non-empty list of non-blank strings; the message says which."""


def check_prompts(prompts) -> None:
    """Raise :class:`PromptError` unless ``prompts`` is a non-empty list (or tuple) of
    non-blank strings."""
    if isinstance(prompts, str) or not isinstance(prompts, list | tuple):
        raise PromptError(
            f"prompts must be a list of strings, got {type(prompts).__name__}"
            + (" (wrap a single prompt in a list)" if isinstance(prompts, str) else "")
        )
    if len(prompts) == 0:
        raise PromptError("the prompt list is empty; give at least one prompt")
    bad = [(i, p) for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
    if bad:
        raise PromptError(
            f"every prompt must be a non-empty string; not at (index, prompt): {bad[:3]!r}"
        )
