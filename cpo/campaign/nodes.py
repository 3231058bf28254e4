"""The campaign graph's nodes, as plain functions: each takes the state (and what it uses, `Tools`) and
returns a partial update. `cpo.campaign.graph` only wires them; each is tested on its own.

The model, the checkpointer and the cost tracker are never created here: the chain comes in `Tools`,
the tracker with the graph's callbacks (`config["callbacks"]`), so every email's calls land on the
campaign's root run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.graph import END
from langgraph.types import Send, interrupt

from cpo.accounting.tracker import trackers_in
from cpo.campaign import stages
from cpo.campaign.agents.assignment import DEFAULT_ARMS, assign_customers, shares_for
from cpo.campaign.agents.export import (
    address_dropped,
    customers_per_cell,
    export_campaign,
    personal_delivery,
    render_emails,
    unsent_customers,
)
from cpo.campaign.agents.generation import current_request, template_controls
from cpo.campaign.agents.preview_page import write_preview
from cpo.campaign.agents.safety import SafetyPolicy, Screen, load_policy
from cpo.campaign.agents.segmentation import Segment
from cpo.campaign.audit import AuditLog, content_hash, decided_before
from cpo.campaign.backends import build_screen, embedded_index
from cpo.campaign.backends.content_index import ContentIndex
from cpo.campaign.file_binding import bind_files
from cpo.campaign.guard import Guard
from cpo.campaign.kept import KeptEmails, is_final, rechecked, request_key
from cpo.campaign.mail.message import Frame, sent_text
from cpo.campaign.planning import campaign_of, connect, load_and_segment, plan_emails, reopened
from cpo.campaign.rundir import RETRIEVAL_FILE, SCREENING_FILE, write_json
from cpo.campaign.screening import audited_hashes, earlier_screening, screen_variants
from cpo.campaign.state import CampaignState, every_variant, ordered_variants, template_key, withheld
from cpo.core.models import EmailRequest, EmailVariant
from cpo.email.chain import EmailChain
from cpo.email.validation import ValidationLimits
from cpo.net.faults import one_line


@dataclass(frozen=True)
class Tools:
    """What the nodes use and must not create: the email chain and the guard that bounds and stops generation."""

    chain: Runnable[EmailRequest, EmailVariant]
    guard: Guard = field(default_factory=Guard)
    on_excluded: Callable[[list[tuple[str, str]]], None] | None = None  # (customer id, reason) pairs, for the log
    index: ContentIndex | None = None  # approved content to retrieve from; default: embedded SQLite FTS5
    screen: Screen | None = None  # safety severities; default: the local policy
    policy: SafetyPolicy | None = None  # threshold and compliance rules; default: data/safety_policy.yaml
    on_audit: Callable[[str, int], None] | None = None  # (head hash, rows) after each audit append
    limits: ValidationLimits | None = None  # what a kept email is checked by again; default: the chain's own
    # A resumed run's segments' tiers, so requests checkpointed by an older cpo are made as today's are.
    audiences: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def rules(self) -> ValidationLimits:
        """The validation limits kept emails are checked by: these, else the email chain's, else the defaults."""
        if self.limits is not None:
            return self.limits
        return self.chain.limits if isinstance(self.chain, EmailChain) else ValidationLimits()


def _segments(state: CampaignState) -> list[Segment]:
    return [Segment(**s) for s in state.get("segments", [])]


def load_segment(state: CampaignState, tools: Tools) -> CampaignState:
    """Load the customers into the run's database and segment them; a new pass starts with no emails."""
    inputs = state["inputs"]
    con = connect(inputs)
    try:
        loaded, segments = load_and_segment(inputs, con, tools.on_excluded)
    finally:
        con.close()
    return {
        "counts": loaded.counts(),
        "warnings": loaded.warnings(),
        "segments": [s.__dict__ for s in segments],
        "variants": None,
        "failures": None,
        "skipped": None,
        "templates": None,
    }


def retrieve_content(state: CampaignState, tools: Tools) -> CampaignState:
    """Each segment's approved content (written to retrieval.json) and the emails to write."""
    inputs = state["inputs"]
    index = tools.index or embedded_index()
    con = connect(inputs)
    try:
        found, requests = plan_emails(inputs, reopened(con, inputs, state["counts"]), _segments(state), index)
    finally:
        con.close()
    retrieval = {name: r.to_json() for name, r in found.items()}
    write_json(Path(inputs["run_dir"]), RETRIEVAL_FILE, retrieval)
    return {"retrieval": retrieval, "requests": [r.model_dump(mode="json") for r in requests]}


def fan_out(state: CampaignState) -> list[Send]:
    """One `generate` task per email request."""
    run_dir = state["inputs"]["run_dir"]
    return [Send(stages.GENERATE, {"request": r, "run_dir": run_dir}) for r in state.get("requests", [])]


async def generate(payload: dict[str, Any], config: RunnableConfig, tools: Tools) -> CampaignState:
    """One email: the kept one if it was paid for before (checked by today's rules), else the chain's, within
    the guard's bounds."""
    checkpointed = EmailRequest.model_validate(payload["request"])
    key = request_key(checkpointed)  # the key every node knows this email by
    request = current_request(checkpointed, tools.audiences)
    kept = KeptEmails(Path(payload["run_dir"]))
    earlier = kept.get(key)
    if earlier is not None:  # generated before an interruption: not paid for again, but checked again
        return {"variants": {key: rechecked(earlier, request, tools.rules())}}
    guard = tools.guard
    async with guard.slots:
        if not guard.dispatching:
            return {"skipped": {key: guard.stopped_by or "stopped"}}
        try:
            variant = await tools.chain.ainvoke(request, config)
        except Exception as exc:
            if guard.outcome(exc) == "skipped":
                return {"skipped": {key: guard.stopped_by or "interrupted"}}
            return {"failures": {key: one_line(exc)}}
    data = variant.model_dump(mode="json")
    if is_final(variant):
        # Ledger before file: an email is kept only once its calls are committed to the cost ledger.
        for tracker in trackers_in(config.get("callbacks")):
            if tracker.ledger is not None:
                await tracker.ledger.aflush()
        kept.keep(key, data)
    return {"variants": {key: data}}


def gather(state: CampaignState) -> CampaignState:
    """Every email task has returned; nothing to change, `go_on` decides whether to go on."""
    return {}


def go_on(state: CampaignState) -> str:
    """A stopped run (budget, Ctrl-C, credentials) ends here; `--resume` generates what is missing."""
    return END if state.get("skipped") else stages.TEMPLATE


def write_templates(state: CampaignState, tools: Tools) -> CampaignState:
    """cpo's own control for each segment whose model control ended invalid: no model call, nothing paid, so a
    resumed run that comes here again writes the same one (same key, same content) and pays nothing.
    Not for --per-customer runs, whose emails are each customer's own."""
    if state["inputs"].get("per_customer"):
        return {"templates": {}}
    requests = {}
    for data in state.get("requests", []):
        checkpointed = EmailRequest.model_validate(data)
        requests[request_key(checkpointed)] = current_request(checkpointed, tools.audiences)
    written = template_controls(requests, state.get("variants") or {}, tools.rules())
    return {"templates": {k: v.model_dump(mode="json") for k, v in written.items()}}


def screen(state: CampaignState, config: RunnableConfig, tools: Tools) -> CampaignState:
    """Screen every variant as it would be sent; each decision is a row of the audit chain (screening.json)."""
    inputs = state["inputs"]
    run_dir = Path(inputs["run_dir"])
    policy = tools.policy or load_policy()
    backend = tools.screen or build_screen(policy)
    requests = {request_key(r): r for r in (EmailRequest.model_validate(x) for x in state.get("requests", []))}
    requests.update({template_key(k): r for k, r in list(requests.items())})  # a template control cites its request's
    run_id = str(config.get("configurable", {}).get("thread_id") or run_dir.name)
    audited = audited_hashes(run_dir)  # the chain read once
    decisions = screen_variants(
        every_variant(state),
        requests,
        frame=campaign_of(inputs).frame,
        screen=backend,
        policy=policy,
        audit=AuditLog(run_dir, run_id),
        earlier=earlier_screening(run_dir, backend.name, audited),
        on_audit=tools.on_audit,
        audited=audited,
    )
    write_json(run_dir, SCREENING_FILE, decisions)
    return {"screening": decisions}


def review(state: CampaignState) -> CampaignState:
    """With --review, pause for a person: `cpo review` records decisions, `--resume` brings them here."""
    if not state["inputs"].get("review"):
        return {}
    screening = state.get("screening") or {}
    pending = sorted(v for v, d in screening.items() if not d["blocked"])
    hashes = {v: str(screening[v].get("content_sha256", "")) for v in pending}
    decisions = decided_before(Path(state["inputs"]["run_dir"]), hashes)
    if decisions is None:  # someone has to decide: pause
        decisions = interrupt({"awaiting_review": pending})
    return {"review": {v: decisions[v] for v in pending if v in decisions}}


def assign(state: CampaignState) -> CampaignState:
    """Every customer to one arm, deterministically from the seed and their id."""
    inputs = state["inputs"]
    campaign = campaign_of(inputs)
    con = connect(inputs)
    try:
        result = assign_customers(
            reopened(con, inputs, state["counts"]),
            seed=inputs["seed"],
            weights=campaign.allocation or None,
            holdout=campaign.holdout,
            mode=campaign.assignment,
        )
    finally:
        con.close()
    return {
        "assignment": {
            "mode": campaign.assignment,
            "shares": shares_for(DEFAULT_ARMS, campaign.allocation or None, campaign.holdout),
            "total": result.total,
            "per_arm": result.per_arm(),
            "cells": [[s, a, n] for (s, a), n in sorted(result.cells.items())],
            "small_cells": result.small_cells(),
        }
    }


def unbound(state: CampaignState, variants: list[EmailVariant], frame: Frame) -> dict[str, str]:
    """Variants whose content as sent is not the content screened (or, in a reviewed run, approved): withheld.

    The audit binds a hash of the canonical email as sent; what is exported must be exactly that."""
    screening, decisions = state.get("screening") or {}, state.get("review") or {}
    out = {}
    for v in variants:
        digest = content_hash(sent_text(v, frame))
        screened = screening.get(v.variant_id)
        approved = decisions.get(v.variant_id, {}).get("content_sha256", digest)
        if screened is None:
            out[v.variant_id] = "not screened"
        elif screened.get("content_sha256") != digest:
            out[v.variant_id] = "not screened as it would be sent (its content changed)"
        elif approved != digest:
            out[v.variant_id] = "not reviewed as it would be sent (its content changed)"
    return out


def export(state: CampaignState, config: RunnableConfig, tools: Tools) -> CampaignState:
    """What an email platform imports (and, with --render, one rendered email per customer); the send list and
    the assignments are bound in the audit by their hashes, so `cpo audit verify` finds an edit to either."""
    inputs = state["inputs"]
    variants, campaign, run_dir = ordered_variants(state), campaign_of(inputs), Path(inputs["run_dir"])
    held = {**unbound(state, variants, campaign.frame), **withheld(state)}
    con = connect(inputs)
    try:
        loaded = reopened(con, inputs, state["counts"])
        personal = None
        if inputs.get("per_customer"):
            own = {k: EmailVariant.model_validate(v) for k, v in (state.get("variants") or {}).items()}
            personal = personal_delivery(loaded, own, held)
        delivery = export_campaign(
            loaded, _segments(state), variants, campaign, run_dir, DEFAULT_ARMS, personal=personal, withheld=held
        )
        rendered = render_emails(loaded, variants, campaign, run_dir) if inputs.get("render") else None
        missing = unsent_customers(loaded)
        dropped = address_dropped(loaded)
        names = [s.name for s in _segments(state) if s.size]
        cells = customers_per_cell(loaded)
        write_preview(run_dir, names, DEFAULT_ARMS, variants, delivery.plan, cells, held, campaign)
    finally:
        con.close()
    audit = AuditLog(run_dir, str(config.get("configurable", {}).get("thread_id") or run_dir.name))
    if bind_files(run_dir, audit) and tools.on_audit is not None:
        tools.on_audit(audit.head, audit.count)
    return {
        "delivery": {
            "substituted": delivery.substituted,
            "unsent": delivery.unsent,
            "unsent_customers": missing,
            "address_dropped": dropped,
            "rendered": rendered,
            "withheld": held,
        }
    }
