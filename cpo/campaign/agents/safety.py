"""Safety agent: screen every variant as it would be sent (subject, body, unsubscribe footer) before export.

Severities per category (Hate, Violence, SelfHarm, Sexual; 0-7) come from Azure AI Content Safety when
AZURE_CONTENT_SAFETY_ENDPOINT is set, else from the local policy (`data/safety_policy.yaml`). The
policy's marketing-compliance rules (unsupported guarantees, "risk-free", the footer) apply with either.
The rule is stated once: **a variant is blocked when a severity is at or above the threshold** (default
4), or a compliance rule matches. Screening fails closed: an error blocks with "screening unavailable".
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cpo.campaign.campaign_file import UNSUBSCRIBE_TAG
from cpo.campaign.mail.message import Frame, sent_text
from cpo.core.errors import InputError, first_line
from cpo.core.files import load_yaml_model
from cpo.core.models import EmailVariant, Snippet
from cpo.core.resources import bundled
from cpo.email.textsafety import fold

CATEGORIES = ("Hate", "Violence", "SelfHarm", "Sexual")
UNAVAILABLE = "screening unavailable"


class ComplianceRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    patterns: list[str] = Field(min_length=1)
    unless_cited: bool = False

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {pattern!r} ({exc})") from None
        return value


class SafetyPolicy(BaseModel):
    """The local policy file: threshold, terms per category with severities, compliance rules."""

    model_config = ConfigDict(extra="forbid")
    threshold: int = Field(4, ge=1, le=7)
    categories: dict[str, dict[str, int]] = Field(default_factory=dict)
    compliance: list[ComplianceRule] = Field(default_factory=list)
    footer_required: bool = True

    @field_validator("categories")
    @classmethod
    def _known(cls, value: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        for category, terms in value.items():
            if category not in CATEGORIES:
                raise ValueError(f"unknown category {category!r}; categories are {', '.join(CATEGORIES)}")
            for term, severity in terms.items():
                if not 0 <= severity <= 7:
                    raise ValueError(f"{category}.{term}: severity must be 0-7 (got {severity})")
        return value


def default_policy_file() -> Path:
    return bundled("data") / "safety_policy.yaml"


def load_policy(path: Path | None = None) -> SafetyPolicy:
    return load_yaml_model(path or default_policy_file(), SafetyPolicy, "safety policy", InputError)


class Screen(Protocol):
    """Severity per category (0-7) of a text; raises when it cannot tell."""

    name: str

    def analyze(self, text: str) -> dict[str, int]: ...


class LocalScreen:
    """The policy's terms: a category's severity is that of its most severe term found (whole words)."""

    name = "local-policy"

    def __init__(self, policy: SafetyPolicy) -> None:
        self.terms = [
            (category, re.compile(rf"(?<![\w-]){re.escape(term)}(?![\w-])", re.I), severity)
            for category, terms in policy.categories.items()
            for term, severity in terms.items()
        ]

    def analyze(self, text: str) -> dict[str, int]:
        out = dict.fromkeys(CATEGORIES, 0)
        for category, pattern, severity in self.terms:
            if severity > out[category] and pattern.search(text):
                out[category] = severity
        return out


class SafetyDecision(BaseModel):
    """One variant's screening result, as the audit and the summary record it."""

    variant_id: str
    segment: str
    tone: str
    backend: str
    blocked: bool
    reasons: list[str] = Field(default_factory=list)
    severities: dict[str, int] = Field(default_factory=dict)
    threshold: int
    content_sha256: str


def footer_problems(frame: Frame, policy: SafetyPolicy, *, local_terms: bool) -> list[str]:
    """What in the lines cpo adds (the footer, the postal address, the calls to action) would block every
    email: the compliance rules no citation can excuse (they apply with either screening backend), the
    policy's terms when the local policy screens (`local_terms`), and a missing unsubscribe link. Checked
    before the first model call, so such a campaign costs nothing."""
    reasons = []
    fixed, footer = frame.fixed_text, frame.footer
    if local_terms:
        severities = LocalScreen(policy).analyze(fixed)
        reasons += [f"{c} severity {n} is at or above the threshold {policy.threshold}"
                    for c, n in severities.items() if n >= policy.threshold]  # fmt: skip
    for rule in (r for r in policy.compliance if not r.unless_cited):
        found = next((m for m in (re.search(p, fixed, re.I) for p in rule.patterns) if m), None)
        if found:
            reasons.append(f"{rule.name}: {found.group(0)!r}")
    if policy.footer_required and UNSUBSCRIBE_TAG.search(footer) is None:
        reasons.append("the unsubscribe footer has no {{ unsubscribe_url }} link")
    return reasons


def screen_variant(
    variant: EmailVariant,
    *,
    frame: Frame,
    screen: Screen,
    policy: SafetyPolicy,
    cited: list[Snippet] | None = None,
) -> SafetyDecision:
    """Screen one variant as sent (`cpo.campaign.mail.message`); any error of the screen blocks it ("screening
    unavailable": fail closed)."""
    text = sent_text(variant, frame)
    decision: dict[str, Any] = {
        "variant_id": variant.variant_id,
        "segment": variant.segment,
        "tone": variant.tone,
        "backend": screen.name,
        "threshold": policy.threshold,
        "content_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }
    reasons: list[str] = []
    try:
        analysis = screen.analyze(text)
        severities = {c: int(analysis.get(c, 0)) for c in CATEGORIES}
    except Exception as exc:  # fail closed, whatever the backend raised
        brief = first_line(exc)
        return SafetyDecision(**decision, blocked=True, reasons=[f"{UNAVAILABLE}: {brief}"], severities={})
    reasons += [
        f"{category} severity {severity} is at or above the threshold {policy.threshold}"
        for category, severity in severities.items()
        if severity >= policy.threshold
    ]
    # Rules match the text as sent and its folded form: a look-alike or zero-width character hides no claim.
    folded = fold(text)
    if isinstance(screen, LocalScreen) and folded != text:
        for category, severity in screen.analyze(folded).items():
            if severity > severities.get(category, 0):
                if severity >= policy.threshold > severities.get(category, 0):
                    reasons.append(f"{category} severity {severity} is at or above the threshold {policy.threshold}")
                severities[category] = severity
    quoted = " ".join(s.text for s in cited or [])
    quoted_folded = fold(quoted)
    for rule in policy.compliance:
        for pattern in rule.patterns:
            found = re.search(pattern, text, re.I) or re.search(pattern, folded, re.I)
            excused = re.search(pattern, quoted, re.I) or re.search(pattern, quoted_folded, re.I)
            if found and not (rule.unless_cited and excused):
                reasons.append(f"{rule.name}: {found.group(0)!r}")
                break
    if policy.footer_required and not UNSUBSCRIBE_TAG.search(frame.footer):
        reasons.append("the unsubscribe footer has no {{ unsubscribe_url }} link")
    return SafetyDecision(**decision, blocked=bool(reasons), reasons=reasons, severities=severities)
