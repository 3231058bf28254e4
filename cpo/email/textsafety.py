"""What model text may hold: plain words only. One home for the rules validation and screening share.

The subject and body a model writes may carry no link or domain (cpo adds the only link, the unsubscribe
footer), no HTML, no template tag but cpo's greeting merge tag, no control character (a body keeps its
newlines), no invisible character (bidi controls, zero-width) and no word mixing Latin with another
script. `fold` is the form checks read: NFKC, invisible characters removed, and each look-alike
character replaced by its ASCII prototype from the Unicode confusables data (`confusable_homoglyphs`),
so "guаranteed" with a Cyrillic а is read as "guaranteed".
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import NamedTuple

from confusable_homoglyphs import categories, confusables  # type: ignore[import-untyped]

from cpo.core.models import GREETING_TAG

BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u2060\ufeff")
LINK = re.compile(
    r"\b(?:https?|ftp|mailto|javascript|data):/*|\bwww\.|"
    r"(?<![\w.-])(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z][a-z0-9-]*[a-z0-9](?![\w-])(?:/\S*)?",
    re.IGNORECASE,
)
HTML = re.compile(r"<\s*/?\s*[a-z!?][^<>\n]{0,200}>?", re.IGNORECASE)
TEMPLATE = re.compile(r"\{\{|\}\}|\{%|%\}|\{#|#\}|\*\|[^|\n]*\|\*|%%[\[=]|<%|\$\{")
# Scripts that mix with Latin within a word in ordinary writing (Japanese "Tシャツ"): not refused.
MIXES_WITH_LATIN = frozenset({"COMMON", "INHERITED", "LATIN", "HAN", "HIRAGANA", "KATAKANA", "HANGUL"})
WORD = re.compile(r"[^\W\d_]+")


class Smuggled(NamedTuple):
    """One thing model text may not hold: the issue code, the repair request, the text at fault."""

    code: str
    message: str
    excerpts: list[str]


def hidden(char: str) -> bool:
    """An invisible character: a bidi control, a zero-width character or any other format character."""
    return char in BIDI or char in ZERO_WIDTH or unicodedata.category(char) == "Cf"


def control(char: str, *, keep_newlines: bool) -> bool:
    """A control character (C0, C1, DEL, line/paragraph separator, private or unassigned), bar newlines."""
    if char == "\n" and keep_newlines:
        return False
    return unicodedata.category(char) in ("Cc", "Zl", "Zp", "Co", "Cs", "Cn")


@lru_cache(maxsize=4096)
def _prototype(char: str) -> str:
    """The ASCII character `char` is confusable with (same case when there is a choice), else `char`."""
    if char.isascii():
        return char
    found = []
    for glyph in confusables.confusables_data.get(char) or []:
        text = glyph["c"].replace("\u200e", "").replace("\u200f", "")
        if len(text) == 1 and text.isascii() and text.isprintable():
            found.append(text)
    if not found:
        return char
    same_case = [c for c in found if c.isupper() == char.isupper() and c.isalpha()]
    return str((same_case or found)[0])


def fold(text: str) -> str:
    """The form checks read: NFKC, invisible characters removed, look-alikes replaced by their ASCII prototype."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(_prototype(c) for c in text if not hidden(c))


def _names(chars: list[str]) -> str:
    return ", ".join(f"U+{ord(c):04X}" for c in dict.fromkeys(chars))


def _around(text: str, start: int, end: int) -> str:
    """The whitespace-delimited run holding text[start:end], so a repair can find its paragraph."""
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    while end < len(text) and not text[end].isspace():
        end += 1
    return text[start:end]


def smuggled(text: str, *, subject: bool) -> list[Smuggled]:
    """Everything `text` (a subject, or a body as sent) holds that model text may not; empty if none.

    cpo's greeting merge tag is the one template tag allowed (in a body); patterns are matched on the
    text and on its folded form, so a full-width or look-alike link is found too.
    """
    found: list[Smuggled] = []
    where = "subject" if subject else "body"
    plain = text.replace(GREETING_TAG, " ") if not subject else text
    folded = fold(plain)

    def matches(pattern: re.Pattern[str]) -> list[str]:
        raw = [_around(plain, m.start(), m.end()) for m in pattern.finditer(plain)]
        return list(dict.fromkeys(raw or [m.group(0) for m in pattern.finditer(folded)]))

    def add(code: str, message: str, excerpts: list[str]) -> None:
        found.append(Smuggled(code, f"the {where} has {message}", excerpts))

    if links := matches(LINK):
        add("link", f"a link or web address ({', '.join(links[:3])}); remove it and write no address at all "
            "(cpo adds the only link, the unsubscribe footer)", links)  # fmt: skip
    if tags := matches(HTML):
        add("html", f"HTML ({', '.join(tags[:3])}); write plain text only", tags)
    if tags := matches(TEMPLATE):
        add("template_tag", f"a template tag ({', '.join(tags[:3])}); write plain words (cpo adds the greeting "
            "and the only merge fields)", tags)  # fmt: skip
    if controls := [c for c in text if control(c, keep_newlines=not subject)]:
        rule = "a subject is one line with no" if subject else "the body may hold newlines but no other"
        add("control_character", f"control characters ({_names(controls)}); {rule} control characters",
            _runs(text, controls))  # fmt: skip
    if invisible := [c for c in text if hidden(c)]:
        add("hidden_character", f"invisible characters ({_names(invisible)}: direction controls or zero-width); "
            "write visible text only", _runs(text, invisible))  # fmt: skip
    if mixed := [w for w in WORD.findall(unicodedata.normalize("NFC", plain)) if _mixes_scripts(w)]:
        add("mixed_script", f"words mixing alphabets ({', '.join(mixed[:3])}); write each word in one alphabet", mixed)
    return found


def _mixes_scripts(word: str) -> bool:
    scripts = categories.unique_aliases(word)
    return "LATIN" in scripts and bool(scripts - MIXES_WITH_LATIN)


def _runs(text: str, chars: list[str]) -> list[str]:
    """The non-blank lines holding `chars`, as excerpts a repair can find its paragraph by."""
    bad = set(chars)
    return [line for line in text.split("\n") if bad & set(line) and line.strip()] or [text]
