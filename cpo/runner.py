"""`cpo run` as a library: generate many emails concurrently on asyncio, and keep every paid one.

Promises, each tested in `tests/test_runner.py`:

- **Ledger before file.** An email is written to `variants.json` only after its calls are committed
  to the cost ledger, so a killed run never leaves a produced email without its cost.
- **Ctrl-C.** The first SIGINT stops dispatching, gives calls in flight a short grace period, then
  cancels them (each becomes a call of unknown cost); emails whose calls completed are kept (a paid
  draft whose repair was cut off is kept, marked invalid), the files are written and the run ends
  with "interrupted: ..." and exit code 130. A second SIGINT writes the files and exits at once.
- **Budget.** A refusal stops dispatching; calls in flight finish; exit code 3.
- **Authentication.** The first 401/403 stops the run instead of failing every email the same way.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
from langchain_core.runnables import Runnable

from cpo.cancel import StopSignal, current_stop
from cpo.costs import CostTracker
from cpo.errors import BudgetExceeded, ConfigError, Interrupted
from cpo.models import EmailRequest, EmailVariant

GRACE_S = 0.5
EXIT_FAILED, EXIT_CONFIG, EXIT_BUDGET, EXIT_INTERRUPTED = 1, 2, 3, 130


def write_json(path: Path, data: Any) -> None:
    """Write atomically so an interrupted run never leaves a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def produced_line(produced: int, total: int, tracker: CostTracker) -> str:
    """'N of M emails, $X spent' (calls of unknown cost shown beside the known sum)."""
    return f"{produced} of {total} emails, {tracker.session.cost_display} spent"


def one_line(exc: BaseException) -> str:
    """An error as one line; connection errors name the host they tried."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, openai.APIConnectionError) and not isinstance(exc, openai.APITimeoutError):
        url = getattr(getattr(exc, "request", None), "url", None)
        where = f"{url.scheme}://{url.host}:{url.port}" if url is not None and url.port else str(url or "")
        cause = exc.__cause__
        reason = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else text
        return f"cannot reach {where}: {reason}"
    notes = "; ".join(getattr(exc, "__notes__", []) or [])
    shown = f"{type(exc).__name__}: {text}" if isinstance(exc, openai.OpenAIError) else text
    return f"{shown} ({notes})" if notes else shown


@dataclass
class RunResult:
    """What a run produced and why it ended."""

    run_dir: Path
    total: int
    variants: list[EmailVariant] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    not_run: int = 0
    stopped_by: str | None = None  # "budget" | "auth" | "config" | "interrupted"
    stop_message: str | None = None

    @property
    def exit_code(self) -> int:
        if self.stopped_by == "interrupted":
            return EXIT_INTERRUPTED
        if self.stopped_by == "budget":
            return EXIT_BUDGET
        if self.stopped_by in ("auth", "config"):
            return EXIT_CONFIG
        return EXIT_FAILED if self.failures else 0


class CampaignRun:
    """Runs `chain.ainvoke` over `requests` with at most `concurrency` emails in flight."""

    def __init__(
        self,
        requests: Sequence[EmailRequest],
        chain: Runnable[EmailRequest, EmailVariant],
        tracker: CostTracker,
        run_dir: Path,
        *,
        concurrency: int = 4,
        extra: dict[str, Any] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    ) -> None:
        self.requests = list(requests)
        self.chain, self.tracker, self.run_dir = chain, tracker, run_dir
        self.concurrency = concurrency
        self.extra = extra or {}
        self.on_progress = on_progress
        self.say = say
        self.result = RunResult(run_dir=run_dir, total=len(self.requests))
        self.stop = StopSignal()
        self._produced: dict[int, EmailVariant] = {}
        self._dispatching = True
        self._sigints = 0

    def _in_order(self) -> list[EmailVariant]:
        return [self._produced[i] for i in sorted(self._produced)]

    def save(self) -> None:
        """variants.json (emails whose costs are committed) and costs.json, both replaced atomically."""
        produced = self._in_order()
        write_json(self.run_dir / "variants.json", [v.model_dump(mode="json") for v in produced])
        write_json(
            self.run_dir / "costs.json",
            {
                **self.tracker.summary(),
                **self.extra,
                "emails": {"requested": self.result.total, "produced": len(produced)},
                "stopped_by": self.result.stopped_by,
                "variants": {v.variant_id: v.run_id for v in produced},
                "errors": self.result.failures,
            },
        )

    async def run(self) -> RunResult:
        loop = asyncio.get_running_loop()
        token = current_stop.set(self.stop)
        installed = self._install_sigint(loop)
        try:
            await self._dispatch()
        finally:
            if installed:
                loop.remove_signal_handler(signal.SIGINT)
            current_stop.reset(token)
        self.result.variants = self._in_order()
        self.result.not_run = self.result.total - len(self.result.variants) - len(self.result.failures)
        self.save()
        return self.result

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
            line = produced_line(len(self._produced), self.result.total, self.tracker)
            self.say(f"interrupted again: {line}; exiting now")
            os._exit(EXIT_INTERRUPTED)
        self._halt("interrupted", None)
        self.say(f"stopping: waiting up to {GRACE_S:g} s for calls in flight (Ctrl-C again to quit now)")
        loop.call_later(GRACE_S, self.stop.stop)

    def _halt(self, reason: str, message: str | None) -> None:
        """Stop dispatching; the first reason to stop is the one reported."""
        self._dispatching = False
        if self.result.stopped_by is None:
            self.result.stopped_by, self.result.stop_message = reason, message

    async def _dispatch(self) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        for index, request in enumerate(self.requests):
            await slots.acquire()
            if not self._dispatching:
                slots.release()
                break
            task = asyncio.create_task(self._one(index, request))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            task.add_done_callback(lambda _: slots.release())
        if tasks:
            await asyncio.gather(*tasks)

    async def _one(self, index: int, request: EmailRequest) -> None:
        config = {"callbacks": [self.tracker]}  # the chain names the run for its segment and tone
        label = f"{request.segment.name} / {request.tone}"
        try:
            variant: EmailVariant = await self.chain.ainvoke(request, config)  # type: ignore[arg-type]
        except BudgetExceeded as exc:
            self._halt("budget", str(exc))
            return
        except ConfigError as exc:  # e.g. the model that answered has no price, so the budget cannot hold
            self._halt("config", str(exc))
            return
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            self._halt("auth", f"the endpoint refused the credentials: {one_line(exc)}")
            self.stop.stop()
            return
        except Interrupted:
            return
        except Exception as exc:
            self.result.failures.append(f"{label}: {one_line(exc)}")
            self._progressed()
            return
        if self.tracker.ledger is not None:
            await self.tracker.ledger.aflush()
        self._produced[index] = variant
        self.save()
        self._progressed()

    def _progressed(self) -> None:
        if self.on_progress is not None:
            self.on_progress(len(self._produced) + len(self.result.failures), self.result.total)
