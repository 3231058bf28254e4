"""Screening a campaign's variants with the audit: each decision is screened once, audited once.

A resumed run keeps the decisions an earlier pass made by the same backend (its inputs, the safety
policy included, are fingerprinted) for content whose hash is the one audited, so nothing is audited
twice; a decision that was "screening unavailable" is screened again, and a variant whose content no
longer has the audited hash (a kept email edited on disk) is blocked, with a new audit row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cpo.campaign.agents.safety import UNAVAILABLE, SafetyPolicy, Screen, screen_variant, sent_text
from cpo.campaign.audit import AuditLog, content_hash
from cpo.campaign.rundir import SCREENING_FILE, read_json
from cpo.core.models import EmailRequest, EmailVariant

CHANGED = "its content changed after it was screened (an email edited on disk?)"


def earlier_screening(run_dir: Path, backend: str) -> dict[str, dict[str, Any]]:
    """Decisions an earlier pass of this run made and audited, by the same backend, that stand."""
    found: dict[str, dict[str, Any]] = read_json(run_dir, SCREENING_FILE, {})
    return {v: d for v, d in found.items() if d.get("backend") == backend and not unavailable(d)}


def unavailable(decision: Mapping[str, Any]) -> bool:
    return any(str(r).startswith(UNAVAILABLE) for r in decision.get("reasons", []))


def screen_variants(
    variants: Mapping[str, Mapping[str, Any]],
    requests: Mapping[str, EmailRequest],
    *,
    footer: str,
    screen: Screen,
    policy: SafetyPolicy,
    audit: AuditLog,
    earlier: Mapping[str, dict[str, Any]],
    on_audit: Callable[[str, int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every variant (by request key) screened as it would be sent: decisions by variant id, each audited."""
    decisions: dict[str, dict[str, Any]] = {}
    for key, data in variants.items():
        variant = EmailVariant.model_validate(data)
        if variant.variant_id in decisions:
            continue
        prior = earlier.get(variant.variant_id)
        digest = content_hash(sent_text(variant, footer))
        if prior is not None and prior.get("content_sha256") == digest:  # already screened and audited as it is
            decisions[variant.variant_id] = prior
            continue
        cited = list(requests[key].snippets) if key in requests else []
        decision = screen_variant(variant, footer=footer, screen=screen, policy=policy, cited=cited)
        if prior is not None:  # the same variant with other content: a kept email edited on disk
            decision = decision.model_copy(update={"blocked": True, "reasons": [CHANGED, *decision.reasons]})
        decisions[variant.variant_id] = decision.model_dump()
        audit.append(
            variant_id=variant.variant_id,
            backend=decision.backend,
            decision="block" if decision.blocked else "pass",
            content_sha256=decision.content_sha256,
            severities=decision.severities,
            reasons=decision.reasons,
        )
        if on_audit is not None:
            on_audit(audit.head, audit.count)
    return decisions
