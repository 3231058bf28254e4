"""Strong claims ("guaranteed", "lifetime", "free" ...) an email may make only when a source makes them too.

These promise something without a number to compare, so each is checked by its wording: a claim needs a
source that says the same or an equivalent. "Free" is checked by what is free (delivery, membership, goods),
and its idioms ("feel free", "hassle-free") are not claims.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from cpo.email.grounding.text import STOPWORDS, sentences


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
    return frozenset(topic for sentence, _ in sentences(text) for _, _, topic, _ in _free_uses(sentence))


def unbacked_claims(sentence: str, backing: Sequence[str], hints: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """(phrase, message) for each strong claim in `sentence` that no text of `backing` (the cited snippets and
    the offer) makes; `hints` are (label, text) of sources not cited, named in the message when one makes it."""
    problems: list[tuple[str, str]] = []
    lower = sentence.lower()
    for rule in CLAIM_RULES:
        if not any(t in lower for t in rule.triggers):
            continue
        for m in rule.claim.finditer(sentence):
            if any(rule.backing.search(text) for text in backing):
                continue
            phrase = m.group(0)
            backers = [label for label, text in hints if rule.backing.search(text)]
            hint = f"; {backers[0]} does" if backers else ""
            message = f'"{phrase}": no cited snippet or the offer says {rule.name} or an equivalent{hint}'
            problems.append((phrase, message))
    if not any(t in lower for t in FREE_TRIGGERS):
        return problems
    for _, _, topic, phrase in _free_uses(sentence):
        said: set[str] = set().union(*(_free_topics(text) for text in backing))
        if said and (not topic or topic in said):
            continue
        if said:
            kinds = ", ".join(sorted(t for t in said if t)) or "other things"
            message = f'"{phrase}": the cited snippets and the offer say free only for {kinds}'
        else:
            backers = [
                label for label, text in hints if topic in _free_topics(text) or (not topic and _free_topics(text))
            ]
            hint = f"; {backers[0]} does" if backers else ""
            message = f'"{phrase}": no cited snippet or the offer says free{hint}'
        problems.append((phrase, message))
    return problems
