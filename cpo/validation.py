"""Checks every draft must pass before it is reported valid: format, length, citations, grounding, lint."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cpo.errors import ConfigError
from cpo.models import EmailDraft, EmailRequest, ValidationIssue, ValidationReport

NUMBER = re.compile(r"(?<![\w.])\$?\d+(?:[.,]\d+)*%?")
LABEL = re.compile(r"^\s*[*_#>`\s]*(subject|body|title|preview)\s*[*_]*\s*:", re.IGNORECASE | re.MULTILINE)
MARKDOWN = re.compile(r"\*\*|__|^\s*#{1,6}\s|`|\[[^\]]+\]\([^)]+\)", re.MULTILINE)
PLACEHOLDER = re.compile(
    r"\[(?:[A-Z][\w .'-]*|[a-z_]+)\]|\{\{?\s*[A-Za-z_][\w.]*\s*\}?\}|<\s*[a-z_]+\s*>|%[A-Z_]+%|\bXX+\b"
)
CAPS_WORD = re.compile(r"\b[A-Z]{4,}\b")


class ValidationLimits(BaseModel):
    """Tunable limits (defaults from the earlier spec); load overrides from YAML with `from_file`."""

    model_config = ConfigDict(extra="forbid")
    subject_min_chars: int = Field(1, ge=1)
    subject_max_chars: int = Field(60, ge=1)
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

    @classmethod
    def from_file(cls, path: Path) -> ValidationLimits:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            return cls.model_validate(raw)
        except OSError as exc:
            raise ConfigError(f"limits file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"limits file {path}: not UTF-8 text") from None
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" (line {where.line + 1})" if where is not None else ""
            raise ConfigError(f"limits file {path} is not valid YAML{line}: {getattr(exc, 'problem', exc)}") from None
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(map(str, err["loc"])) or "(top level)"
            raise ConfigError(f"limits file {path}: {key}: {err['msg']}") from None


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
    """Every rule the email must pass; the report is valid only if no issue was found."""
    limits = limits or ValidationLimits()
    issues: list[ValidationIssue] = []

    def fail(code: str, message: str) -> None:
        issues.append(ValidationIssue(code=code, message=message))

    subject, body = draft.subject.strip(), draft.body.strip()
    words = len(body.split())
    if not limits.subject_min_chars <= len(subject) <= limits.subject_max_chars:
        fail(
            "subject_length",
            f"subject is {len(subject)} characters; it must be {limits.subject_min_chars}-{limits.subject_max_chars}",
        )
    if LABEL.search(subject) or MARKDOWN.search(subject):
        fail("subject_format", "subject must be plain text with no 'Subject:' label or markdown")
    if LABEL.search(body) or MARKDOWN.search(body):
        fail("body_format", "body must be plain text with no 'Subject:'/'Body:' labels or markdown")
    if not limits.body_min_words <= words <= limits.body_max_words:
        fail("body_length", f"body has {words} words; it must have {limits.body_min_words}-{limits.body_max_words}")

    cited: list[str] = []
    unknown: list[str] = []
    for cid in dict.fromkeys(c.strip() for c in draft.citations):
        (cited if request.snippet(cid) else unknown).append(cid)
    if unknown:
        fail(
            "unknown_citation",
            f"citations {', '.join(repr(u) for u in unknown)} are not supplied snippets; "
            f"cite only: {', '.join(s.id for s in request.snippets)}",
        )
    if len(cited) < limits.min_citations:
        fail("too_few_citations", f"{len(cited)} valid citations; at least {limits.min_citations} are required")

    grounded = numbers_in(request.offer)
    for cid in cited:
        grounded |= numbers_in(request.snippet(cid).text)  # type: ignore[union-attr]
    unsupported = sorted(numbers_in(f"{subject}\n{body}") - grounded)
    if unsupported:
        fail("ungrounded_claim", f"numbers not found in any cited snippet or the offer: {', '.join(unsupported)}")

    placeholders = sorted(set(PLACEHOLDER.findall(f"{subject}\n{body}")))
    if placeholders:
        fail("placeholder", f"unresolved placeholders: {', '.join(placeholders)}")

    _lint_subject(subject, limits, fail)
    return ValidationReport(
        valid=not issues, issues=issues, subject_chars=len(subject), body_words=words, citations=len(cited)
    )


def _lint_subject(subject: str, limits: ValidationLimits, fail) -> None:  # type: ignore[no-untyped-def]
    """Spam-trigger lint: shouting, stacked punctuation, piled-up urgency."""
    letters = [c for c in subject if c.isalpha()]
    caps = [w for w in CAPS_WORD.findall(subject) if w not in limits.allowed_caps]
    if (len(letters) >= 8 and sum(c.isupper() for c in letters) / len(letters) > 0.6) or caps:
        fail("subject_caps", f"subject shouts in capitals ({', '.join(caps) or 'mostly upper case'})")
    if re.search(r"[!?]{2,}", subject):
        fail("subject_punctuation", "subject stacks exclamation or question marks")
    lowered = subject.lower()
    found = [p for p in limits.urgency_phrases if p in lowered]
    if len(found) > limits.max_urgency_phrases:
        fail("subject_urgency", f"subject stacks urgency phrases: {', '.join(found)}")
