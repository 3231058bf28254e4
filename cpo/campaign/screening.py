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

from cpo.campaign.agents.safety import UNAVAILABLE, SafetyPolicy, Screen, screen_variant
from cpo.campaign.audit import AuditLog, content_hash, screening_rows
from cpo.campaign.mail.message import Frame, sent_text
from cpo.campaign.rundir import AUDIT_FILE, SCREENING_FILE, read_json
from cpo.core.models import EmailRequest, EmailVariant
from cpo.email.textsafety import smuggled

CHANGED = "its content changed after it was screened (an email edited on disk?)"


def earlier_screening(run_dir: Path, backend: str, audited: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Decisions an earlier pass of this run made and audited, by the same backend, that stand: those of
    `screening.json` whose content hash is the one the audit chain's last screening row for the variant
    holds (the file is a view anyone can edit; the chain is checked). `audited`: `audited_hashes(run_dir)`."""
    found: dict[str, dict[str, Any]] = read_json(run_dir, SCREENING_FILE, {})
    return {
        v: d
        for v, d in found.items()
        if d.get("backend") == backend and not unavailable(d) and audited.get(v) == d.get("content_sha256")
    }


def audited_hashes(run_dir: Path) -> dict[str, str]:
    """The content hash of each variant's last screening row in the chain: content screened before."""
    return {v: r["content_sha256"] for v, r in screening_rows(run_dir / AUDIT_FILE).items()}


def model_text_problems(variant: EmailVariant) -> list[str]:
    """What the subject, preheader and body hold that model text may not (links, HTML, tags, hidden characters): the
    screen blocks it whatever the variant's own validation says (a kept email is a file that can be edited)."""
    found = [
        *smuggled(variant.subject, subject=True),
        *smuggled(variant.preheader, subject=True),
        *smuggled(variant.body, subject=False),
    ]
    return [f"{s.code}: {s.message}" for s in found]


def unavailable(decision: Mapping[str, Any]) -> bool:
    return any(str(r).startswith(UNAVAILABLE) for r in decision.get("reasons", []))


def screen_variants(
    variants: Mapping[str, Mapping[str, Any]],
    requests: Mapping[str, EmailRequest],
    *,
    frame: Frame,
    screen: Screen,
    policy: SafetyPolicy,
    audit: AuditLog,
    earlier: Mapping[str, dict[str, Any]],
    on_audit: Callable[[str, int], None] | None = None,
    audited: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every variant (by request key) screened as it would be sent: decisions by variant id, each audited."""
    decisions: dict[str, dict[str, Any]] = {}
    for key, data in variants.items():
        variant = EmailVariant.model_validate(data)
        if variant.variant_id in decisions:
            continue
        prior = earlier.get(variant.variant_id)
        digest = content_hash(sent_text(variant, frame))
        if prior is not None and prior.get("content_sha256") == digest:  # already screened and audited as it is
            decisions[variant.variant_id] = prior
            continue
        cited = list(requests[key].snippets) if key in requests else []
        decision = screen_variant(variant, frame=frame, screen=screen, policy=policy, cited=cited)
        before = (audited or {}).get(variant.variant_id)
        # A kept email edited on disk; not one audited before emails had a preheader, a call to action and a
        # postal address (its text as then sent, the footer alone around it, is what the audit holds).
        bare = Frame(footer=frame.footer)
        changed = before is not None and before != digest
        if changed and before == content_hash(sent_text(variant.model_copy(update={"preheader": ""}), bare)):
            changed = False
        reasons = [CHANGED] if changed else []
        reasons += model_text_problems(variant)
        if reasons:
            decision = decision.model_copy(update={"blocked": True, "reasons": [*reasons, *decision.reasons]})
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
