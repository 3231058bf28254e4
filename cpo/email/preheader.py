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
    """The offer, then each cited snippet's sentences for every reader, in order; short enough, not the subject."""
    subject = set(WORD.findall(sent.subject.casefold()))
    said = " ".join(WORD.findall(sent.subject.casefold()))
    cited = [s for s in request.snippets if s.id in set(sent.citations)]
    lines = [request.offer.strip(), *(x.strip() for s in cited for _, x in sentences(s.text))]
    readers = {r.casefold() for r in request.segment.readers}
    for line in dict.fromkeys(lines):
        words = set(WORD.findall(line.casefold()))
        if not line or len(line) > limits.preheader_max_chars or words <= subject:
            continue
        if said and said in " ".join(WORD.findall(line.casefold())):  # the subject again, with more after it
            continue
        named = {t.casefold() for t in tiers_named(line, request.vocabulary.tiers)}
        if named and not (readers and readers <= named):
            continue
        yield line
