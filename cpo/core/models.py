"""Pydantic models at the seams: what goes into the email chain and what comes out."""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cpo.core.usage import Usage

Tone = Literal["urgent", "informational", "friendly", "control"]
TONES: tuple[Tone, ...] = ("urgent", "informational", "friendly", "control")
Source = Literal["azure", "openai-compatible", "offline", "template"]  # template: written by cpo, no model
FeatureValue = str | int | float | bool


class Fact(BaseModel):
    """One fact a snippet states, declared in its front matter so grounding need not guess it from prose.

    `value` is the number as written ("$99", "25%", "2-day", "3"); `unit` what it counts ("USD", "percent",
    "day", "month", "point"); `period` the time it is per ("month", "year", or "" for a one-off);
    `entity` whom or what it belongs to ("Gold", "Platinum", "annual plan").
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    value: str = Field(min_length=1)
    unit: str = ""
    period: str = ""
    entity: str = ""


class Snippet(BaseModel):
    """One item of approved content: the only source of facts an email may state."""

    model_config = ConfigDict(frozen=True)
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    title: str = Field(min_length=1)
    section: str = ""
    text: str = Field(min_length=1)
    facts: tuple[Fact, ...] = ()
    # Who may be told this: "all", or tiers (Bronze, Silver, Gold, Platinum). Retrieval filters on it.
    audience: tuple[str, ...] = ("all",)


class SegmentProfile(BaseModel):
    """A customer segment: a name and the features the email is personalized on.

    `name` identifies the segment in cpo's files; it never reaches a prompt (a user's segment name is not
    copy for customers). `audience` is the tiers of every customer the email reaches, so the email may call
    its readers by a tier only if all of them hold it; empty: the `tier` feature, if any.
    """

    name: str = Field(min_length=1)
    description: str = ""
    features: dict[str, FeatureValue]
    audience: tuple[str, ...] = ()

    @property
    def readers(self) -> tuple[str, ...]:
        """The tiers of the email's readers ((): unknown)."""
        tier = self.features.get("tier")
        return self.audience or ((tier,) if isinstance(tier, str) and tier else ())

    @field_validator("features")
    @classmethod
    def _non_empty(cls, value: dict[str, FeatureValue]) -> dict[str, FeatureValue]:
        if not value:
            raise ValueError("a segment needs at least one feature (e.g. tier, recency) to personalize on")
        return value


GREETING_TAG = '{{ first_name | default: "there" }}'


class Sender(BaseModel):
    """Who the email is from. cpo, not the model, writes the greeting and the sign-off from this.

    `greeting` is a template where `{name}` becomes the customer's first name when the request carries
    one, else the Liquid merge tag the export fills in per customer (`{{ first_name | default: "there" }}`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    brand: str = Field("Northwind Supply", min_length=1)
    greeting: str = Field("Hi {name},", min_length=1)
    sign_off: str = Field("Best regards,\nThe Northwind Plus team", min_length=1)
    # The sender's postal address, in every email's footer (CAN-SPAM and similar laws ask commercial email for
    # one); a campaign file must give it (`cpo.campaign.campaign_file`).
    postal_address: str = ""

    @field_validator("greeting")
    @classmethod
    def _has_name(cls, value: str) -> str:
        if "{name}" not in value:
            raise ValueError("the greeting must contain {name} (the customer's name or a merge tag goes there)")
        return value

    def greeting_line(self, first_name: str | None) -> str:
        return self.greeting.replace("{name}", first_name or GREETING_TAG)


DEFAULT_TIERS = ("Bronze", "Silver", "Gold", "Platinum")
TIER_NAME = re.compile(r"[^\W_][^\W_'-]*(?:['-][^\W_]+)*(?: [^\W_][^\W_'-]*(?:['-][^\W_]+)*){0,2}")


def vocabulary_words(words: Sequence[str]) -> list[str]:
    """Tiers or brand words as a vocabulary takes them: non-empty, stripped, unique regardless of case."""
    if any(not word.strip() for word in words):
        raise ValueError("every entry must be a non-empty word")
    if len({word.strip().lower() for word in words}) != len(words):
        raise ValueError("entries must be unique")
    return [word.strip() for word in words]


def tier_names(tiers: Sequence[str]) -> list[str]:
    """Tiers as a vocabulary takes them. A tier reaches prompts and emails, so it is a name of letters and
    digits, not a sentence, a link or markup."""
    for tier in tiers:
        if not TIER_NAME.fullmatch(tier.strip()):
            raise ValueError(
                f"tier {tier[:40]!r} is not a tier name: use 1-3 words of letters and digits (e.g. Gold, VIP Plus)"
            )
    return list(tiers)


class Vocabulary(BaseModel):
    """The retailer's words the grounding check reads entities with: data, set per campaign file.

    `tiers`: the loyalty tiers, which exclude each other ("$25 for Gold" is not "$25 for Platinum").
    `brand_words`: words that may stand before an entity's name without changing whom it names, so
    "Northwind Plus members" and "members" are the same entity. The defaults are the sample retailer's.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    tiers: tuple[str, ...] = DEFAULT_TIERS
    brand_words: tuple[str, ...] = ("Northwind", "Plus")

    @field_validator("tiers", "brand_words")
    @classmethod
    def _words(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(vocabulary_words(value))

    @field_validator("tiers")
    @classmethod
    def _tier_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(tier_names(value))


class EmailRequest(BaseModel):
    """Input of the email chain."""

    segment: SegmentProfile
    offer: str = Field(min_length=1)
    tone: Tone
    snippets: list[Snippet] = Field(min_length=1)
    merge_fields: dict[str, str] = Field(default_factory=dict)
    sender: Sender = Field(default_factory=Sender)
    vocabulary: Vocabulary = Field(default_factory=Vocabulary)

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
    """What the model returns (structured output). The body is the paragraphs only: cpo adds the
    greeting and sign-off, so the model has nothing to invent (no `[Customer Name]`, no `[Your Name]`)."""

    subject: str = Field(description="Plain-text subject line, no label, no markdown")
    preheader: str = Field("", description="Inbox preview text after the subject: one plain sentence")
    body: str = Field(
        description="The email's paragraphs only, plain text, separated by blank lines; no greeting, no sign-off"
    )
    citations: list[str] = Field(description="Ids of the approved snippets whose facts the email uses")


class GuidedDraft(BaseModel):
    """What a small model returns under guided composition (`cpo.email.guided`): its choices, by number, from
    the lists in its request; cpo writes the email from them, so nothing in it is the model's own text."""

    subject: int = Field(description="Number of the subject line chosen")
    opening: int = Field(description="Number of the opening line chosen")
    facts: list[int] = Field(description="Numbers of the facts chosen, most important first")
    closing: int = Field(description="Number of the closing line chosen")


class Citation(BaseModel):
    """A citation resolved to the approved content it points at."""

    id: str
    title: str
    section: str
    quote: str


class ValidationIssue(BaseModel):
    """One broken rule. `message` says it with the measured value and the target, for people and repairs."""

    code: str
    message: str
    field: Literal["subject", "preheader", "body", "citations", "reply", ""] = ""
    excerpts: list[str] = Field(default_factory=list, description="the text at fault, to repair only its paragraph")


class Normalization(BaseModel):
    """A change cpo made to the model's text, from a closed list (see `cpo.email.normalize`)."""

    # "markdown_emphasis" | "subject_label" | "greeting_replaced" | "sign_off_replaced" | "choice_changed" |
    # "preheader_written"
    code: str
    detail: str


Step = Literal["draft", "rewrite", "fresh", "subject", "paragraph", "extend", "shorten", "judge"]


class Attempt(BaseModel):
    """One model call made for an email: what was asked, what it cost, what the checks found."""

    step: Step
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    issues: list[str] = Field(default_factory=list, description="codes of the checks it failed")
    repeated: bool = Field(False, description="the answer gave back what it was asked to change")
    varied: bool = Field(False, description="sent with varied sampling (temperature, seed) after a repeated answer")
    error: str | None = None
    discarded: str | None = Field(
        None, description="why a repair answer was not spliced in (meta-text, greeting, sign-off, placeholder...)"
    )


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

    @property
    def codes(self) -> set[str]:
        return {i.code for i in self.issues}


class EmailVariant(BaseModel):
    """One generated email with everything needed to audit it: prompts, model, cost, checks."""

    variant_id: str
    segment: str
    tone: Tone
    subject: str
    body: str
    citations: list[Citation]
    prompt_version: str
    preheader: str = ""  # the inbox preview line; "" in runs made before it was written
    model: str
    usage: Usage
    latency_s: float
    attempts: int
    validation: ValidationReport
    source: Source
    fallback_used: bool = False
    run_id: str | None = None
    steps: list[Attempt] = Field(default_factory=list, description="every model call made for this email")
    normalizations: list[Normalization] = Field(default_factory=list)
    valid_before_normalization: bool = False

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
            "repairs": max(0, self.attempts - 1),
            "normalizations": len(self.normalizations),
            "valid_before_normalization": self.valid_before_normalization,
            "model": self.model,
            "source": self.source,
            "prompt_version": self.prompt_version,
        }
