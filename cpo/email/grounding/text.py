"""Sentences and words of an email or a snippet, read the same way for both so their claims line up.

Merge tags and list markers are blanked out of the text that is read, but every sentence is also kept as
written, so a problem can quote what the reader sees.
"""

from __future__ import annotations

import re

LIQUID = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.DOTALL)
LIST_MARKER = re.compile(r"^\s*(?:\d{1,2}[.)]|[-*•])\s+")
SENTENCE_GAP = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9$])")
ABBREVIATION = re.compile(
    r"(?:\b[ap]\.m\.|\be\.g\.|\bi\.e\.|\bvs\.|\betc\.|\bNo\.|\bMr\.|\bMs\.|\bDr\.|\bU\.S\.)$", re.I
)
WORD_TOKEN = re.compile(r"[a-z]+")
# Words that end the phrase a number or "free" belongs to.
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "than",
        "to",
        "from",
        "for",
        "of",
        "with",
        "by",
        "on",
        "in",
        "at",
        "per",
        "each",
        "every",
        "after",
        "before",
        "plus",
        "instead",
        "compared",
        "versus",
        "vs",
        "is",
        "are",
        "was",
        "be",
    ]
)


def sentences(text: str) -> list[tuple[str, str]]:
    """(sentence to read, sentence as written) for each sentence of each line. The one to read has merge tags
    blanked out and no list marker; abbreviations such as 'a.m.' do not end a sentence."""
    masked = LIQUID.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    out: list[tuple[str, str]] = []
    for line, written in zip(masked.split("\n"), text.split("\n"), strict=True):
        marker = LIST_MARKER.match(line)
        spans: list[tuple[int, int]] = []
        last = marker.end() if marker else 0
        for gap in SENTENCE_GAP.finditer(line, last):
            if ABBREVIATION.search(line[last : gap.start()]):
                continue
            spans.append((last, gap.start()))
            last = gap.end()
        spans.append((last, len(line)))
        for start, end in spans:
            piece = line[start:end]
            if piece.strip():
                start += len(piece) - len(piece.lstrip())
                end -= len(piece) - len(piece.rstrip())
                out.append((line[start:end], written[start:end]))
    return out


def tokens(text: str) -> frozenset[str]:
    """The lower-case words of a text: a cheap test of which patterns can match at all."""
    return frozenset(WORD_TOKEN.findall(text.lower()))


def singular(word: str) -> str:
    """'days' -> 'day', 'members' -> 'member'; 'class' and 'bonus' stay as they are."""
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us")) else word
