"""An offer's condition travels with its figure: "Students and teachers who verify a school email address can
join for $59 a year" is not "join for $59 a year".

An offer that names who gets it ("X who Y ...") is true only for readers who meet Y. An email that states the
offer's figure without the condition tells every reader the figure is theirs: a real model wrote "the chance to
join Northwind Plus for just $59 a year!" to all Bronze buyers of school supplies. Each sentence (and the subject)
that states one of the offer's figures must carry most of the condition's words, in itself or the sentence just
before it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cpo.core.models import EmailRequest
from cpo.email.normalize import paragraphs

# "<who> who <condition> <verb> ...": the condition ends where the offer's verb begins.
CONDITIONAL_OFFER = re.compile(
    r"^\W*(?P<who>[^.]+?)\s+who\s+(?P<condition>[^.]+?)\s+"
    r"(?:can|may|pay|pays|get|gets|save|saves|receive|receives|earn|earns|qualify|qualifies|keep|keeps)\b"
    r"(?P<rest>.*)$",
    re.IGNORECASE | re.DOTALL,
)
FIGURE = re.compile(r"(?<![\w.])\$\d[\d,]*(?:\.\d+)?|(?<![\w.])\d+(?:\.\d+)?%")
WORD = re.compile(r"[a-z][a-z'-]{3,}")
SENTENCE = re.compile(r"(?<=[.!?])\s+")
CARRIED = 0.6  # share of the condition's words a sentence (with the one before) must carry


@dataclass(frozen=True)
class Terms:
    """Who an offer is for and on what condition, and the figures that hold only for them."""

    condition: str  # as written: "verify a school email address"
    words: frozenset[str]  # the condition's own words
    who: frozenset[str]  # the words naming whom: "students", "teachers"
    figures: frozenset[str]  # "$59"


def condition_of(offer: str, brand_words: tuple[str, ...]) -> Terms | None:
    """The offer's terms, or None for an offer open to all."""
    found = CONDITIONAL_OFFER.match(" ".join(offer.split()))
    if not found:
        return None
    brand = {w.casefold() for name in brand_words for w in name.split()}

    def own(text: str) -> frozenset[str]:
        return frozenset(w for w in WORD.findall(text.casefold()) if w not in brand)

    words, figures = own(found.group("condition")), frozenset(FIGURE.findall(found.group("rest")))
    return Terms(found.group("condition"), words, own(found.group("who")), figures) if words and figures else None


def _carries(words: frozenset[str], text: str) -> bool:
    return bool(words) and len({w for w in words if w in text}) >= CARRIED * len(words)


def unconditional_figures(subject: str, body: str, request: EmailRequest) -> list[tuple[str, str, str]]:
    """Each (field, sentence, figure) that states the offer's figure without its condition."""
    terms = condition_of(request.offer, request.vocabulary.brand_words)
    if terms is None:
        return []
    found = []
    for field, text in (("subject", subject), ("body", body)):
        sentences = [s for part in paragraphs(text) for s in SENTENCE.split(part) if s.strip()]
        for i, sentence in enumerate(sentences):
            stated = sorted(f for f in terms.figures if f in sentence)
            if not stated:
                continue
            near = " ".join(sentences[max(i - 1, 0) : i + 1]).casefold()
            # A subject has room for whom ("Students and teachers: ..."); a sentence of the body says the condition.
            if not (_carries(terms.words, near) or (field == "subject" and _carries(terms.who, near))):
                found.append((field, sentence.strip(), stated[0]))
    return found


def problems(subject: str, body: str, request: EmailRequest) -> list[tuple[str, str, list[str]]]:
    """(field, message, excerpts) for the validator: one per sentence that drops the condition."""
    terms = condition_of(request.offer, request.vocabulary.brand_words)
    out = []
    for field, sentence, figure in unconditional_figures(subject, body, request):
        assert terms is not None
        message = (
            f'"{figure}" is offered without its condition: the offer is only for those who {terms.condition}; say '
            "who gets it in the same sentence"
        )
        out.append((field, message, [sentence] if field == "body" else []))
    return out
