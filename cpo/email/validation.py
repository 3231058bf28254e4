"""Checks every draft must pass before it is reported valid: format, length, citations, grounding, lint, text safety."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cpo.core.errors import ConfigError
from cpo.core.files import load_yaml_model
from cpo.core.models import GREETING_TAG, EmailDraft, EmailRequest, ValidationIssue, ValidationReport
from cpo.email import offer_terms
from cpo.email.grounding import check_grounding
from cpo.email.grounding.audience import AUDIENCE_CODE, audience_problems
from cpo.email.normalize import frame_words, word_count
from cpo.email.rubric import SUBJECT_RULES, headline_problems, rubric_problems
from cpo.email.textsafety import fold, smuggled

NUMBER = re.compile(r"(?<![\w.])\$?\d+(?:[.,]\d+)*%?")
LABEL = re.compile(r"^\s*[*_#>`\s]*(subject|body|title|preview)\s*[*_]*\s*:", re.IGNORECASE | re.MULTILINE)
MARKDOWN = re.compile(r"\*\*|__|^\s*#{1,6}\s|`|\[[^\]]+\]\([^)]+\)", re.MULTILINE)
# A bulleted or numbered list line ("- 10% off every order", "1. Net-75 Terms: ..."): an email of plain paragraphs.
LIST_LINE = re.compile(r"^[ \t]*(?:[-*\u2022\u2013]|\d{1,2}[.)])[ \t]+\S[^\n]*", re.MULTILINE)
PLACEHOLDER = re.compile(
    r"\{\{[^{}]*\}\}|\{%[^%]*%\}|\[[^\[\]\n]{1,80}\](?!\()|\{\{?\s*[A-Za-z_][\w.]*\s*\}?\}"
    r"|<\s*[a-z_]+\s*>|%[A-Z_]+%|\bXX+\b"
)
CAPS_WORD = re.compile(r"\b[A-Z]{4,}\b")


class ValidationLimits(BaseModel):
    """Tunable limits (defaults from the earlier spec); load overrides from YAML with `from_file`."""

    model_config = ConfigDict(extra="forbid")
    subject_min_chars: int = Field(1, ge=1)
    subject_max_chars: int = Field(60, ge=1)
    # The preheader (the inbox preview line) is checked like the subject; the word limits below count the body
    # as sent (greeting and sign-off included), not the preheader, the call to action or the footer.
    preheader_max_chars: int = Field(120, ge=1)
    body_min_words: int = Field(150, ge=1)
    body_max_words: int = Field(200, ge=1)
    min_citations: int = Field(2, ge=0)
    urgency_phrases: list[str] = Field(
        default_factory=lambda: [
            "act now",
            "last chance",
            "limited time",
            "hurry",
            "urgent",
            "today only",
            "don't miss",
            "final hours",
            "expires",
            "now or never",
            "once in a lifetime",
            "ends tonight",
        ]
    )
    max_urgency_phrases: int = Field(1, ge=0)
    allowed_caps: list[str] = Field(default_factory=lambda: ["USD", "FAQ", "NOTE"])

    @model_validator(mode="after")
    def _ranges(self) -> ValidationLimits:
        """A minimum above its maximum fails every draft and asks repairs for the impossible: refuse it first."""
        for low, high in (("subject_min_chars", "subject_max_chars"), ("body_min_words", "body_max_words")):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} ({getattr(self, low)}) is more than {high} ({getattr(self, high)})")
        return self

    @classmethod
    def from_file(cls, path: Path) -> ValidationLimits:
        return load_yaml_model(path, cls, "limits file", ConfigError, empty_ok=True)


def numbers_in(text: str) -> set[str]:
    """Normalised numeric tokens: '$4.99' -> '4.99', '2,418' -> '2418', '35%' -> '35'."""
    out = set()
    for match in NUMBER.findall(text):
        value = match.lstrip("$").rstrip("%").rstrip(".,")
        out.add(value.replace(",", ""))
    return out


def validate_draft(
    draft: EmailDraft, request: EmailRequest, limits: ValidationLimits | None = None
) -> ValidationReport:
    """Every rule the email as sent must pass; valid only if no issue was found.

    `draft.body` is the body as sent (cpo's greeting and sign-off included). Each message states the
    measured value and the target in units a model can act on, because it doubles as the repair request.
    """
    limits = limits or ValidationLimits()
    issues: list[ValidationIssue] = []

    def fail(code: str, message: str, field: str, excerpts: list[str] | None = None) -> None:
        issues.append(
            ValidationIssue(code=code, message=message, field=field, excerpts=excerpts or [])  # type: ignore[arg-type]
        )

    subject, body = draft.subject.strip(), draft.body.strip()
    words = word_count(body)
    if len(subject) > limits.subject_max_chars:
        fail(
            "subject_length",
            f"the subject is {len(subject)} characters; rewrite it in at most {limits.subject_max_chars}",
            "subject",
        )
    elif len(subject) < limits.subject_min_chars:
        fail(
            "subject_length",
            f"the subject is empty; write one of at most {limits.subject_max_chars} characters",
            "subject",
        )
    if LABEL.search(subject) or MARKDOWN.search(subject):
        fail("subject_format", "the subject has a 'Subject:' label or markdown; write plain text only", "subject")
    preheader = draft.preheader.strip()
    if len(preheader) > limits.preheader_max_chars:
        fail(
            "preheader_length",
            f"the preheader is {len(preheader)} characters; write one of at most {limits.preheader_max_chars}",
            "preheader",
        )
    if LABEL.search(preheader) or MARKDOWN.search(preheader) or "\n" in preheader:
        fail(
            "preheader_format", "the preheader has a label, markdown or a line break; write one plain line", "preheader"
        )
    found = [m.group(0).strip() for m in (LABEL.search(body), MARKDOWN.search(body), LIST_LINE.search(body)) if m]
    if found:
        fail(
            "body_format",
            "the body has 'Subject:'/'Body:' labels, markdown (**, #, `) or a list; write plain paragraphs",
            "body",
            found,
        )
    if not limits.body_min_words <= words <= limits.body_max_words:
        frame = frame_words(request)
        own = words - frame
        low, high = max(1, limits.body_min_words - frame), limits.body_max_words - frame
        verb = "add to" if words < limits.body_min_words else "cut"
        fail(
            "body_length",
            f"the body is {words} words with greeting and sign-off (limit {limits.body_min_words}-"
            f"{limits.body_max_words}); your paragraphs are {own} words: {verb} them to {low}-{high} words in total",
            "body",
        )

    cited: list[str] = []
    unknown: list[str] = []
    for cid in dict.fromkeys(c.strip() for c in draft.citations):
        (cited if request.snippet(cid) else unknown).append(cid)
    if unknown:
        fail(
            "unknown_citation",
            f"citations {', '.join(repr(u) for u in unknown)} are not supplied snippets; "
            f"cite only: {', '.join(s.id for s in request.snippets)}",
            "citations",
        )
    if len(cited) < limits.min_citations:
        fail(
            "too_few_citations",
            f"the email cites {len(cited)} valid snippet(s); cite at least {limits.min_citations} of: "
            f"{', '.join(s.id for s in request.snippets)}",
            "citations",
        )

    # Claims are read on the folded text (and sources), so a look-alike letter hides no claim.
    snippets = [s.model_copy(update={"text": fold(s.text)}) for s in request.snippets]
    folded, folded_subject, folded_offer = (
        fold(f"{subject}\n\n{preheader}\n\n{body}"),
        fold(subject),
        fold(request.offer),
    )
    folded_preheader = fold(preheader)

    def field_of(sentence: str) -> str:
        """Where a sentence at fault is: the subject, the preheader, or the body."""
        said = sentence.strip()
        if said and said in folded_subject:
            return "subject"
        return "preheader" if said and said in folded_preheader else "body"

    for problem in check_grounding(
        folded,
        [s for s in snippets if s.id in cited],
        folded_offer,
        others=[s for s in snippets if s.id not in cited],
        vocabulary=request.vocabulary,
    ):
        fail("ungrounded_claim", problem.message, field_of(problem.sentence), [problem.sentence.strip()])
    backing = [folded_offer, *(s.text for s in snippets if s.id in cited)]
    for sentence, message in audience_problems(folded, request.segment.readers, backing, request.vocabulary):
        fail(AUDIENCE_CODE, message, field_of(sentence), [sentence.strip()])

    shown = f"{subject}\n{preheader}\n{body}".replace(GREETING_TAG, "")
    placeholders = sorted(set(PLACEHOLDER.findall(shown)))
    if placeholders:
        where = next((f for f, text in (("subject", subject), ("preheader", preheader))
                      if all(p in text for p in placeholders)), "body")  # fmt: skip
        fail(
            "placeholder",
            f"unresolved placeholders {', '.join(placeholders)}; write the words themselves (cpo adds the greeting "
            "and sign-off)",
            where,
            placeholders,
        )

    for field, text in (("subject", draft.subject), ("preheader", draft.preheader), ("body", draft.body)):
        for item in smuggled(text, subject=field != "body"):
            fail(item.code, item.message, field, item.excerpts if field == "body" else [])

    for field, message, excerpts in offer_terms.problems(subject, body, request):
        fail("offer_condition", message, field, excerpts)
    if preheader:
        for _, message, excerpts in offer_terms.problems(preheader, "", request):
            fail("offer_condition", message, "preheader", excerpts)
    for code, message, excerpts in rubric_problems(subject, body, request):
        fail(code, message, "subject" if code in SUBJECT_RULES else "body", excerpts)
    names = (*request.vocabulary.tiers, *request.vocabulary.brand_words)
    _lint_subject(subject, limits, fail, names)
    if preheader:
        _lint_subject(preheader, limits, fail, names, what="preheader")
        for code, message, _ in headline_problems(preheader, "preheader"):
            fail(code, message, "preheader")
    return ValidationReport(
        valid=not issues, issues=issues, subject_chars=len(subject), body_words=words, citations=len(cited)
    )


def _lint_subject(
    subject: str,
    limits: ValidationLimits,
    fail: Callable[[str, str, str], None],
    names: Iterable[str] = (),
    what: str = "subject",
) -> None:
    """Spam-trigger lint of the subject (or the preheader, `what`): shouting, stacked punctuation, piled-up
    urgency. `names` (the retailer's own tiers and brand words, such as a "VVIP" tier) may be written in capitals."""
    letters = [c for c in subject if c.isalpha()]
    allowed = {*limits.allowed_caps, *(w for name in names for w in name.split())}
    caps = [w for w in CAPS_WORD.findall(subject) if w not in allowed]
    if (len(letters) >= 8 and sum(c.isupper() for c in letters) / len(letters) > 0.6) or caps:
        fail(
            f"{what}_caps",
            f"the {what} shouts in capitals ({', '.join(caps) or 'mostly upper case'}); use sentence case",
            what,
        )
    if re.search(r"[!?]{2,}", subject):
        fail(f"{what}_punctuation", f"the {what} stacks exclamation or question marks; use one at most", what)
    lowered = fold(subject).lower()
    found = [p for p in limits.urgency_phrases if p in lowered]
    if len(found) > limits.max_urgency_phrases:
        fail(
            f"{what}_urgency",
            f"the {what} stacks {len(found)} urgency phrases ({', '.join(found)}); "
            f"keep at most {limits.max_urgency_phrases}",
            what,
        )
