"""True for every recipient: an email names a tier only where what it says holds for every reader.

A segment's email goes to all its customers, and a segment can mix tiers. "<tier A> members: claim your
upgrade" sent to customers of tiers A and B calls half of them by a tier they do not hold, and "<tier B>
members get $25" read by a tier-A customer promises what they will not get. So, sentence by sentence:

- a sentence that speaks to the reader ("you", a greeting, thanks, "as a C member", "C members: ...") may
  name the readers' tiers only all together, and a tier no reader holds only as where they could go ("upgrade
  to C", "become a C member"), as the offer or a cited snippet names it: "You're C now", "Thanks for being
  a C member" and "Congratulations on reaching C" are refused;
- a sentence that only describes may name some readers' tiers, or a tier no reader holds, where the offer or
  a cited snippet names them ("A members get $25; B members get $50" lets each reader find their line).

Which words are tiers is the retailer's vocabulary. A tier counts as written as the vocabulary writes it, in
capitals, or possessive or plural ("C", "C's", "Cs"), and in any case where the words around it make it a
tier ("c members", "c-tier perks", "as a c member"). A capitalised tier that opens a sentence and is followed
by an ordinary word ("<C> standard service") is not read as one. An
email whose readers' tiers are unknown (a request built without an audience) is not checked here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

from cpo.core.models import Vocabulary
from cpo.email.grounding.text import sentences

AUDIENCE_CODE = "wrong_audience"
# Words after a tier that make it the tier, whatever its case ("gold members", "gold-tier perks").
TIER_NOUNS = r"(?:tier|tiers|member|members|membership|memberships|status|level|perks?|benefits?|rewards?|account)"
# A sentence speaks to the reader when it says "you", or opens with a greeting, thanks or a call.
SPEAKS = re.compile(
    r"\b(?:you|your|yours|you're|you'll|you've|yourself)\b"
    r"|^\W*(?:hello|hi|hey|dear|welcome|attention|calling\s+all|thanks|thank\s+you|congratulations|congrats)\b",
    re.I,
)


@lru_cache(maxsize=64)
def _patterns(tier: str) -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """(a mention of `tier`, an address of the reader as it, a move to it) for one tier as the vocabulary writes it."""
    words = tier.split()
    name = r"[\s-]+".join(re.escape(w) for w in words)
    upper = r"[\s-]+".join(re.escape(w.upper()) for w in words)
    mention = re.compile(
        rf"(?<![\w-])(?:(?-i:{name}|{upper})(?:s|'s|\u2019s)?(?![\w])"
        rf"|{name}(?:s|'s|\u2019s)?(?=[\s-]+{TIER_NOUNS}\b)"
        rf"|(?<=\bas\sa\s){name}\b|(?<=\bas\san\s){name}\b|(?<=\byour\s){name}\b)",
        re.I,
    )
    address = re.compile(
        rf"\b(?:as\s+(?:an?\s+|one\s+of\s+(?:our|the)\s+|our\s+)?|fellow\s+|valued\s+|dear\s+|your\s+){name}\b"
        rf"|^\W*{name}(?:[\s-]+tier)?[\s-]+members?\s*[:,!\u2013\u2014-]",
        re.I,
    )
    move = re.compile(
        rf"\b(?:(?:upgrade|upgrading|move|moving|step|stepping|switch|switching|go|going)\s+(?:up\s+)?to"
        rf"|(?:become|becoming|join|joining))\s+(?:the\s+|an?\s+|our\s+)?{name}\b",
        re.I,
    )
    return mention, address, move


def tiers_named(sentence: str, tiers: Iterable[str]) -> set[str]:
    """The tiers (as the vocabulary writes them) a sentence names, by the rules in the module docstring."""
    found = set()
    for tier in tiers:
        mention = _patterns(tier)[0]
        for match in mention.finditer(sentence):
            if _opens_with_a_word(sentence, match):
                continue
            found.add(tier)
            break
    return found


def _opens_with_a_word(sentence: str, match: re.Match[str]) -> bool:
    """A capitalised tier that opens a sentence, then an ordinary lower-case word ("<Tier> standard service")."""
    if sentence[: match.start()].strip(" \"'\u201c([") or match.group(0).isupper() or match.group(0)[-1:] == "s":
        return False
    after = re.match(r"[\s-]+([a-z][\w']*)", sentence[match.end() :])
    return after is not None and not re.fullmatch(rf"{TIER_NOUNS}|and|or|nor|to|through", after.group(1), re.I)


def _listed(tiers: Iterable[str]) -> str:
    names = sorted(tiers)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def audience_problems(
    text: str, readers: Sequence[str], backing: Iterable[str], vocabulary: Vocabulary
) -> list[tuple[str, str]]:
    """(sentence as written, message) for each sentence of `text` ("subject\\n\\nbody") not true for every reader.

    `readers` are the tiers of everyone the email reaches (empty: unknown, nothing is checked); `backing` the
    texts that may name other tiers (the offer and the cited snippets).
    """
    by_key = {t.casefold(): t for t in vocabulary.tiers}
    audience = {by_key[r.casefold()] for r in readers if r.casefold() in by_key}
    if not audience:
        return []
    described = set()
    for source in backing:
        for sentence, _ in sentences(source):
            described |= tiers_named(sentence, vocabulary.tiers)
    who = f"this email's readers are {_listed(audience)} members"
    problems: list[tuple[str, str]] = []
    for sentence, written in sentences(text):
        named = tiers_named(sentence, vocabulary.tiers)
        if not named:
            continue
        quoted = f'"{written.strip()}"'
        inside, outside = named & audience, named - audience
        speaks = bool(SPEAKS.search(sentence)) or any(_patterns(t)[1].search(sentence) for t in named)
        why = ""
        if inside and inside != audience and (speaks or not inside <= described):
            why = f"names {_listed(inside)} as if it were every reader's tier"
        for tier in sorted(outside):
            if why:
                break
            if speaks and not _patterns(tier)[2].search(sentence):
                why = f"speaks to the reader as {tier}"
            elif tier not in described:
                why = f"names {tier}, which neither the offer nor a cited snippet mentions"
        if why:
            problems.append((written, f"{quoted} {why}; {who}: name no tier, or only what holds for every one of them"))
    return problems
