"""`cpo run` as a library: drive the campaign graph, keep every paid email, report progress and stops.

Promises, each tested in `tests/test_runner.py` and `tests/test_campaign_run.py`:

- **Ledger before file.** An email is kept (in `emails/`, then `variants.json`) only after its calls
  are committed to the cost ledger, so a killed run never leaves a produced email without its cost.
- **Resume.** The graph is checkpointed (SQLite in the run directory, or Postgres); `--resume` goes on
  from the last checkpoint in the same cost session and never pays again for a kept email.
- **Ctrl-C.** The first SIGINT stops new emails, gives calls in flight a short grace period, then
  cancels them (each becomes a call of unknown cost); emails whose calls completed are kept, the files
  are written and the run ends with "interrupted: ..." and exit code 130. A second SIGINT writes the
  files and exits at once.
- **Budget.** A refusal stops new emails; calls in flight finish; exit code 3.
- **Authentication.** The first 401/403 stops the run instead of failing every email the same way.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.runnables import Runnable
from langgraph.types import Command

from cpo.accounting.tracker import CostTracker
from cpo.campaign import stages
from cpo.campaign.agents.segmentation import Segment
from cpo.campaign.backends.content_index import ContentIndex
from cpo.campaign.checkpoints import open_checkpointer
from cpo.campaign.graph import build_pipeline
from cpo.campaign.guard import Guard
from cpo.campaign.kept import KeptEmails, request_key
from cpo.campaign.nodes import Tools
from cpo.campaign.rundir import COSTS_FILE, VARIANTS_FILE, write_json
from cpo.campaign.runlog import RunLog
from cpo.campaign.state import Inputs, merged, ordered_variants
from cpo.core.cancel import current_stop
from cpo.core.errors import ExitCode, InputError
from cpo.core.models import EmailRequest, EmailVariant

__all__ = ["CampaignRunner", "RunResult"]

GRACE_S = 0.5


def produced_line(produced: int, total: int, tracker: CostTracker) -> str:
    """'N of M emails, $X spent' (calls of unknown cost shown beside the known sum)."""
    return f"{produced} of {total} emails, {tracker.session.cost_display} spent"


def review_decisions(run_dir: Path, state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The decisions `cpo review` recorded, for every variant awaiting one; a one-line error if any is missing.

    They are read from the audit chain, after checking it, never from `review.json` (a view anyone can edit).
    """
    from cpo.campaign.audit import recorded_heads, review_rows, verify
    from cpo.campaign.rundir import AUDIT_FILE

    run_id, heads = recorded_heads(run_dir)
    verdict = verify(run_dir / AUDIT_FILE, run_id, heads)
    if not verdict.ok:
        raise InputError(f"cannot resume {run_dir}: its audit does not verify ({verdict.problem})")
    decisions: dict[str, dict[str, Any]] = dict(review_rows(run_dir / AUDIT_FILE))
    pending = [v for v, d in (state.get("screening") or {}).items() if not d["blocked"]]
    missing = [v for v in pending if v not in decisions]
    if missing:
        raise InputError(
            f"{len(missing)} of {len(pending)} variants await a review decision (e.g. {missing[0]}): "
            f"cpo review {run_dir}"
        )
    return decisions


def stale_screening(state: dict[str, Any]) -> bool:
    """Is any variant awaiting review screened as other text than it is sent as today? (A run paused for review
    by a cpo that sent emails without the parts it adds now.)"""
    from cpo.campaign.audit import content_hash
    from cpo.campaign.mail.message import sent_text
    from cpo.campaign.planning import campaign_of
    from cpo.campaign.state import every_variant

    frame = campaign_of(state["inputs"]).frame
    screening = state.get("screening") or {}
    for data in every_variant(state).values():
        variant = EmailVariant.model_validate(data)
        screened = screening.get(variant.variant_id)
        if (
            screened
            and not screened["blocked"]
            and screened["content_sha256"] != content_hash(sent_text(variant, frame))
        ):
            return True
    return False


@dataclass
class RunResult:
    """What a run produced and why it ended."""

    run_dir: Path
    total: int = 0
    variants: list[EmailVariant] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    not_run: int = 0
    stopped_by: str | None = None  # "budget" | "auth" | "config" | "interrupted" | "review"
    stop_message: str | None = None
    segments: list[Segment] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    assignment: dict[str, Any] = field(default_factory=dict)
    delivery: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    per_customer: bool = False
    screening: dict[str, Any] = field(default_factory=dict)
    review: dict[str, Any] = field(default_factory=dict)

    warnings: list[str] = field(default_factory=list)

    @property
    def unsent_customers(self) -> dict[str, int]:
        """Segment -> customers in the campaign who get no email (nothing sendable for them)."""
        return {s: n for s, n in (self.delivery.get("unsent_customers") or {}).items() if n}

    @property
    def exit_code(self) -> ExitCode:
        """Ctrl-C, then the budget, then a pause for review; then bad credentials; then 1 when an email failed
        or any customer of the campaign gets nothing (invalid, blocked or rejected, with no control to send)."""
        stops = {
            "interrupted": ExitCode.INTERRUPTED,
            "budget": ExitCode.BUDGET,
            "review": ExitCode.REVIEW,
            "auth": ExitCode.BAD_INPUT,
            "config": ExitCode.BAD_INPUT,
        }
        if self.stopped_by in stops:
            return stops[self.stopped_by]
        return ExitCode.FAILED if self.failures or self.unsent_customers else ExitCode.OK


class CampaignRunner:
    """Runs (or resumes) one campaign thread of the graph with at most `concurrency` emails in flight."""

    def __init__(
        self,
        inputs: Inputs,
        chain: Runnable[EmailRequest, EmailVariant],
        tracker: CostTracker,
        *,
        run_id: str,
        root_run_id: str,
        concurrency: int = 4,
        checkpoint_url: str | None = None,
        index: ContentIndex | None = None,
        on_audit: Callable[[str, int], None] | None = None,
        log: RunLog | None = None,
        extra: dict[str, Any] | None = None,
        on_progress: Callable[[str, int, int], None] | None = None,
        say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    ) -> None:
        self.inputs, self.chain, self.tracker = inputs, chain, tracker
        self.run_dir = Path(inputs["run_dir"])
        self.run_id, self.root_run_id = run_id, root_run_id
        self.guard = Guard(concurrency)
        self.checkpoint_url = checkpoint_url
        self.index, self.on_audit = index, on_audit
        self.log = log
        self.extra = extra or {}
        self.on_progress = on_progress
        self.say = say
        self.result = RunResult(run_dir=self.run_dir)
        self._state: dict[str, Any] = {}
        self._sigints = 0
        self._started = time.perf_counter()
        self._mark = self._started

    # -- files ------------------------------------------------------------------------------------

    def _kept_variants(self) -> list[EmailVariant]:
        """Emails in request order: those in graph state, else those kept on disk (after a second Ctrl-C)."""
        state = dict(self._state)
        state["variants"] = {**KeptEmails(self.run_dir).all(), **(state.get("variants") or {})}
        return ordered_variants(state)

    def save(self) -> None:
        """variants.json (emails whose costs are committed) and costs.json, both replaced atomically."""
        produced = self._kept_variants()
        write_json(self.run_dir, VARIANTS_FILE, [v.model_dump(mode="json") for v in produced], end="")
        write_json(
            self.run_dir,
            COSTS_FILE,
            {
                **self.tracker.summary(),
                **self.extra,
                "emails": {"requested": self.result.total, "produced": len(produced)},
                "stopped_by": self.guard.stopped_by,
                "variants": {v.variant_id: {"run_id": v.run_id, **v.usage.to_json_dict()} for v in produced},
                "errors": self.result.failures,
            },
            end="",
        )

    # -- running ----------------------------------------------------------------------------------

    async def run(self) -> RunResult:
        loop = asyncio.get_running_loop()
        token = current_stop.set(self.guard.signal)
        installed = self._install_sigint(loop)
        try:
            async with open_checkpointer(self.run_dir, self.checkpoint_url) as saver:
                on_excluded = self.log.excluded if self.log is not None else None
                tools = Tools(self.chain, self.guard, on_excluded, index=self.index, on_audit=self.on_audit)
                graph = build_pipeline(tools, saver)
                config: Any = {
                    "configurable": {"thread_id": self.run_id},
                    "callbacks": [self.tracker],
                    "run_id": self.root_run_id,
                    "run_name": f"campaign {self.run_id}",
                }
                snapshot = await graph.aget_state(config)
                start: Any = {"inputs": self.inputs}
                if snapshot.next:  # killed mid-way, or paused for review: go on from the last checkpoint
                    start = None
                    self._state = dict(snapshot.values)
                    if not self.inputs.get("per_customer"):
                        tools.audiences.update(
                            {s["name"]: tuple(s.get("tiers") or ()) for s in self._state.get("segments", [])}
                        )
                    if any(task.interrupts for task in snapshot.tasks) and stale_screening(self._state):
                        # Screened as the emails were sent then (before a preheader, a call to action and a postal
                        # address): screened again as sent now, then paused for review again.
                        await graph.aupdate_state(config, None, as_node=stages.TEMPLATE)
                    elif any(task.interrupts for task in snapshot.tasks):
                        start = Command(resume=review_decisions(self.run_dir, self._state))
                    else:
                        self._started_generation()
                async for chunk in graph.astream(start, config, stream_mode="updates"):
                    for node, update in chunk.items():
                        if node == "__interrupt__":
                            self.guard.halt("review")
                            continue
                        self._on_update(node, update or {})
                self._state = dict((await graph.aget_state(config)).values)
        finally:
            if installed:
                loop.remove_signal_handler(signal.SIGINT)
            current_stop.reset(token)
        self._finish()
        self.save()
        return self.result

    def _started_generation(self) -> None:
        self.result.total = len(self._state.get("requests", []))
        self._progress(stages.GENERATE, 0, self.result.total)

    def _lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.result.timings[stage] = round(now - self._mark, 3)
        self._mark = now
        if self.log is not None:
            self.log.event("stage", stage=stage, seconds=self.result.timings[stage])

    def _on_update(self, node: str, update: dict[str, Any]) -> None:
        """One node finished: generate tasks count emails; every other node ends its stage."""
        if node == stages.GENERATE:
            self._one_email(update)
            return
        if node == stages.GATHER:  # after the last email task
            self._lap(stages.GENERATE)
            return
        if node == stages.TEMPLATE:  # free, and timed with the screen stage
            self._state["templates"] = merged(self._state.get("templates"), update.get("templates") or {})
            self._log_templates(update.get("templates") or {})
            return
        if node not in stages.STAGE_NODES:  # e.g. LangGraph's own "__metadata__" on a resumed thread
            return
        self._state.update(update)
        self._lap(node)
        self._progress(node, 1, 1)
        self._log_stage(node, update)
        if node == stages.RETRIEVE:
            self._started_generation()

    def _log_stage(self, node: str, update: dict[str, Any]) -> None:
        if self.log is None:
            return
        if node == stages.LOAD_SEGMENT:
            self.log.event("segments", counts=update["counts"], segments=[s["name"] for s in update["segments"]])
            for warning in update.get("warnings") or []:
                self.log.event("warning", message=warning)
        elif node == stages.SCREEN:
            for decision in (update.get("screening") or {}).values():
                self.log.event(
                    "screened",
                    variant_id=decision["variant_id"],
                    blocked=decision["blocked"],
                    reasons=decision["reasons"],
                    backend=decision["backend"],
                )
        elif node in (stages.ASSIGN, stages.EXPORT):
            self.log.event(node, **update)

    def _log_templates(self, templates: dict[str, Any]) -> None:
        if self.log is None:
            return
        for data in templates.values():
            v = EmailVariant.model_validate(data)
            self.log.event(
                "template_control",
                segment=v.segment,
                variant_id=v.variant_id,
                valid=v.valid,
                issues=sorted(v.validation.codes),
                reason="the model's control ended invalid",
            )

    def _one_email(self, update: dict[str, Any]) -> None:
        for name in ("variants", "failures", "skipped"):
            self._state[name] = merged(self._state.get(name), update.get(name) or {})
        done = sum(len(self._state.get(n) or {}) for n in ("variants", "failures", "skipped"))
        self._progress(stages.GENERATE, done, self.result.total)
        if self.log is None:
            return
        for data in (update.get("variants") or {}).values():
            v = EmailVariant.model_validate(data)
            self.log.event(
                "email",
                segment=v.segment,
                tone=v.tone,
                variant_id=v.variant_id,
                valid=v.valid,
                issues=sorted(v.validation.codes),
                attempts=v.attempts,
                tokens=v.usage.total_tokens,
                cost=v.usage.cost_display,
            )
        for key, error in (update.get("failures") or {}).items():
            self.log.event("email_failed", request=key, error=error)

    def _progress(self, stage: str, done: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(stage, done, total)

    def _finish(self) -> None:
        state, result = self._state, self.result
        requests = [EmailRequest.model_validate(r) for r in state.get("requests", [])]
        labels = {request_key(r): f"{r.segment.name} / {r.tone}" for r in requests}
        result.total = len(requests)
        result.variants = ordered_variants(state)
        result.failures = [f"{labels.get(k, k)}: {e}" for k, e in (state.get("failures") or {}).items()]
        result.not_run = len(state.get("skipped") or {})
        result.stopped_by, result.stop_message = self.guard.stopped_by, self.guard.stop_message
        result.segments = [Segment(**s) for s in state.get("segments", [])]
        result.per_customer = bool(self.inputs.get("per_customer"))
        result.counts = dict(state.get("counts", {}))
        result.assignment = dict(state.get("assignment", {})) if not state.get("skipped") else {}
        result.delivery = dict(state.get("delivery", {})) if not state.get("skipped") else {}
        result.screening = dict(state.get("screening") or {})
        result.review = dict(state.get("review") or {})
        result.warnings = list(state.get("warnings") or [])

    # -- Ctrl-C -----------------------------------------------------------------------------------

    def _install_sigint(self, loop: asyncio.AbstractEventLoop) -> bool:
        try:
            loop.add_signal_handler(signal.SIGINT, self._on_sigint, loop)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
            return False
        return True

    def _on_sigint(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sigints += 1
        if self._sigints > 1:
            self.save()
            line = produced_line(len(self._kept_variants()), self.result.total, self.tracker)
            self.say(f"interrupted again: {line}; exiting now")
            os._exit(ExitCode.INTERRUPTED)
        self.guard.halt("interrupted")
        self.say(f"stopping: waiting up to {GRACE_S:g} s for calls in flight (Ctrl-C again to quit now)")
        loop.call_later(GRACE_S, self.guard.signal.stop)
