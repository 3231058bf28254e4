"""Human review of a paused run (`cpo run --review`): list the variants, record approve/reject decisions.

Each decision is a row of the run's audit chain (reviewer, reason, the sha256 of the content decided
on) and is kept in `review.json`, which `cpo run --resume` hands to the paused graph. A rejected
variant falls back like a blocked one: its customers get the segment's control, or nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cpo.campaign.audit import AuditLog, content_hash, run_ledger
from cpo.campaign.rundir import (
    REVIEW_FILE,
    RUN_FILE,
    SCREENING_FILE,
    VARIANTS_FILE,
    read_json,
    read_record,
    record_audit_head,
    recorded_campaign,
    run_id_of,
    write_json,
)
from cpo.core.errors import InputError
from cpo.core.models import EmailVariant


@dataclass(frozen=True)
class ReviewItem:
    variant: EmailVariant
    screening: dict[str, Any]
    decision: dict[str, Any] | None


def _load(run_dir: Path) -> tuple[str, dict[str, Any], dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """The run's id, run.json, screening decisions and review decisions so far."""
    for name in (RUN_FILE, SCREENING_FILE, VARIANTS_FILE):
        if not (run_dir / name).is_file():
            raise InputError(f"{run_dir} has no {name}: not a run that was screened (cpo run --review)")
    record = read_record(run_dir, "cannot review")
    if not record.get("inputs", {}).get("review"):
        raise InputError(f"{run_dir} was not run with --review: its variants were exported without review")
    return run_id_of(run_dir, record), record, read_json(run_dir, SCREENING_FILE), read_json(run_dir, REVIEW_FILE, {})


def review_items(run_dir: Path) -> list[ReviewItem]:
    """Every screened variant with its screening result and decision so far (blocked ones need none)."""
    _, _, screening, decisions = _load(run_dir)
    variants = [EmailVariant.model_validate(v) for v in read_json(run_dir, VARIANTS_FILE, [])]
    return [
        ReviewItem(v, screening[v.variant_id], decisions.get(v.variant_id))
        for v in variants
        if v.variant_id in screening
    ]


def _shown_hashes(run_dir: Path, record: dict[str, Any]) -> dict[str, str]:
    """The audit hash of each variant as `cpo review` shows it (variants.json, as sent: with the campaign's call
    to action and footer)."""
    from cpo.campaign.mail.message import sent_text

    frame = recorded_campaign(record).frame
    variants = [EmailVariant.model_validate(v) for v in read_json(run_dir, VARIANTS_FILE, [])]
    return {v.variant_id: content_hash(sent_text(v, frame)) for v in variants}


def record_decisions(
    run_dir: Path,
    *,
    approve: list[str],
    reject: list[str],
    reviewer: str,
    reason: str,
) -> int:
    """Record decisions (audit rows first, then review.json); returns how many variants still await one.

    The audit's head goes to run.json and to the run's cost ledger, as screening's does.
    """
    run_id, record, screening, decisions = _load(run_dir)
    if not reviewer.strip():
        raise InputError("a decision needs a reviewer: pass --reviewer NAME")
    if reject and not reason.strip():
        raise InputError("a rejection needs a reason: pass --reason TEXT")
    both = sorted(set(approve) & set(reject))
    if both:
        raise InputError(f"variant {both[0]} is both approved and rejected")
    for variant_id in [*approve, *reject]:
        if variant_id not in screening:
            raise InputError(f"no variant {variant_id!r} in {run_dir / SCREENING_FILE}")
        if screening[variant_id]["blocked"]:
            raise InputError(f"variant {variant_id} was blocked by screening and cannot be approved or rejected")
    shown = _shown_hashes(run_dir, record)
    for variant_id in [*approve, *reject]:  # a decision binds the content the reviewer was shown
        if shown.get(variant_id) != screening[variant_id]["content_sha256"]:
            raise InputError(
                f"variant {variant_id}: what cpo review shows is not what was screened (a run file was edited?); "
                f"cpo run --resume {run_dir} screens it again"
            )
    audit = AuditLog(run_dir, run_id)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    for decision, ids in (("approve", approve), ("reject", reject)):
        for variant_id in ids:
            audit.append(
                variant_id=variant_id,
                backend="review",
                decision=decision,
                content_sha256=screening[variant_id]["content_sha256"],
                reasons=[reason] if reason else [],
                reviewer=reviewer,
            )
            decisions[variant_id] = {"decision": decision, "reviewer": reviewer, "reason": reason, "time_utc": now}
    ledger = run_ledger(record, readonly=False)
    try:
        record_audit_head(run_dir, audit.head, audit.count, ledger)
    finally:
        if ledger is not None:
            ledger.close()
    write_json(run_dir, REVIEW_FILE, decisions)
    return sum(1 for v, d in screening.items() if not d["blocked"] and v not in decisions)
