"""Whom a number belongs to: the entities a sentence names, and which of them each claim is tied to.

"$25 for one tier" is not "$25 for another", so a claim is checked against the entity it is written for.
Which words are tiers and which are brand words that may stand before a name is the retailer's data (a
`Vocabulary` from the campaign file), never code: the same checker reads any retailer's content.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache

from cpo.core.models import Vocabulary
from cpo.email.grounding.numbers import Quantity
from cpo.email.grounding.text import singular, tokens

GENERIC_ENTITY = "member"
CLAUSE_GAP = re.compile(r"[,;:]\s|\s[-–—]\s|\s(?:and|or|but|so)\s|\s\(|\)\s")
CONTRAST_GAP = re.compile(
    r"\s(?:instead of|rather than|compared (?:with|to)|versus|vs\.?|than|unlike|whereas|while|not)\s", re.I
)

Gap = tuple[int, int, bool]  # start, end, is a contrast ("compared with", "instead of")


@lru_cache(maxsize=16)
def _tier_names(vocabulary: Vocabulary) -> Mapping[str, str]:
    """Each tier's key (the tier lower-cased) and the tier as written."""
    return {" ".join(tier.lower().split()): tier for tier in vocabulary.tiers}


@lru_cache(maxsize=16)
def _brand_words(vocabulary: Vocabulary) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(word.lower().split()) for word in vocabulary.brand_words)


def tier_keys(vocabulary: Vocabulary) -> frozenset[str]:
    """The keys of the tiers, which exclude each other: a fact for one tier does not hold for another."""
    return frozenset(_tier_names(vocabulary))


def entity_key(entity: str, vocabulary: Vocabulary) -> str:
    """An entity as one key however it is written, so facts and mentions of it meet.

    A tier is its own key, lower-cased ('VIP' -> 'vip'). Otherwise the brand words are stripped from the front
    in the vocabulary's order, each at most once while it leads: the same optional run a mention may have before
    a name. The first brand word is the brand itself and is always stripped, so the brand alone names no entity
    (key ''); a later one stays when it is the last word left, so it can still name a plan on its own. The last
    word is made singular. With brand words Acme, Club: 'Acme Club members' -> 'member', 'Club' -> 'club',
    'Acme' -> '', 'Acme Essentials' -> 'essential'.
    """
    words = entity.lower().split()
    tiers = _tier_names(vocabulary)
    if " ".join(words) in tiers:
        return " ".join(words)
    for i, brand in enumerate(_brand_words(vocabulary)):
        if words[: len(brand)] == list(brand) and (i == 0 or len(words) > len(brand)):
            words = words[len(brand) :]
    if not words:
        return ""
    if " ".join(words) in tiers:
        return " ".join(words)
    words[-1] = singular(words[-1])
    return " ".join(words)


def entity_name(key: str, vocabulary: Vocabulary) -> str:
    """An entity key in words for a message: a tier as the vocabulary writes it, else the plural ('members')."""
    tier = _tier_names(vocabulary).get(key)
    if tier:
        return tier
    return key + ("s" if not key.endswith("s") else "")


@lru_cache(maxsize=64)
def _mention_pattern(keys: tuple[str, ...], vocabulary: Vocabulary) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """One regex naming every entity, longest first, each optionally after the brand words in order. A tier is
    matched as written (case counts: a capitalised tier is a name, the same word in lower case is not), and a
    tier followed by 'members' is the tier."""
    ordered = tuple(sorted(keys, key=len, reverse=True))
    brands = "".join(rf"(?:{_words_pattern(brand)}\s+)?" for brand in _brand_words(vocabulary))
    tiers = _tier_names(vocabulary)
    alternatives: list[str] = []
    for key in ordered:
        if key in tiers:
            body = rf"(?-i:{_words_pattern(tiers[key].split())})(?:\s+(?:tier\s+)?members?)?"
        else:
            body = _words_pattern(key.split()) + ("(?:e?s)?" if not key.endswith("s") else "")
        alternatives.append(rf"(?P<e{len(alternatives)}>{brands}{body})")
    return re.compile(r"\b(?:" + "|".join(alternatives) + r")\b", re.I), ordered


def _words_pattern(words: Iterable[str]) -> str:
    return r"\s+".join(re.escape(w) for w in words)


def mentions_in(
    text: str, keys: tuple[str, ...], vocabulary: Vocabulary, words: frozenset[str] | None = None
) -> list[tuple[int, str]]:
    """(position, entity key) of every entity named in a sentence."""
    words = tokens(text) if words is None else words
    present = tuple(k for k in keys if not words.isdisjoint(_triggers(k)))
    if not present:
        return []
    pattern, ordered = _mention_pattern(present, vocabulary)
    out: list[tuple[int, str]] = []
    for m in pattern.finditer(text):
        group = next(name for name, value in m.groupdict().items() if value is not None)
        out.append((m.start(), ordered[int(group[1:])]))
    return out


@lru_cache(maxsize=256)
def _triggers(key: str) -> frozenset[str]:
    first = key.split()[0]
    return frozenset([first, first + "s", first + "es"])


def entities_for(text: str, claims: list[Quantity], mentions: list[tuple[int, str]]) -> list[tuple[str, ...]]:
    """The entities each claim of a sentence is tied to; "A and B get X and Y respectively" pairs them in order."""
    if not mentions:
        return [() for _ in claims]
    named = [key for _, key in mentions]
    if "respectively" in text.lower() and len(named) == len(claims) > 1:
        return [(key,) for key in named]
    gaps = [(m.start(), m.end(), False) for m in CLAUSE_GAP.finditer(text)]
    gaps += [(m.start(), m.end(), True) for m in CONTRAST_GAP.finditer(text)]
    return [_clause_entities(claim, mentions, gaps) for claim in claims]


def _clause_entities(claim: Quantity, mentions: list[tuple[int, str]], gaps: list[Gap]) -> tuple[str, ...]:
    """Entities named in the claim's clause; else the nearest named before it, unless a contrast lies between."""
    lo = max((end for start, end, _ in gaps if end <= claim.start), default=0)
    hi = min((start for start, _, _ in gaps if start >= claim.end), default=claim.end + 10_000)
    inside = tuple(dict.fromkeys(key for pos, key in mentions if lo <= pos < hi))
    if inside:
        return inside
    earlier = [(pos, key) for pos, key in mentions if pos < claim.start]
    if not earlier:
        return ()
    pos, key = earlier[-1]
    if any(contrast and pos < start < claim.start for start, _, contrast in gaps):
        return ()
    return (key,)


def nearest_entity(claim: Quantity, named: tuple[str, ...], mentions: list[tuple[int, str]]) -> str:
    """The one entity a fact in prose belongs to: the closest named in its clause, else the last one before."""
    if len(named) <= 1:
        return named[0] if named else ""
    positions = [(abs(pos - claim.start) + (0 if pos < claim.start else 1000), key) for pos, key in mentions]
    return min((d, key) for d, key in positions if key in named)[1]
