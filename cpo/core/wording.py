"""When two sentences say the same thing: one measure for the rubric's check and for the writers that must
pass it (the offline drafter, the template control)."""

from __future__ import annotations

import re

LONG_WORD = re.compile(r"[a-z0-9$%.]*[a-z0-9]{4,}[a-z0-9%]*")
NEAR_REPEAT = 0.6  # share of longer words two sentences have in common (Jaccard) to be one thing said twice


def long_words(sentence: str) -> set[str]:
    return set(LONG_WORD.findall(sentence.casefold()))


def overlap(a: set[str], b: set[str]) -> float:
    """Jaccard share of two sentences' longer words (0 when either has none)."""
    return len(a & b) / len(a | b) if a and b else 0.0


def says_again(sentence: str, earlier: str) -> bool:
    """Does `sentence` repeat `earlier`, word for word or nearly ("compared with" for "compared to")?"""
    return overlap(long_words(sentence), long_words(earlier)) >= NEAR_REPEAT
