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
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.runnables import Runnable
from langgraph.types import Command

from cpo.agents.content_index import ContentIndex
from cpo.agents.segmentation import Segment
from cpo.cancel import current_stop
from cpo.costs import CostTracker
from cpo.errors import InputError
from cpo.files import write_atomically
from cpo.guard import Guard, one_line
from cpo.models import EmailRequest, EmailVariant
from cpo.pipeline import (
    EMAILS,
    REVIEW_FILE,
    Inputs,
    Tools,
    build_pipeline,
    merged,
    ordered_variants,
    request_key,
)
from cpo.runlog import RunLog

__all__ = ["CampaignRunner", "RunResult", "one_line", "open_checkpointer"]

GRACE_S = 0.5
EXIT_FAILED, EXIT_CONFIG, EXIT_BUDGET, EXIT_REVIEW, EXIT_INTERRUPTED = 1, 2, 3, 4, 130
CHECKPOINTS = "checkpoints.sqlite"
# The graph's nodes that are a stage of their own (generate's tasks and gather are counted as one stage).
STAGE_NODES = frozenset({"load_segment", "retrieve", "screen", "review", "assign", "export"})


def write_json(path: Path, data: Any) -> None:
    """Write atomically so an interrupted run never leaves a half-written file."""
    write_atomically(path, json.dumps(data, indent=2, default=str))


def produced_line(produced: int, total: int, tracker: CostTracker) -> str:
    """'N of M emails, $X spent' (calls of unknown cost shown beside the known sum)."""
    return f"{produced} of {total} emails, {tracker.session.cost_display} spent"


@asynccontextmanager
async def open_checkpointer(run_dir: Path, url: str | None = None) -> AsyncIterator[Any]:
    """Postgres when `url` is given (runs shared between machines), else SQLite in the run directory."""
    if url:
        try:
            from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        except ImportError:
            from cpo.errors import ConfigError

            raise ConfigError("CPO_CHECKPOINT_URL needs the postgres extra: pip install 'cpo[postgres]'") from None
        async with AsyncPostgresSaver.from_conn_string(url) as saver:
            await saver.setup()
            yield saver
        return
    import aiosqlite
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    # A generous busy timeout: a stopped run's last checkpoint writes may hold the file for a moment.
    async with aiosqlite.connect(run_dir / CHECKPOINTS, timeout=30) as conn:
        yield AsyncSqliteSaver(conn)


def review_decisions(run_dir: Path, state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The decisions `cpo review` recorded, for every variant awaiting one; a one-line error if any is missing."""
    path = run_dir / REVIEW_FILE
    decisions: dict[str, dict[str, Any]] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    pending = [v for v, d in (state.get("screening") or {}).items() if not d["blocked"]]
    missing = [v for v in pending if v not in decisions]
    if missing:
        raise InputError(
            f"{len(missing)} of {len(pending)} variants await a review decision (e.g. {missing[0]}): "
            f"cpo review {run_dir}"
        )
    return decisions


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

    @property
    def exit_code(self) -> int:
        if self.stopped_by == "review":
            return EXIT_REVIEW
        if self.stopped_by == "interrupted":
            return EXIT_INTERRUPTED
        if self.stopped_by == "budget":
            return EXIT_BUDGET
        if self.stopped_by in ("auth", "config"):
            return EXIT_CONFIG
        return EXIT_FAILED if self.failures else 0


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
        kept = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in (self.run_dir / EMAILS).glob("*.json")}
        state["variants"] = {**kept, **(state.get("variants") or {})}
        return ordered_variants(state)

    def save(self) -> None:
        """variants.json (emails whose costs are committed) and costs.json, both replaced atomically."""
        produced = self._kept_variants()
        write_json(self.run_dir / "variants.json", [v.model_dump(mode="json") for v in produced])
        write_json(
            self.run_dir / "costs.json",
            {
                **self.tracker.summary(),
                **self.extra,
                "emails": {"requested": self.result.total, "produced": len(produced)},
                "stopped_by": self.guard.stopped_by,
                "variants": {v.variant_id: {"run_id": v.run_id, **v.usage.to_json_dict()} for v in produced},
                "errors": self.result.failures,
            },
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
                    if any(task.interrupts for task in snapshot.tasks):
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
        self._progress("generate", 0, self.result.total)

    def _lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.result.timings[stage] = round(now - self._mark, 3)
        self._mark = now
        if self.log is not None:
            self.log.event("stage", stage=stage, seconds=self.result.timings[stage])

    def _on_update(self, node: str, update: dict[str, Any]) -> None:
        """One node finished: generate tasks count emails; every other node ends its stage."""
        if node == "generate":
            self._one_email(update)
            return
        if node == "gather":  # after the last email task
            self._lap("generate")
            return
        if node not in STAGE_NODES:  # e.g. LangGraph's own "__metadata__" on a resumed thread
            return
        self._state.update(update)
        self._lap(node)
        self._progress(node, 1, 1)
        self._log_stage(node, update)
        if node == "retrieve":
            self._started_generation()

    def _log_stage(self, node: str, update: dict[str, Any]) -> None:
        if self.log is None:
            return
        if node == "load_segment":
            self.log.event("segments", counts=update["counts"], segments=[s["name"] for s in update["segments"]])
        elif node == "screen":
            for decision in (update.get("screening") or {}).values():
                self.log.event(
                    "screened",
                    variant_id=decision["variant_id"],
                    blocked=decision["blocked"],
                    reasons=decision["reasons"],
                    backend=decision["backend"],
                )
        elif node in ("assign", "export"):
            self.log.event(node, **update)

    def _one_email(self, update: dict[str, Any]) -> None:
        for name in ("variants", "failures", "skipped"):
            self._state[name] = merged(self._state.get(name), update.get(name) or {})
        done = sum(len(self._state.get(n) or {}) for n in ("variants", "failures", "skipped"))
        self._progress("generate", done, self.result.total)
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
            os._exit(EXIT_INTERRUPTED)
        self.guard.halt("interrupted")
        self.say(f"stopping: waiting up to {GRACE_S:g} s for calls in flight (Ctrl-C again to quit now)")
        loop.call_later(GRACE_S, self.guard.signal.stop)
