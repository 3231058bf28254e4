"""Fact-level grounding: each number and strong claim in an email must match a fact of a cited snippet or the offer.

A number matches a fact when the value, unit ($, %, days ...), period (a month, a year ...) and entity
(Gold, Platinum, members ...) agree. If a snippet has `facts:` in its front matter, those facts are used;
otherwise facts are read from the snippet's prose with the extractor that reads the email. List numbering,
ordinals and Liquid merge tags are ignored. Number words ("fifty percent", "three months", "twice",
"a dozen", "half") are turned into numbers and checked. Pure Python and deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from functools import lru_cache

from cpo.models import Fact, Snippet

__all__ = ["GroundingProblem", "check_grounding", "extract_facts"]


@dataclass(frozen=True)
class GroundingProblem:
    """One claim in an email that no cited snippet or the offer backs as written."""

    code: str  # "ungrounded_number" | "wrong_period" | "wrong_unit" | "wrong_entity" | "unbacked_claim"
    claim: str  # the phrase in the email, e.g. "$99 per month"
    sentence: str  # the email sentence it came from
    message: str  # one line naming what the cited snippet says, for a person and for a repair prompt


@dataclass(frozen=True)
class _Quantity:
    """A number found in text, or a declared fact, in canonical form."""

    value: str  # "99", "9.99", "24/7", "8:30", or "date:3:31:2027" (empty parts allowed)
    unit: str = ""  # "USD", "percent", "times", "am", "pm", "date", "day", "month", "point", ... or ""
    period: str = ""  # "day" | "week" | "month" | "year" | ""
    entity: str = ""  # entity key (see _entity_key), facts only
    entity_name: str = ""  # the entity as written: "Northwind Essentials"
    display: str = ""  # the number as written, without the period: "$99", "2-day", "fifty percent"
    phrase: str = ""  # the claim as written, with the period: "$99 per month"
    start: int = 0
    end: int = 0
    mentions: tuple[str, ...] = ()  # entity keys named near a claim in the email


@dataclass(frozen=True)
class _Source:
    label: str  # "the cited snippet plus-pricing" | "the offer" | "plus-delivery (not cited)"
    facts: tuple[_Quantity, ...]
    text: str = field(repr=False)


# ---- text preparation -------------------------------------------------------------------------------------------

LIQUID = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.DOTALL)
LIST_MARKER = re.compile(r"^\s*(?:\d{1,2}[.)]|[-*•])\s+")
SENTENCE_GAP = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9$])")
ABBREVIATION = re.compile(
    r"(?:\b[ap]\.m\.|\be\.g\.|\bi\.e\.|\bvs\.|\betc\.|\bNo\.|\bMr\.|\bMs\.|\bDr\.|\bU\.S\.)$", re.I
)


def _sentences(text: str) -> list[tuple[str, str]]:
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


# ---- numbers ------------------------------------------------------------------------------------------------------

MONTHS = {
    name: i
    for i, names in enumerate(
        [
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sept", "sep"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ],
        start=1,
    )
    for name in names
}
_MONTH = "(?:" + "|".join(sorted((m.capitalize() for m in MONTHS), key=len, reverse=True)) + r")\b\.?"
DATE = re.compile(
    rf"\b(?P<m>{_MONTH})\s+(?P<d>\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s+(?P<y>\d{{4}})\b)?"
    rf"|\b(?P<d2>\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?(?P<m2>{_MONTH})(?:,?\s+(?P<y2>\d{{4}})\b)?"
    rf"|\b(?P<m3>{_MONTH}),?\s+(?P<y3>\d{{4}})\b"
)
CLOCK = re.compile(r"(?<![\w.$])(?P<h>\d{1,2})(?::(?P<min>\d{2}))?\s?(?P<ap>[ap])\.?\s?m\b\.?", re.I)
ROUND_THE_CLOCK = re.compile(r"(?<![\w/])24\s?/\s?7\b")
DIGITS = re.compile(r"(?<![\w.,$])(?P<cur>\$\s?)?(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(?![.,]\d)")
SMALL = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_WORD = "(?:" + "|".join([*sorted(SMALL + TENS, key=len, reverse=True), "hundred", "thousand"]) + ")"
NUMBER_WORDS = re.compile(rf"\b{_WORD}(?:(?:\s+and\s+|[\s-]+){_WORD})*\b", re.I)
SPECIAL_WORDS = re.compile(r"\b(?P<dozen>(?:a\s+)?dozen)\b|\b(?P<twice>twice)\b|\b(?P<half>half)\b", re.I)

DURATIONS = ("day", "week", "month", "year", "hour", "minute", "second")
UNIT_WORDS = {
    **{d: d for d in DURATIONS},
    **{d + "s": d for d in DURATIONS},
    "point": "point",
    "points": "point",
    "percent": "percent",
    "dollar": "USD",
    "dollars": "USD",
    "usd": "USD",
    "times": "times",
}
UNIT_ALIASES = {"$": "USD", "%": "percent", "per cent": "percent", "x": "times", "a.m.": "am", "p.m.": "pm"}
UNIT_NAMES = {
    "USD": "a dollar amount",
    "percent": "a percentage",
    "times": "a multiple",
    "am": "a.m.",
    "pm": "p.m.",
    "date": "a date",
}
HARD_UNITS = {"USD", "percent", "am", "pm", "date"}
SUFFIX = re.compile(
    r"(?P<pct>\s?%|\s?per\s?cent\b|\s?percent\b)|(?P<times>[xX]\b)|(?P<ord>(?:st|nd|rd|th)\b)"
    r"|-(?P<dur>(?:day|week|month|year|hour|minute|second)s?)\b|\s?(?P<usd>usd|dollars?)\b",
    re.I,
)
UNIT_AHEAD = re.compile(r"\s+(?:(?P<w1>[a-z]+)\s+)?(?P<w2>[a-z]+)\b", re.I)
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
PERIOD_WORDS = {
    "day": "day",
    "daily": "day",
    "week": "week",
    "weekly": "week",
    "wk": "week",
    "month": "month",
    "monthly": "month",
    "mo": "month",
    "year": "year",
    "yearly": "year",
    "annual": "year",
    "annually": "year",
    "annum": "year",
    "yr": "year",
}
_BREAK = "and|or|but|than|to|from|for|of|with|by|on|after|before|plus|instead|compared|versus|vs"
_SKIP = rf"(?:\s+(?!(?:{_BREAK})\b)[a-z]+){{0,2}}?"
PERIOD_AFTER = re.compile(
    rf"{_SKIP}(?:\s*/\s*|\s+(?:a|an|per|each|every)\s+)(?P<p>month|mo|year|yr|annum|week|wk|day)\b\.?"
    rf"|{_SKIP}\s+(?P<adj>monthly|annually|annual|yearly|weekly|daily)\b",
    re.I,
)
PERIOD_BEFORE = re.compile(
    r"\b(?P<adj>monthly|annual|yearly|weekly|daily)\s+(?:[a-z]+\s+){0,2}?"
    r"(?:(?:of|is|at|for|costs?)\s+(?:just\s+|only\s+)?|[a-z]+:\s*)$",
    re.I,
)


def _canonical_number(text: str) -> str:
    try:
        number = Decimal(text.replace(",", ""))
    except InvalidOperation:
        return text
    return format(number.normalize(), "f")


def _words_value(text: str) -> int:
    total, current = 0, 0
    for word in re.split(r"[\s-]+", text.lower()):
        if word in SMALL:
            current += SMALL.index(word)
        elif word in TENS:
            current += 20 + 10 * TENS.index(word)
        elif word == "hundred":
            current = max(current, 1) * 100
        elif word == "thousand":
            total += max(current, 1) * 1000
            current = 0
    return total + current


def _canonical_unit(unit: str) -> str:
    """'$' / 'dollars' -> 'USD', '%' -> 'percent', 'days' -> 'day', 'metro areas' -> 'metro area'."""
    key = unit.strip().lower()
    if not key:
        return ""
    if key in UNIT_ALIASES:
        return UNIT_ALIASES[key]
    if key in UNIT_WORDS:
        return UNIT_WORDS[key]
    words = key.split()
    words[-1] = _singular(words[-1])
    return " ".join(words)


def _canonical_period(period: str) -> str:
    key = period.strip().lower().removeprefix("per ").removeprefix("a ").removeprefix("/")
    return PERIOD_WORDS.get(key, PERIOD_WORDS.get(key.rstrip("s"), key))


def _singular(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us")) else word


def _unit_after(text: str, pos: int) -> tuple[str, int, bool]:
    """The unit right after a number at `pos`: (unit, end, is_ordinal)."""
    suffix = SUFFIX.match(text, pos)
    if suffix:
        if suffix.group("ord"):
            return "", suffix.end(), True
        if suffix.group("pct"):
            return "percent", suffix.end(), False
        if suffix.group("times"):
            return "times", suffix.end(), False
        if suffix.group("usd"):
            return "USD", suffix.end(), False
        return UNIT_WORDS[suffix.group("dur").lower()], suffix.end(), False
    ahead = UNIT_AHEAD.match(text, pos)
    if ahead:
        w1, w2 = (ahead.group("w1") or "").lower(), ahead.group("w2").lower()
        if w1 and w1 in UNIT_WORDS:
            return UNIT_WORDS[w1], ahead.start("w1") + len(w1), False
        if not w1 and w2 in UNIT_WORDS:
            return UNIT_WORDS[w2], ahead.end(), False
        if w1 and w1 not in STOPWORDS and w2 in UNIT_WORDS:
            return UNIT_WORDS[w2], ahead.end(), False
    return "", pos, False


def _period_around(text: str, start: int, end: int) -> tuple[str, int]:
    """The period a number is per, written after it ('a month', '/yr', 'annually') or before ('monthly fee of')."""
    after = PERIOD_AFTER.match(text, end)
    if after:
        return _canonical_period(after.group("p") or after.group("adj")), after.end()
    before = PERIOD_BEFORE.search(text[max(0, start - 60) : start])
    if before:
        return _canonical_period(before.group("adj")), end
    return "", end


WORD_TOKEN = re.compile(r"[a-z]+")
ANY_DIGIT = re.compile(r"\d")
NUMBER_WORD_SET = frozenset([*SMALL, *TENS, "hundred", "thousand"])
SPECIAL_WORD_SET = frozenset(["dozen", "twice", "half"])


def _tokens(text: str) -> frozenset[str]:
    """The lower-case words of a text: a cheap test of which patterns can match at all."""
    return frozenset(WORD_TOKEN.findall(text.lower()))


def _quantities(text: str, tokens: frozenset[str] | None = None) -> list[_Quantity]:
    """Every number claim in one sentence, left to right; ordinals and small bare number words are skipped."""
    tokens = _tokens(text) if tokens is None else tokens
    digits = ANY_DIGIT.search(text) is not None
    found: list[_Quantity] = []
    taken: list[tuple[int, int]] = []

    def free(start: int, end: int) -> bool:
        return all(end <= s or start >= e for s, e in taken)

    def add(value: str, unit: str, start: int, unit_end: int, *, period_ok: bool = True) -> None:
        period, end = _period_around(text, start, unit_end) if period_ok else ("", unit_end)
        taken.append((start, end))
        found.append(
            _Quantity(
                value=value,
                unit=unit,
                period=period,
                display=text[start:unit_end].strip(),
                phrase=text[start:end].strip().rstrip("."),
                start=start,
                end=end,
            )
        )

    for m in DATE.finditer(text) if digits and not tokens.isdisjoint(MONTHS) else ():
        month = m.group("m") or m.group("m2") or m.group("m3")
        day = m.group("d") or m.group("d2") or ""
        year = m.group("y") or m.group("y2") or m.group("y3") or ""
        number = MONTHS[month.rstrip(".").lower()]
        add(f"date:{number}:{int(day) if day else ''}:{year}", "date", m.start(), m.end(), period_ok=False)
    for m in CLOCK.finditer(text) if digits else ():
        if free(m.start(), m.end()):
            minutes = m.group("min") or "00"
            value = m.group("h") if minutes == "00" else f"{m.group('h')}:{minutes}"
            add(value, m.group("ap").lower() + "m", m.start(), m.end(), period_ok=False)
    for m in ROUND_THE_CLOCK.finditer(text) if digits else ():
        if free(m.start(), m.end()):
            add("24/7", "", m.start(), m.end(), period_ok=False)
    for m in DIGITS.finditer(text) if digits else ():
        start = m.start()
        if not free(start, m.end()):
            continue
        before = text[max(0, start - 4) : start].lower()
        if before.endswith("-") and not before.endswith("net-") and before[-2:-1].isalpha():
            continue  # part of a name such as "COVID-19"
        if m.end() < len(text) and text[m.end()].isalpha() and not SUFFIX.match(text, m.end()):
            continue  # a code such as "3D" or "4K"
        unit, unit_end, ordinal = _unit_after(text, m.end())
        if ordinal:
            taken.append((start, unit_end))
            continue
        if m.group("cur"):
            unit = "USD"
        elif before.endswith("net-"):
            unit = "day"
        add(_canonical_number(m.group("num")), unit, start, unit_end)
    for m in NUMBER_WORDS.finditer(text) if not tokens.isdisjoint(NUMBER_WORD_SET) else ():
        if not free(m.start(), m.end()):
            continue
        value = _words_value(m.group(0))
        unit, unit_end, _ = _unit_after(text, m.end())
        if unit or value >= 10:
            add(str(value), unit, m.start(), unit_end if unit else m.end())
    for m in SPECIAL_WORDS.finditer(text) if not tokens.isdisjoint(SPECIAL_WORD_SET) else ():
        if not free(m.start(), m.end()):
            continue
        if m.group("dozen"):
            unit, unit_end, _ = _unit_after(text, m.end())
            add("12", unit, m.start(), unit_end if unit else m.end())
        elif m.group("twice"):
            add("2", "times", m.start(), m.end())
        else:
            add("50", "percent", m.start(), m.end())
    return sorted(found, key=lambda q: q.start)


def _same_value(a: str, b: str) -> bool:
    if a == b:
        return True
    if a.startswith("date:") and b.startswith("date:"):
        _, am, ad, ay = a.split(":")
        _, bm, bd, by = b.split(":")
        return am == bm and (not ad or not bd or ad == bd) and (not ay or not by or ay == by)
    return False


def _unit_fits(claim: str, fact: str) -> bool:
    if not claim or not fact or claim == fact:
        return True
    return "times" in (claim, fact) and not ({claim, fact} & HARD_UNITS)


# ---- entities -----------------------------------------------------------------------------------------------------

TIERS = ("Bronze", "Silver", "Gold", "Platinum")
TIER_KEYS = frozenset(t.lower() for t in TIERS)
GENERIC_ENTITY = "member"
CLAUSE_GAP = re.compile(r"[,;:]\s|\s[-–—]\s|\s(?:and|or|but|so)\s|\s\(|\)\s")
CONTRAST_GAP = re.compile(
    r"\s(?:instead of|rather than|compared (?:with|to)|versus|vs\.?|than|unlike|whereas|while|not)\s", re.I
)


def _entity_key(entity: str) -> str:
    """'Northwind Plus members' -> 'member', 'Gold' -> 'gold', 'Northwind Essentials' -> 'essential'."""
    words = entity.lower().split()
    if words[:1] == ["northwind"]:
        words = words[1:]
    if words[:1] == ["plus"] and len(words) > 1:
        words = words[1:]
    if not words:
        return ""
    words[-1] = _singular(words[-1])
    return " ".join(words)


@lru_cache(maxsize=64)
def _mention_pattern(keys: tuple[str, ...]) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """One regex naming every entity, longest first; a tier followed by 'members' is the tier."""
    ordered = tuple(sorted(keys, key=len, reverse=True))
    alternatives: list[str] = []
    for key in ordered:
        words = [re.escape(w) for w in key.split()]
        if key.capitalize() in TIERS:
            body = rf"(?-i:{key.capitalize()})(?:\s+(?:tier\s+)?members?)?"
        else:
            body = r"\s+".join(words) + ("(?:e?s)?" if not key.endswith("s") else "")
        alternatives.append(rf"(?P<e{len(alternatives)}>(?:northwind\s+)?(?:plus\s+)?{body})")
    return re.compile(r"\b(?:" + "|".join(alternatives) + r")\b", re.I), ordered


def _mentions(text: str, keys: tuple[str, ...], tokens: frozenset[str] | None = None) -> list[tuple[int, str]]:
    """(position, entity key) of every entity named in a sentence."""
    tokens = _tokens(text) if tokens is None else tokens
    present = tuple(k for k in keys if not tokens.isdisjoint(_triggers(k)))
    if not present:
        return []
    pattern, ordered = _mention_pattern(present)
    out: list[tuple[int, str]] = []
    for m in pattern.finditer(text):
        group = next(name for name, value in m.groupdict().items() if value is not None)
        out.append((m.start(), ordered[int(group[1:])]))
    return out


@lru_cache(maxsize=256)
def _triggers(key: str) -> frozenset[str]:
    first = key.split()[0]
    return frozenset([first, first + "s", first + "es"])


Gap = tuple[int, int, bool]  # start, end, is a contrast ("compared with", "instead of")


def _entities_for(text: str, claims: list[_Quantity], mentions: list[tuple[int, str]]) -> list[tuple[str, ...]]:
    """The entities each claim of a sentence is tied to; "A and B get X and Y respectively" pairs them in order."""
    if not mentions:
        return [() for _ in claims]
    named = [key for _, key in mentions]
    if "respectively" in text.lower() and len(named) == len(claims) > 1:
        return [(key,) for key in named]
    gaps = [(m.start(), m.end(), False) for m in CLAUSE_GAP.finditer(text)]
    gaps += [(m.start(), m.end(), True) for m in CONTRAST_GAP.finditer(text)]
    return [_clause_entities(claim, mentions, gaps) for claim in claims]


def _clause_entities(claim: _Quantity, mentions: list[tuple[int, str]], gaps: list[Gap]) -> tuple[str, ...]:
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


def _nearest_entity(claim: _Quantity, named: tuple[str, ...], mentions: list[tuple[int, str]]) -> str:
    """The one entity a fact in prose belongs to: the closest named in its clause, else the last one before."""
    if len(named) <= 1:
        return named[0] if named else ""
    positions = [(abs(pos - claim.start) + (0 if pos < claim.start else 1000), key) for pos, key in mentions]
    return min((d, key) for d, key in positions if key in named)[1]


# ---- facts --------------------------------------------------------------------------------------------------------


def _with_years(facts: Iterable[_Quantity]) -> tuple[_Quantity, ...]:
    """A date fact also grounds its year written alone ('in 2027')."""
    out: list[_Quantity] = []
    for fact in facts:
        out.append(fact)
        if fact.unit == "date" and fact.value.rsplit(":", 1)[1]:
            year = fact.value.rsplit(":", 1)[1]
            out.append(replace(fact, value=year, unit="", display=year))
    return tuple(out)


def _declared(fact: Fact) -> _Quantity:
    parsed = _quantities(fact.value)
    base = parsed[0] if parsed else _Quantity(value=fact.value.strip().lower(), display=fact.value.strip())
    unit = _canonical_unit(fact.unit) or base.unit
    if unit == "date" and base.unit != "date":
        unit = base.unit
    display = base.display or fact.value.strip()
    if unit and unit not in HARD_UNITS | {"times"} and unit not in display.lower():
        display = f"{display} {unit if base.value == '1' else unit + 's'}"
    return replace(
        base,
        unit=unit,
        period=_canonical_period(fact.period) or base.period,
        entity=_entity_key(fact.entity) if fact.entity else "",
        entity_name=fact.entity.strip(),
        display=display,
    )


@lru_cache(maxsize=512)
def _facts_of(text: str, declared: tuple[Fact, ...], keys: tuple[str, ...]) -> tuple[_Quantity, ...]:
    if declared:
        return _with_years(_declared(f) for f in declared)
    facts: list[_Quantity] = []
    for sentence, _ in _sentences(text):
        for q, named, mentions in _quantities_in(sentence, keys):
            key = _nearest_entity(q, named, mentions)
            facts.append(replace(q, entity=key, entity_name=_entity_name(key) if key else ""))
    return _with_years(facts)


def _quantities_in(
    sentence: str, keys: tuple[str, ...]
) -> list[tuple[_Quantity, tuple[str, ...], list[tuple[int, str]]]]:
    """Each quantity of a sentence with the entities named for it and all the sentence's entity mentions:
    read the same way from snippets and from emails."""
    tokens = _tokens(sentence)
    quantities = _quantities(sentence, tokens)
    mentions = _mentions(sentence, keys, tokens) if quantities else []
    named = _entities_for(sentence, quantities, mentions)
    return [(q, n, mentions) for q, n in zip(quantities, named, strict=True)]


def extract_facts(snippet: Snippet, entities: Sequence[str] = ()) -> list[str]:
    """The facts a snippet states, described in words (for reviewing front matter and prose parsing)."""
    keys = _vocabulary([snippet], entities)
    return [_describe(f) for f in _facts_of(snippet.text, snippet.facts, keys)]


def _vocabulary(snippets: Iterable[Snippet], extra: Iterable[str] = ()) -> tuple[str, ...]:
    keys = {t.lower() for t in TIERS} | {GENERIC_ENTITY}
    keys |= {_entity_key(f.entity) for s in snippets for f in s.facts if f.entity}
    keys |= {_entity_key(e) for e in extra if e.strip()}
    return tuple(sorted(k for k in keys if k))


def _describe(fact: _Quantity, *, entity: bool = True) -> str:
    """A fact in words: '$99 a year', '$25 for Gold', '60 days for members'."""
    text = fact.display + (f" a {fact.period}" if fact.period else "")
    if entity and fact.entity:
        text += f" for {fact.entity_name or _entity_name(fact.entity)}"
    return text


def _entity_name(key: str) -> str:
    return key.capitalize() if key.capitalize() in TIERS else key + ("s" if not key.endswith("s") else "")


# ---- strong claims ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ClaimRule:
    name: str
    claim: re.Pattern[str]
    backing: re.Pattern[str]
    triggers: tuple[str, ...]  # lower-case substrings without which `claim` cannot match


def _rule(name: str, claim: str, backing: str, *triggers: str) -> _ClaimRule:
    return _ClaimRule(name, re.compile(claim, re.I), re.compile(backing, re.I), triggers)


CLAIM_RULES = (
    _rule("guaranteed", r"\bguarantee(?:d|s)?\b", r"\bguarantee", "guarantee"),
    _rule(
        "lifetime",
        r"(?<!once in a )(?<!once-in-a-)\blifetime\b|\bfor life\b",
        r"\blifetime\b|\bfor life\b",
        "lifetime",
        "for life",
    ),
    _rule(
        "unlimited",
        r"\bunlimited\b|\bno limits?\b|\bwithout (?:any )?limits?\b",
        r"\bunlimited\b|\bno limit",
        "limit",
    ),
    _rule(
        "risk-free",
        r"\brisk[- ]free\b|\bno[- ]risk\b|\bzero risk\b|\bwithout (?:any )?risk\b",
        r"\brisk[- ]free\b|\bno[- ]risk\b|\bmoney[- ]back\b",
        "risk",
    ),
    _rule(
        "forever",
        r"\bforever\b|\bpermanent(?:ly)?\b",
        r"\bforever\b|\bpermanent|\bfor life\b",
        "forever",
        "permanent",
    ),
    _rule(
        "never expires",
        r"\bnever expires?\b|\bdo(?:es)? not expire\b|\bdon't expire\b|\bno expiration\b",
        r"\bnever expire|\bnot expire\b|\bno expiration\b",
        "expir",
    ),
    _rule(
        "no fees",
        r"\bno (?:hidden |extra |additional )?fees?\b|\bfee-free\b|\bwithout (?:any )?fees?\b",
        r"\bno (?:\w+ )?fees?\b|\bincludes? all fees\b",
        "fee",
    ),
    _rule("cancel anytime", r"\bcancel (?:at )?any ?time\b", r"\bcancel (?:at )?any ?time\b", "cancel"),
    _rule("no minimum", r"\bno minimum\b|\bwithout (?:a |any )?minimum\b", r"\bno minimum\b", "minimum"),
    _rule(
        "lowest price",
        r"\b(?:lowest|best|cheapest) (?:prices?|rates?|deals?)\b|\bprice match",
        r"\b(?:lowest|best|cheapest) (?:prices?|rates?|deals?)\b|\bprice match",
        "lowest",
        "best",
        "cheapest",
        "price match",
    ),
    _rule(
        "no commitment",
        r"\bno (?:commitment|obligation)s?\b|\bno strings attached\b",
        r"\bno (?:commitment|obligation)s?\b|\bno strings attached\b",
        "commitment",
        "obligation",
        "strings",
    ),
)
FREE_TRIGGERS = ("free", "complimentary", "cost", "charge")
FREE = re.compile(r"\b(?:free|complimentary)\b|\bat no (?:extra |additional )?(?:cost|charge)\b|\bno charge\b", re.I)
FREE_COMPOUND = re.compile(r"(?:\bfeel\s+|-)$", re.I)
FREE_AS_ALLOWED = re.compile(r"\b(?:are|is|be|you're|we're|they're|were|am)\s+$", re.I)
FREE_TO = re.compile(r"\s+to\s+(?!join\b|try\b|members?\b|you\b)", re.I)
FREE_TOPICS = {
    "delivery": "deliver delivery deliveries shipping ship ships shipped label labels return returns",
    "membership": "trial month months membership plan plans year years week weeks subscription upgrade join",
    "goods": "gift gifts credit product products item items sample samples tool tools",
}
TOPIC_OF = {word: topic for topic, words in FREE_TOPICS.items() for word in words.split()}
WORDS_AFTER = re.compile(r"(?:\s+[\w$%-]+){0,3}")
WORDS_BEFORE = re.compile(r"(?:[\w$%-]+\s+){0,2}$")


def _free_uses(text: str) -> list[tuple[int, int, str, str]]:
    """Each 'free' that claims something costs nothing: (start, end, topic or '', phrase)."""
    uses: list[tuple[int, int, str, str]] = []
    for m in FREE.finditer(text):
        if m.group(0).lower() == "free":
            before = text[: m.start()]
            if FREE_COMPOUND.search(before) or (FREE_AS_ALLOWED.search(before) and FREE_TO.match(text, m.end())):
                continue  # "feel free", "hassle-free", "you are free to cancel"
        after_match = WORDS_AFTER.match(text, m.end())
        after_words = after_match.group(0).split() if after_match else []
        before_match = WORDS_BEFORE.search(text[: m.start()])
        before_words = before_match.group(0).split() if before_match else []
        topic = next((TOPIC_OF[w.lower()] for w in after_words if w.lower() in TOPIC_OF), "")
        topic = topic or next((TOPIC_OF[w.lower()] for w in reversed(before_words) if w.lower() in TOPIC_OF), "")
        cut = next((i for i, w in enumerate(after_words) if w.lower() in STOPWORDS), len(after_words))
        shown = after_words[:cut]
        if shown:
            phrase = text[m.start() : m.end()] + " " + " ".join(shown)
        elif before_words:
            phrase = before_words[-1] + " " + text[m.start() : m.end()]
        else:
            phrase = text[m.start() : m.end()]
        uses.append((m.start(), m.end(), topic, phrase.strip(".,;:!?")))
    return uses


@lru_cache(maxsize=256)
def _free_topics(text: str) -> frozenset[str]:
    """Topics a source says are free; '' when it says free of something unclassified."""
    return frozenset(topic for sentence, _ in _sentences(text) for _, _, topic, _ in _free_uses(sentence))


# ---- the check ----------------------------------------------------------------------------------------------------


def check_grounding(
    text: str, cited: Sequence[Snippet], offer: str = "", *, others: Sequence[Snippet] = ()
) -> list[GroundingProblem]:
    """Problems with the numbers and strong claims of `text` ("subject\\n\\nbody") against the cited snippets and
    the offer. `others` are snippets the email could have cited; they are only named in hints."""
    cited_ids = {s.id for s in cited}
    uncited = [s for s in others if s.id not in cited_ids]
    keys = _vocabulary([*cited, *uncited])
    sources = [_Source(f"the cited snippet {s.id}", _facts_of(s.text, s.facts, keys), s.text) for s in cited]
    if offer.strip():
        sources.append(_Source("the offer", _facts_of(offer, (), keys), offer))
    hints = [_Source(f"{s.id} (not cited)", _facts_of(s.text, s.facts, keys), s.text) for s in uncited]

    problems: list[GroundingProblem] = []
    for sentence, written in _sentences(text):
        for q, named, _ in _quantities_in(sentence, keys):
            problem = _check_number(replace(q, mentions=named), written, sources, hints)
            if problem and problem not in problems:
                problems.append(problem)
        for problem in _check_claims(sentence, written, sources, hints):
            if problem not in problems:
                problems.append(problem)
    return problems


def _check_number(
    claim: _Quantity, sentence: str, sources: list[_Source], hints: list[_Source]
) -> GroundingProblem | None:
    def problem(code: str, message: str) -> GroundingProblem:
        return GroundingProblem(code, claim.phrase, sentence, f'"{claim.phrase}": {message}')

    same = [(s, f) for s in sources for f in s.facts if _same_value(claim.value, f.value)]
    units = [(s, f) for s, f in same if _unit_fits(claim.unit, f.unit)]
    if not units:
        elsewhere = [
            (s, f)
            for s in hints
            for f in s.facts
            if _same_value(claim.value, f.value) and _unit_fits(claim.unit, f.unit)
        ]
        if elsewhere or not same:
            return problem("ungrounded_number", _not_found(elsewhere))
        s, f = same[0]
        return problem("wrong_unit", f"{s.label} gives {_describe(f)}, not {_unit_name(claim.unit)}")
    periods = [(s, f) for s, f in units if not claim.period or f.period == claim.period]
    if not periods:
        s, f = units[0]
        return problem("wrong_period", f"{s.label} gives {_describe(f, entity=False)}")
    if not claim.mentions:
        return None
    verdicts = [
        _entity_verdict(claim, s, [f for t, f in periods if t is s]) for s in dict.fromkeys(s for s, _ in periods)
    ]
    if any(v is None for v in verdicts):
        return None
    return problem("wrong_entity", next(v for v in verdicts if v))


def _entity_verdict(claim: _Quantity, source: _Source, candidates: list[_Quantity]) -> str | None:
    """None if the source ties this value to an entity the sentence names (or to none); else why not."""
    if any(not f.entity or f.entity in claim.mentions for f in candidates):
        return None
    tied = [m for m in claim.mentions if any(f.entity == m for f in source.facts)]
    if not tied:
        tiers = [m for m in claim.mentions if m in TIER_KEYS]
        if tiers and all(f.entity in TIER_KEYS for f in candidates):  # tiers exclude each other
            return f"{source.label} gives {_describe(candidates[0])}, not for {_entity_name(tiers[0])}"
        return None
    mention = tied[0]
    own = [f for f in source.facts if f.entity == mention and _unit_fits(candidates[0].unit, f.unit)]
    own = own or [f for f in source.facts if f.entity == mention]
    name = own[0].entity_name or _entity_name(mention)
    return (
        f"{source.label} gives {_describe(candidates[0])}; "
        f"for {name} it gives {', '.join(_describe(f, entity=False) for f in own)}"
    )


def _not_found(elsewhere: list[tuple[_Source, _Quantity]]) -> str:
    if not elsewhere:
        return "no cited snippet or the offer states this number"
    named = list(dict.fromkeys(f"{s.label} gives {_describe(f)}" for s, f in elsewhere))
    return "not in the cited snippets or the offer; " + "; ".join(named[:2])


def _unit_name(unit: str) -> str:
    if not unit:
        return "a plain number"
    return UNIT_NAMES.get(unit, unit + "s")


def _check_claims(sentence: str, written: str, sources: list[_Source], hints: list[_Source]) -> list[GroundingProblem]:
    """Strong claims (free, guaranteed, lifetime ...) in `sentence` that no source backs; reported as `written`."""
    problems: list[GroundingProblem] = []
    lower = sentence.lower()
    for rule in CLAIM_RULES:
        if not any(t in lower for t in rule.triggers):
            continue
        for m in rule.claim.finditer(sentence):
            if any(rule.backing.search(s.text) for s in sources):
                continue
            phrase = m.group(0)
            backers = [s.label for s in hints if rule.backing.search(s.text)]
            hint = f"; {backers[0]} does" if backers else ""
            message = f'"{phrase}": no cited snippet or the offer says {rule.name} or an equivalent{hint}'
            problems.append(GroundingProblem("unbacked_claim", phrase, written, message))
    if not any(t in lower for t in FREE_TRIGGERS):
        return problems
    for _, _, topic, phrase in _free_uses(sentence):
        said: set[str] = set().union(*(_free_topics(s.text) for s in sources))
        if said and (not topic or topic in said):
            continue
        if said:
            kinds = ", ".join(sorted(t for t in said if t)) or "other things"
            message = f'"{phrase}": the cited snippets and the offer say free only for {kinds}'
        else:
            backers = [s.label for s in hints if topic in _free_topics(s.text) or (not topic and _free_topics(s.text))]
            hint = f"; {backers[0]} does" if backers else ""
            message = f'"{phrase}": no cited snippet or the offer says free{hint}'
        problems.append(GroundingProblem("unbacked_claim", phrase, written, message))
    return problems
