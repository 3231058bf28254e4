"""Pydantic models at the seams: what goes into the email chain and what comes out."""

from __future__ import annotations

import hashlib
import html
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cpo.costs import Usage

Tone = Literal["urgent", "informational", "friendly", "control"]
TONES: tuple[Tone, ...] = ("urgent", "informational", "friendly", "control")
Source = Literal["azure", "openai-compatible", "offline"]
FeatureValue = str | int | float | bool


class Snippet(BaseModel):
    """One item of approved content: the only source of facts an email may state."""

    model_config = ConfigDict(frozen=True)
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    title: str = Field(min_length=1)
    section: str = ""
    text: str = Field(min_length=1)


class SegmentProfile(BaseModel):
    """A customer segment: a name and the features the email is personalized on."""

    name: str = Field(min_length=1)
    description: str = ""
    features: dict[str, FeatureValue]

    @field_validator("features")
    @classmethod
    def _non_empty(cls, value: dict[str, FeatureValue]) -> dict[str, FeatureValue]:
        if not value:
            raise ValueError("a segment needs at least one feature (e.g. tier, recency) to personalize on")
        return value


class EmailRequest(BaseModel):
    """Input of the email chain."""

    segment: SegmentProfile
    offer: str = Field(min_length=1)
    tone: Tone
    snippets: list[Snippet] = Field(min_length=1)
    merge_fields: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique_snippet_ids(self) -> EmailRequest:
        ids = [s.id for s in self.snippets]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate snippet ids: {', '.join(dupes)}")
        return self

    def snippet(self, snippet_id: str) -> Snippet | None:
        return next((s for s in self.snippets if s.id == snippet_id), None)


class EmailDraft(BaseModel):
    """What the model returns (structured output)."""

    subject: str = Field(description="Plain-text subject line, no label, no markdown")
    body: str = Field(description="Plain-text email body, paragraphs separated by blank lines")
    citations: list[str] = Field(description="Ids of the approved snippets whose facts the email uses")


class Citation(BaseModel):
    """A citation resolved to the approved content it points at."""

    id: str
    title: str
    section: str
    quote: str


class ValidationIssue(BaseModel):
    code: str
    message: str


class ValidationReport(BaseModel):
    """Result of checking a draft; `valid` is False whenever there is any issue."""

    valid: bool
    issues: list[ValidationIssue] = Field(default_factory=list)
    subject_chars: int = 0
    body_words: int = 0
    citations: int = 0

    @property
    def reasons(self) -> list[str]:
        return [i.message for i in self.issues]


class EmailVariant(BaseModel):
    """One generated email with everything needed to audit it: prompts, model, cost, checks."""

    variant_id: str
    segment: str
    tone: Tone
    subject: str
    body: str
    citations: list[Citation]
    prompt_version: str
    model: str
    usage: Usage
    latency_s: float
    attempts: int
    validation: ValidationReport
    source: Source
    fallback_used: bool = False
    run_id: str | None = None

    @property
    def valid(self) -> bool:
        return self.validation.valid

    @staticmethod
    def make_id(segment: str, tone: str, subject: str, body: str) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", segment.lower()).strip("-")
        digest = hashlib.sha256(f"{subject}\n{body}".encode()).hexdigest()[:8]
        return f"{slug}-{tone}-{digest}"

    def _repr_html_(self) -> str:
        status = "valid" if self.valid else "INVALID: " + "; ".join(self.validation.reasons)
        cites = "".join(f"<li><b>{html.escape(c.id)}</b> {html.escape(c.title)}</li>" for c in self.citations)
        body = html.escape(self.body).replace("\n", "<br>")
        return (
            f"<div><b>{html.escape(self.segment)} / {self.tone}</b> ({self.source}, {html.escape(self.model)}, "
            f"{self.usage.total_tokens} tokens, {self.usage.cost_display}) - {html.escape(status)}"
            f"<h4>{html.escape(self.subject)}</h4><p>{body}</p><ul>{cites}</ul></div>"
        )

    def to_row(self) -> dict[str, Any]:
        """Flat dict for tables and DataFrames."""
        return {
            "variant_id": self.variant_id,
            "segment": self.segment,
            "tone": self.tone,
            "valid": self.valid,
            "subject": self.subject,
            "body_words": self.validation.body_words,
            "citations": len(self.citations),
            "total_tokens": self.usage.total_tokens,
            "cost_usd": None if self.usage.cost_usd is None else float(self.usage.cost_usd),
            "attempts": self.attempts,
            "model": self.model,
            "source": self.source,
            "prompt_version": self.prompt_version,
        }
