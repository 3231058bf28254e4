"""The preheader: the line an inbox shows after the subject, written with the email and checked like it.

The model writes one with its draft (a field of the structured output). When it gives none, or one the
checks fault, cpo writes one instead of paying for a repair: the campaign's offer, else a sentence of a
cited snippet that holds for every reader — text already approved — the first that passes every check and
does not say the subject again. Recorded as the normalization `preheader_written`. When nothing fits,
the preheader is left empty and the inbox shows the body's first line, as it does for any email without one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from cpo.core.models import EmailDraft, EmailRequest, Normalization, ValidationReport
from cpo.email.grounding.audience import tiers_named
from cpo.email.grounding.text import sentences
from cpo.email.validation import ValidationLimits, validate_draft

WORD = re.compile(r"[a-z0-9]+")
WRITTEN = "preheader_written"


def settled(
    sent: EmailDraft, request: EmailRequest, limits: ValidationLimits
) -> tuple[EmailDraft, ValidationReport, Normalization | None]:
    """The email as sent with a preheader that passes the checks, its report, and what cpo changed (or None)."""
    report = validate_draft(sent, request, limits)
    faults = [i.message for i in report.issues if i.field == "preheader"]
    if sent.preheader.strip() and not faults:
        return sent, report, None
    why = f"the model's preheader was refused ({faults[0]})" if faults else "the draft had no preheader"
    for candidate in _candidates(sent, request, limits):
        trial = sent.model_copy(update={"preheader": candidate})
        trial_report = validate_draft(trial, request, limits)
        if not any(i.field == "preheader" for i in trial_report.issues):
            return trial, trial_report, Normalization(code=WRITTEN, detail=f"{why}; cpo used {candidate!r}")
    empty = sent.model_copy(update={"preheader": ""})
    return (
        empty,
        validate_draft(empty, request, limits),
        Normalization(
            code=WRITTEN, detail=f"{why}; no approved line fits, so none is set (the inbox shows the body's first line)"
        ),
    )


def _candidates(sent: EmailDraft, request: EmailRequest, limits: ValidationLimits) -> Iterator[str]:
    """The offer (or, when it opens with the subject, the rest of it), then each cited snippet's sentences for
    every reader, in order; short enough, and neither the subject nor opening with it."""
    subject = _words(sent.subject)
    cited = [s for s in request.snippets if s.id in set(sent.citations)]
    offer = request.offer.strip()
    lines = [offer, _after(offer, subject), *(x.strip() for s in cited for _, x in sentences(s.text))]
    readers = {r.casefold() for r in request.segment.readers}
    for line in dict.fromkeys(lines):
        words = _words(line)
        if not line or len(line) > limits.preheader_max_chars or set(words) <= set(subject):
            continue
        if subject and words[: len(subject)] == subject:  # "Upgrade to Northwind Plus" twice in a row in the inbox
            continue
        named = {t.casefold() for t in tiers_named(line, request.vocabulary.tiers)}
        if named and not (readers and readers <= named):
            continue
        yield line


def _words(text: str) -> list[str]:
    return WORD.findall(text.casefold())


def _after(offer: str, subject: list[str]) -> str:
    """What an offer that opens with the subject says after it, as a sentence ("Upgrade to Northwind Plus and get
    your first 3 months ..." after "Upgrade to Northwind Plus": "Get your first 3 months ..."); else ""."""
    if not subject or _words(offer)[: len(subject)] != subject:
        return ""
    tokens, seen = offer.split(), 0
    for n, token in enumerate(tokens):
        seen += len(_words(token))
        if seen >= len(subject):
            rest = tokens[n + 1 :]
            while rest and rest[0].casefold().strip(",;:-\u2013\u2014") in ("", "and", "to", "with", "then"):
                rest = rest[1:]
            text = " ".join(rest)
            return text[:1].upper() + text[1:] if len(rest) >= 3 else ""
    return ""
