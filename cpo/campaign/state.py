"""What the campaign graph carries between nodes: references and summaries, never customer rows.

Customer rows live in the run's DuckDB file; state holds the inputs, segment summaries, the email
requests and the variants, keyed by request (`cpo.campaign.kept.request_key`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, NotRequired, TypedDict

from cpo.campaign.kept import request_key
from cpo.core.models import EmailRequest, EmailVariant


class Inputs(TypedDict):
    customers: str
    campaign: str | None
    suppress: str | None
    seed: int
    run_dir: str
    render: NotRequired[bool]  # also write one rendered email per customer (small lists only)
    per_customer: NotRequired[bool]  # one email per customer, for its arm's tone (small lists only)
    review: NotRequired[bool]  # pause after screening until a person approves or rejects each variant
    platform: NotRequired[str | None]  # export for this email platform when the run ends (`cpo run --platform`)


def merged(old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any]:
    """Entries keyed by request; `None` clears them (a new pass over a finished thread starts empty)."""
    return {} if new is None else {**(old or {}), **new}


class CampaignState(TypedDict, total=False):
    inputs: Inputs
    counts: dict[str, int]
    segments: list[dict[str, Any]]
    requests: list[dict[str, Any]]
    variants: Annotated[dict[str, dict[str, Any]] | None, merged]  # request key -> EmailVariant
    failures: Annotated[dict[str, str] | None, merged]  # request key -> the error, in one line
    skipped: Annotated[dict[str, str] | None, merged]  # request key -> why it was not generated (budget, Ctrl-C)
    # control request key -> the control cpo wrote itself (source: template) where the model's ended invalid
    templates: Annotated[dict[str, dict[str, Any]] | None, merged]
    retrieval: dict[str, dict[str, Any]]  # segment -> what retrieval searched, found and chose
    screening: dict[str, dict[str, Any]]  # variant id -> SafetyDecision
    review: dict[str, dict[str, Any]]  # variant id -> {"decision": "approve" | "reject", "reviewer", "reason"}
    assignment: dict[str, Any]
    delivery: dict[str, Any]
    warnings: list[str]  # said on stderr when they arise and kept in run.json (e.g. no consent column)


# Why a variant is not sent, as the summary and templates.json say it (an invalid one: "invalid").
INVALID, BLOCKED, REJECTED = "invalid", "blocked by screening", "rejected in review"


def template_key(key: str) -> str:
    """The key a template control is screened under: its control request's key, marked."""
    return f"{key}:template"


def every_variant(state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The generated emails and the template controls, by key (a template's: `template_key` of its request's)."""
    templates = state.get("templates") or {}
    return {**(state.get("variants") or {}), **{template_key(k): v for k, v in templates.items()}}


def ordered_variants(state: Mapping[str, Any]) -> list[EmailVariant]:
    """The generated emails in request order (segment, then arm), each template control after the control it
    stands in for."""
    variants = every_variant(state)
    keys = [request_key(EmailRequest.model_validate(r)) for r in state.get("requests", [])]
    return [EmailVariant.model_validate(variants[k]) for key in keys for k in (key, template_key(key)) if k in variants]


def withheld(state: Mapping[str, Any]) -> dict[str, str]:
    """Variants that must not be sent, with why: blocked by screening, or rejected in review."""
    out = {
        v: f"{BLOCKED}: " + "; ".join(d["reasons"]) for v, d in (state.get("screening") or {}).items() if d["blocked"]
    }
    for v, d in (state.get("review") or {}).items():
        if d.get("decision") == "reject":
            who = d.get("reviewer") or "a reviewer"
            out[v] = f"{REJECTED} by {who}: {d.get('reason') or 'no reason given'}"
    return out
