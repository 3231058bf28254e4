"""What a money or percent amount is in its sentence: a price, a saving, a credit, or a limit.

"pay $79" and "save $79" share a number but are different claims. The role is read from the words right next to
the amount, the same way in an email and in a source sentence: a word after it ("$25 credit", "10% off", "$65 or
more") first, then the nearest cue before it within its phrase ("save", "pay", "earn up to", "orders over"). "Up
to" marks a cap and "over" or "or more" a threshold, alone ("orders over $49") or on another role ("earn up to
$240"). When no word says, the role is unknown and nothing is judged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cpo.email.grounding.numbers import Quantity
from cpo.email.grounding.text import STOPWORDS

ROLE_UNITS = frozenset({"USD", "percent"})
KINDS = {"price": "a price", "saving": "a saving", "credit": "a credit or reward"}

_PRICE = (
    r"pay|pays|paying|paid|cost|costs|costing|price|prices|priced|pricing|charge|charges|charged|fee|fees"
    r"|renews?\s+at|rate|billed|regularly|normally|usually"
)
_SAVING = r"save|saves|saving|savings|saved|discount|discounts|discounted|off|cheaper|reduced?|reduces|reduction|less"
_CREDIT = r"credit|credits|credited|earn|earns|earning|earned|reward|rewards|rewarded|bonus|cashback|cash\s+back"
_CAP = (
    r"up\s+to|as\s+much\s+as|maximum(?:\s+of)?|max|at\s+most|no\s+more\s+than|limit(?:ed)?(?:\s+(?:to|of))?"
    r"|caps?(?:ped\s+at)?|under|below|less\s+than"
)
_THRESHOLD = r"at\s+least|minimum(?:\s+of)?|min|over|above|more\s+than|exceeding|spend|spends|spending"
_FAR = re.compile(
    rf"\b(?:(?P<cap>{_CAP})|(?P<threshold>{_THRESHOLD})|(?P<price>{_PRICE})|(?P<saving>{_SAVING})|(?P<credit>{_CREDIT}))\b",
    re.I,
)
LIMITS = {"cap": "a cap", "threshold": "a threshold"}
# Words that give a role only right before the amount ("for $79", "get $20"), articles and "just" allowed between;
# "from", "get" and a bare "just" only before a dollar amount ("get 10% on every order" is no credit).
_FILLER = r"(?:(?:just|only|a|an|your|the)\s+)*"
_NEAR = re.compile(
    r"\b(?:(?P<price>for|at|was)|(?P<usd_price>from)|(?P<usd_credit>get|gets|receive|receives|give|gives|given))\s+"
    + _FILLER
    + "$",
    re.I,
)
_JUST = re.compile(r"\b(?:just|only)\s+$", re.I)
_RATE = re.compile(r"\b(?:per|every|each)\s+$", re.I)  # "5 points per $1": the amount is what is counted
# A phrase ends at these: the cue for an amount is not looked for past them.
_CUT = re.compile(
    r"[;:()\[\]!?]|,\s|\s[-\u2013\u2014]\s|[\u2013\u2014]|\d"
    r"|\b(?:on|in|with|when|if|who|that|which|whose|after|before|and|or|but|so|then)\b",
    re.I,
)
_WINDOW_WORDS = 7

_AFTER_RATE = re.compile(r"\s+(?:spent|spend)\b", re.I)
_AFTER_LIMIT = re.compile(
    r"\s*\+|\s+or\s+(?:more|above|over|higher|greater)\b|\s+and\s+(?:up|above|over)\b|\s+(?:minimum|min)\b", re.I
)
_AFTER_ORDERS = re.compile(r"\s+(?:orders?|purchases?|baskets?)\b", re.I)
_AFTER = re.compile(
    r"\s+(?:in\s+)?(?:(?P<mod>[a-z-]+)\s+)??(?:(?P<saving>off|discounts?|savings?|less|cheaper|reduction)"
    r"|(?P<credit>credits?|cash\s?back|back|rewards?|bonus(?:es)?)|(?P<points>points?)"
    r"|(?P<price>fee|price|payment|charge))\b",
    re.I,
)
_PRODUCT_BREAKS = STOPWORDS - {"plus"}  # "the $99 annual Plus plan": a brand word, not "and"
_AFTER_PRODUCT = re.compile(r"((?:\s+[a-z][\w-]*){0,3}?)\s+(?:plan|membership|subscription)\b", re.I)


@dataclass(frozen=True)
class Role:
    """The role of one amount and the words that gave it."""

    kind: str  # "price" | "saving" | "credit" | "" (a limit alone)
    limit: str  # "cap" ("up to", "at most") | "threshold" ("over", "at least", "or more") | ""
    start: int  # the amount with its cue words, in the sentence
    end: int

    @property
    def name(self) -> str:
        """The role in words, for a message: 'a price', 'a cap on a credit or reward'."""
        if not self.kind:
            return LIMITS[self.limit]
        return f"{LIMITS[self.limit]} on {KINDS[self.kind]}" if self.limit else KINDS[self.kind]


def compatible(claim: Role, source: Role) -> bool:
    """An email's role can state a source's: the same kind (or one side names none) and the same limit, or a cap
    the source has not ("up to 10%" for "10%" claims less, never more; "$240" for "up to $240" claims more)."""
    kinds = not claim.kind or not source.kind or claim.kind == source.kind
    return kinds and (claim.limit == source.limit or (claim.limit == "cap" and not source.limit))


# "$79 instead of $99", "15% instead of 10%": the amount contrasted with another is the same kind of amount.
_CONTRAST = re.compile(
    r"\b(?:instead\s+of|rather\s+than|down\s+from|compared\s+(?:with|to)|versus|vs\.?|in\s+place\s+of)\s+"
    r"(?:(?:the|a|an|just|only|regular|standard|usual|normal)\s+)*$",
    re.I,
)
_LIST_GAP = re.compile(r"\s*,?\s*(?:or|and|to|through|-|\u2013)\s+(?:(?:just|only)\s+)?", re.I)


def roles_in(sentence: str, found: list[Quantity]) -> list[Role | None]:
    """The role of each quantity of a sentence. An amount with no cue of its own takes the role of the amount
    before it of the same unit when it is listed right after it ("costs $9.99 a month or $99 a year") or
    contrasted with it ("$79 instead of $99")."""
    out: list[Role | None] = []
    for i, q in enumerate(found):
        contrast = _CONTRAST.search(sentence, 0, q.start) is not None
        role = None if contrast else role_of(sentence, q)
        earlier = [(p, r) for p, r in zip(found[:i], out, strict=True) if r is not None and p.unit == q.unit]
        if role is None and earlier:
            p, r = earlier[-1]
            if contrast or (p is found[i - 1] and _LIST_GAP.fullmatch(sentence, p.end, q.start)):
                role = Role(r.kind, r.limit, r.start, q.end)
        out.append(role)
    return out


def role_of(sentence: str, q: Quantity) -> Role | None:
    """The role of a $ or % amount in its sentence, or None when no word next to it says (or it is no amount)."""
    if q.unit not in ROLE_UNITS:
        return None
    before = sentence[: q.start]
    if _RATE.search(before) or _AFTER_RATE.match(sentence, q.end):
        return None
    kind, limit, start, end = "", "", q.start, q.end
    after = _after(sentence, q)
    if after:
        kind, end, limit = after
    phrase = _phrase_before(before)
    # a threshold written after the amount ("$750 or more") takes a role only from a cue right before it
    cue = _cue_before(before, phrase, usd=q.unit == "USD", words=2 if after and not kind else _WINDOW_WORDS)
    if cue and cue[0] in LIMITS:
        limit, start = cue
        inner = None if kind else _cue_before(before[:start], phrase, usd=q.unit == "USD", words=2)
        if inner and inner[0] in KINDS:
            kind, start = inner
    elif cue and not kind:
        kind, start = cue
    if not kind and not limit:
        return None
    return Role(kind, limit, start, end)


def _after(sentence: str, q: Quantity) -> tuple[str, int, str] | None:
    """A role given by the words right after the amount: (kind, end of the cue, limit)."""
    m = _AFTER_LIMIT.match(sentence, q.end)
    if m:
        return "", m.end(), "threshold"
    m = _AFTER.match(sentence, q.end)
    if m and (m.group("mod") or "").lower() not in STOPWORDS:
        if not m.group("points"):
            return next(k for k in ("saving", "credit", "price") if m.group(k)), m.end(), ""
        if m.group(0).split()[0].lower() == "in":  # "$240 in points"; "$1 points" is no claim about the $1
            return "credit", m.end(), ""
    m = _AFTER_PRODUCT.match(sentence, q.end) if q.unit == "USD" else None
    if m and not (set(m.group(1).lower().split()) & _PRODUCT_BREAKS):
        return "price", m.end(), ""
    m = _AFTER_ORDERS.match(sentence, q.end) if q.unit == "USD" else None  # "$49 orders"; "10% orders" is garbled
    if m:
        return "", m.end(), "threshold"
    return None


def _phrase_before(before: str) -> int:
    """Where the phrase an amount belongs to starts: after the last clause break, number, or new preposition,
    and at most a few words back."""
    start = 0
    for m in _CUT.finditer(before):
        start = m.end()
    words = list(re.finditer(r"\S+", before[start:]))
    if len(words) > _WINDOW_WORDS:
        start += words[-_WINDOW_WORDS].start()
    return start


def _cue_before(before: str, phrase: int, *, usd: bool, words: int = _WINDOW_WORDS) -> tuple[str, int] | None:
    """The nearest cue before the amount within its phrase: (kind, where the cue starts)."""
    near = _NEAR.search(before, phrase)
    if near and (near.group("price") or usd):
        return "credit" if near.group("usd_credit") else "price", near.start()
    window = before[phrase:]
    spans = list(re.finditer(r"\S+", window))
    if len(spans) > words:
        phrase += spans[-words].start()
    found = None
    for m in _FAR.finditer(before, phrase):
        if found is None or m.end() >= found.end():
            found = m
    if found:
        return next(k for k in (*KINDS, *LIMITS) if found.group(k)), found.start()
    just = _JUST.search(before, phrase) if usd else None
    if just:
        return "price", just.start()
    return None
