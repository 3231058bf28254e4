"""Numbers as an email or a snippet writes them, read into one canonical form so that they can be compared.

"$99", "99 dollars" and "ninety-nine dollars" must be the same claim, and "$99 a year" another claim than
"$99 a month": so each number is read with its unit and the period it is per. Dates, clock times, "24/7",
number words and "a dozen" / "twice" / "half" are numbers too; ordinals and list numbering are not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from cpo.email.grounding.text import STOPWORDS, singular, tokens


@dataclass(frozen=True)
class Quantity:
    """A number found in text, or a declared fact, in canonical form."""

    value: str  # "99", "9.99", "24/7", "8:30", or "date:3:31:2027" (empty parts allowed)
    unit: str = ""  # "USD", "percent", "times", "am", "pm", "date", "day", "month", "point", ... or ""
    period: str = ""  # "day" | "week" | "month" | "year" | ""
    entity: str = ""  # entity key (see entities.entity_key), facts only
    entity_name: str = ""  # the entity as written: "Premium members"
    display: str = ""  # the number as written, without the period: "$99", "2-day", "fifty percent"
    phrase: str = ""  # the claim as written, with the period: "$99 per month"
    start: int = 0
    end: int = 0
    mentions: tuple[str, ...] = ()  # entity keys named near a claim in the email


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


def canonical_unit(unit: str) -> str:
    """'$' / 'dollars' -> 'USD', '%' -> 'percent', 'days' -> 'day', 'metro areas' -> 'metro area'."""
    key = unit.strip().lower()
    if not key:
        return ""
    if key in UNIT_ALIASES:
        return UNIT_ALIASES[key]
    if key in UNIT_WORDS:
        return UNIT_WORDS[key]
    words = key.split()
    words[-1] = singular(words[-1])
    return " ".join(words)


def canonical_period(period: str) -> str:
    """'per month' / 'monthly' / '/mo' -> 'month', so a period compares however it is written."""
    key = period.strip().lower().removeprefix("per ").removeprefix("a ").removeprefix("/")
    return PERIOD_WORDS.get(key, PERIOD_WORDS.get(key.rstrip("s"), key))


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
        return canonical_period(after.group("p") or after.group("adj")), after.end()
    before = PERIOD_BEFORE.search(text[max(0, start - 60) : start])
    if before:
        return canonical_period(before.group("adj")), end
    return "", end


ANY_DIGIT = re.compile(r"\d")
NUMBER_WORD_SET = frozenset([*SMALL, *TENS, "hundred", "thousand"])
SPECIAL_WORD_SET = frozenset(["dozen", "twice", "half"])


def quantities(text: str, words: frozenset[str] | None = None) -> list[Quantity]:
    """Every number claim in one sentence, left to right; ordinals and small bare number words are skipped."""
    words = tokens(text) if words is None else words
    digits = ANY_DIGIT.search(text) is not None
    found: list[Quantity] = []
    taken: list[tuple[int, int]] = []

    def free(start: int, end: int) -> bool:
        return all(end <= s or start >= e for s, e in taken)

    def add(value: str, unit: str, start: int, unit_end: int, *, period_ok: bool = True) -> None:
        period, end = _period_around(text, start, unit_end) if period_ok else ("", unit_end)
        taken.append((start, end))
        found.append(
            Quantity(
                value=value,
                unit=unit,
                period=period,
                display=text[start:unit_end].strip(),
                phrase=text[start:end].strip().rstrip("."),
                start=start,
                end=end,
            )
        )

    for m in DATE.finditer(text) if digits and not words.isdisjoint(MONTHS) else ():
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
    for m in NUMBER_WORDS.finditer(text) if not words.isdisjoint(NUMBER_WORD_SET) else ():
        if not free(m.start(), m.end()):
            continue
        value = _words_value(m.group(0))
        unit, unit_end, _ = _unit_after(text, m.end())
        if unit or value >= 10:
            add(str(value), unit, m.start(), unit_end if unit else m.end())
    for m in SPECIAL_WORDS.finditer(text) if not words.isdisjoint(SPECIAL_WORD_SET) else ():
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


def same_value(a: str, b: str) -> bool:
    """Equal canonical values; a date without its day or year agrees with any ('March 2027' is 'March 31, 2027')."""
    if a == b:
        return True
    if a.startswith("date:") and b.startswith("date:"):
        _, am, ad, ay = a.split(":")
        _, bm, bd, by = b.split(":")
        return am == bm and (not ad or not bd or ad == bd) and (not ay or not by or ay == by)
    return False


def unit_fits(claim: str, fact: str) -> bool:
    """A missing unit fits any unit, and 'times' fits a soft unit ('5x' is '5 points'), never $, %, a time or date."""
    if not claim or not fact or claim == fact:
        return True
    return "times" in (claim, fact) and not ({claim, fact} & HARD_UNITS)


def unit_name(unit: str) -> str:
    """A unit in words, for a message: 'a dollar amount', 'a percentage', 'days'."""
    if not unit:
        return "a plain number"
    return UNIT_NAMES.get(unit, unit + "s")
