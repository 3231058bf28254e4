"""Token and USD accounting: per LLM call, per run (one top-level invocation), per session.

`CostTracker` is a LangChain callback handler and the one source of truth for usage. Pass it in
`config={"callbacks": [tracker]}` so it sees chain, tool and retriever starts too and can attribute
each LLM call to its root run, also under `batch`/`abatch` concurrency and inside LangGraph graphs.

Only a budget refusal may stop a call: every other failure inside the tracker (a ledger write, a
malformed usage block) is logged once and counted, and the paid answer is kept.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.outputs import LLMResult

from cpo.accounting.attribution import EMAIL_TAG, RunTree
from cpo.accounting.budget import Budget
from cpo.accounting.calls import Call
from cpo.accounting.ledger import REFUSED, UNKNOWN_COST, Ledger
from cpo.accounting.pricing import PriceBook, deployment_of, price_book_for
from cpo.accounting.readings import counted_locally, read_error, read_result
from cpo.accounting.reservations import ModelHints
from cpo.core.errors import UnpricedBudget
from cpo.core.settings import Settings
from cpo.core.usage import TokenCounts, Usage

__all__ = ["EMAIL_TAG", "UNREPORTED", "CostTracker", "trackers_in"]

log = logging.getLogger(__name__)

UNREPORTED = "<unreported>"

F = TypeVar("F", bound=Callable[..., Any])


def _never_raises(method: F) -> F:
    """Accounting must not break a call: log (once per kind) and count instead of raising."""

    @functools.wraps(method)
    def wrapper(self: CostTracker, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            self._accounting_failed(method.__name__, exc)
            return None

    return wrapper  # type: ignore[return-value]


class CostTracker(BaseCallbackHandler):
    """Accumulates tokens and USD per call, per run (root run id) and per session; thread-safe.

    A sync handler with `run_inline` works for both sync and async invocations. `raise_error` is on
    so that a budget refusal stops the call; every other method catches its own failures.
    """

    raise_error = True
    run_inline = True

    def __init__(
        self,
        *,
        prices: PriceBook | None = None,
        default_model: str | None = None,
        max_usd: Decimal | float | str | None = None,
        ledger: Ledger | Path | str | None = None,
        session_id: str | None = None,
        session_name: str | None = None,
    ) -> None:
        self.prices = prices or PriceBook()
        self.hints = ModelHints(self.prices, default_model)
        self.tree = RunTree()
        self.budget = None if max_usd is None else Budget(Decimal(str(max_usd)))
        self.ledger = Ledger(ledger) if isinstance(ledger, Path | str) else ledger
        self.session_id = session_id or uuid.uuid4().hex
        self.session_name = session_name
        self.session = Usage()
        self.runs: dict[UUID, Usage] = {}
        self.accounting_errors = 0
        self._error_kinds: set[str] = set()
        self._calls: dict[UUID, Call] = {}
        self._reserved: set[UUID] = set()
        self._lock = threading.RLock()
        if self.ledger is not None:
            self.ledger.start_session(self.session_id, session_name)

    def use_ledger(self, ledger: Ledger, *, session_name: str | None = None) -> None:
        """Record every later call in `ledger` (the CLI opens it only once its input has been checked)."""
        self.ledger = ledger
        self.session_name = session_name or self.session_name
        ledger.start_session(self.session_id, self.session_name)

    @property
    def run_names(self) -> dict[UUID, str]:
        """The name of each root run (a command, a campaign, an email invoked on its own)."""
        return self.tree.names

    @property
    def default_model(self) -> str | None:
        return self.hints.default_model

    @property
    def max_usd(self) -> Decimal | None:
        return None if self.budget is None else self.budget.max_usd

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **kwargs: Any) -> CostTracker:
        """A tracker priced for the configured provider; a ledger only if CPO_LEDGER names one."""
        settings = settings or Settings()
        kwargs.setdefault("prices", price_book_for(settings))
        kwargs.setdefault("default_model", settings.model_name)
        if "ledger" not in kwargs and settings.ledger_requested is not None:
            kwargs["ledger"] = settings.ledger_requested
        return cls(**kwargs)

    def _accounting_failed(self, where: str, exc: BaseException) -> None:
        with self._lock:
            self.accounting_errors += 1
            kind = f"{where}: {type(exc).__name__}"
            first = kind not in self._error_kinds
            self._error_kinds.add(kind)
        if first:
            log.error(
                "cost tracking failed in %s (%s: %s); the call itself is unaffected", where, type(exc).__name__, exc
            )

    @_never_raises
    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self.tree.enter(run_id, parent_run_id, kwargs.get("name") or (serialized or {}).get("name"), kwargs.get("tags"))

    @_never_raises
    def on_tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self.tree.enter(run_id, parent_run_id, kwargs.get("name") or (serialized or {}).get("name"))

    @_never_raises
    def on_retriever_start(
        self,
        serialized: dict[str, Any] | None,
        query: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self.tree.enter(run_id, parent_run_id, kwargs.get("name") or (serialized or {}).get("name"))

    @_never_raises
    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.tree.leave(run_id)

    @_never_raises
    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self.tree.leave(run_id)

    @_never_raises
    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.tree.leave(run_id)

    @_never_raises
    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self.tree.leave(run_id)

    @_never_raises
    def on_retriever_end(self, documents: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.tree.leave(run_id)

    @_never_raises
    def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self.tree.leave(run_id)

    # -- the budget: reserve before a call is sent --------------------------------------------------

    def model_hint(self, params: dict[str, Any]) -> str | None:
        """The model a call will be priced as before it answers; never an Azure deployment name."""
        return self.hints.model_for(params)

    def worst_case(self, messages: Sequence[Any], params: dict[str, Any]) -> Callable[[], Decimal | None]:
        """The most this call can cost (see `ModelHints.worst_case`)."""
        return self.hints.worst_case(messages, params, self.max_usd)

    def check_budget_pricing(self, model: str | None, deployment: str | None = None) -> None:
        """At start: a budget with a model that has no price is an error (unless a price file prices it)."""
        if self.budget is None:
            return
        hint = self.prices.deployment_model(deployment) or model
        if hint is not None and not self.prices.is_priced(hint, deployment):
            raise UnpricedBudget(hint, self.budget.max_usd)

    def reserve(self, run_id: UUID, messages: Sequence[Any], params: dict[str, Any]) -> None:
        """Hold this call's worst case before it is sent (blocks while calls in flight may make room)."""
        if self.budget is not None:
            self.budget.reserve(run_id, self.worst_case(messages, params))
        with self._lock:
            self._reserved.add(run_id)

    async def areserve(self, run_id: UUID, messages: Sequence[Any], params: dict[str, Any]) -> None:
        """`reserve` for coroutines."""
        if self.budget is not None:
            await self.budget.areserve(run_id, self.worst_case(messages, params))
        with self._lock:
            self._reserved.add(run_id)

    def close_call(self, run_id: UUID, reason: str = "cancelled") -> None:
        """The caller is done with this call. A reservation never used is given back; a call still in
        flight (cancelled: it may have been billed) becomes a call of unknown cost."""
        with self._lock:
            self._reserved.discard(run_id)
            call = self._calls.pop(run_id, None)
        if call is not None:
            self._record(run_id, call, call.model_hint or UNREPORTED, TokenCounts(), status=f"{UNKNOWN_COST}:{reason}")
        elif self.budget is not None:
            self.budget.release(run_id)

    # -- callbacks ----------------------------------------------------------------------------------

    def on_chat_model_start(
        self,
        serialized: dict[str, Any] | None,
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        prompt = messages[0] if messages else []
        self._start(run_id, parent_run_id, prompt, kwargs.get("invocation_params") or {})

    def on_llm_start(
        self,
        serialized: dict[str, Any] | None,
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        prompt = [HumanMessage(p) for p in prompts[:1]]
        self._start(run_id, parent_run_id, prompt, kwargs.get("invocation_params") or {})

    def _start(
        self, run_id: UUID, parent_run_id: UUID | None, prompt: Sequence[BaseMessage], params: dict[str, Any]
    ) -> None:
        """Only a budget refusal may escape: it stops the call before it is sent."""
        with self._lock:
            reserved = run_id in self._reserved
            self._reserved.discard(run_id)
        if not reserved and self.budget is not None:
            # A model not built by cpo: reserve here. Waiting would block an event loop's thread,
            # so on one the call is refused when it does not fit beside the calls in flight.
            self.budget.reserve(run_id, self.worst_case(prompt, params), wait=not _on_event_loop())
        try:
            hint = self.model_hint(params)
            with self._lock:
                root = self.tree.root(run_id, parent_run_id)
                call = Call(root, hint, deployment_of(params), prompt, self.tree.email(parent_run_id))
                self._calls[run_id] = call
            if self.ledger is not None:  # committed before the call is sent: a kill -9 leaves it possibly billed
                name = self.run_names.get(root)
                self.ledger.record_start(call.row(self.session_id, run_id, name, hint or UNREPORTED))
        except Exception as exc:
            self._accounting_failed("on_chat_model_start", exc)

    @_never_raises
    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            call = self._calls.pop(run_id, None)
        if call is None:
            return
        reading = read_result(response)
        model = self.prices.resolve_model(reading.reported_model, call.deployment) or call.model_hint or UNREPORTED
        self.hints.learn(call.deployment, reading.reported_model)
        counts = reading.counts
        if counts is None:
            counts = counted_locally(call.messages or [], reading.text, model)
            log.warning("provider returned no token usage for %s; counted locally with tiktoken", model)
        self._record(run_id, call, model, counts, status=reading.status, estimated=reading.counts is None)

    @_never_raises
    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            call = self._calls.pop(run_id, None)
        if call is None:
            return
        reading = read_error(error)
        model = self.prices.resolve_model(reading.reported_model, call.deployment) or call.model_hint or UNREPORTED
        self.hints.learn(call.deployment, reading.reported_model)
        self._record(run_id, call, model, reading.counts or TokenCounts(), status=reading.status)

    def _record(
        self, run_id: UUID, call: Call, model: str, counts: TokenCounts, *, status: str, estimated: bool = False
    ) -> None:
        latency = time.perf_counter() - call.started
        unknown = status.startswith(UNKNOWN_COST)
        refused = status.startswith(REFUSED)
        failed = status != "ok" and not refused
        has_tokens = counts.input_tokens or counts.output_tokens
        cost = self.prices.cost(model, counts, deployment=call.deployment) if has_tokens else Decimal(0)
        with self._lock:
            for usage in (self.session, self.runs.setdefault(call.root, Usage())):
                usage.add_call(
                    model,
                    counts,
                    cost,
                    failed=failed,
                    estimated=estimated,
                    latency=latency,
                    unknown=unknown,
                    refused=refused,
                    deployment=call.deployment,
                )
        if self.budget is not None:
            self.budget.settle(run_id, cost, unknown=unknown)
            if cost is None and not unknown:
                self.budget.break_with(UnpricedBudget(model, self.budget.max_usd))
        if self.ledger is not None:
            row = call.row(
                self.session_id,
                run_id,
                self.run_names.get(call.root),
                model,
                counts,
                None if unknown else cost,
                latency_s=latency,
                status=status,
                estimated=estimated,
            )
            self.ledger.append(row)

    # -- reading ------------------------------------------------------------------------------------

    def run_usage(self, run_id: UUID | str) -> Usage:
        """Usage of one run (empty if the run made no LLM call)."""
        key = run_id if isinstance(run_id, UUID) else UUID(str(run_id))
        with self._lock:
            return self.runs.get(key, Usage()).model_copy(deep=True)

    @property
    def ledger_errors(self) -> int:
        return 0 if self.ledger is None else self.ledger.errors

    def summary(self) -> dict[str, Any]:
        """Session and per-run usage as a JSON-safe dict (costs as exact decimal strings)."""
        with self._lock:
            return {
                "session_id": self.session_id,
                "session_name": self.session_name,
                "session": self.session.to_json_dict(),
                "budget": None if self.budget is None else self.budget.snapshot(),
                "accounting_errors": self.accounting_errors + self.ledger_errors,
                "runs": {
                    str(rid): {"name": self.run_names.get(rid), **u.to_json_dict()} for rid, u in self.runs.items()
                },
            }

    def summary_json(self, **dumps: Any) -> str:
        return json.dumps(self.summary(), **dumps)

    def to_dataframe(self) -> Any:
        """One row per run (pandas required); cost as float for plotting, exact value in the summary."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("to_dataframe() needs pandas: pip install 'cpo[pandas]'") from exc
        with self._lock:
            rows = [
                {
                    "run_id": str(rid),
                    "name": self.run_names.get(rid),
                    **u.model_dump(exclude={"by_model"}),
                    "models": ", ".join(u.by_model),
                }
                for rid, u in self.runs.items()
            ]
        frame = pd.DataFrame(rows)
        if not frame.empty:
            frame["cost_usd"] = frame["cost_usd"].map(lambda c: None if c is None else float(c))
        return frame

    def close(self) -> None:
        """Commit and close the ledger, if any."""
        if self.ledger is not None:
            self.ledger.close()


def trackers_in(*callback_sources: Any) -> list[CostTracker]:
    """The CostTrackers among LangChain callbacks (a list of handlers or a callback manager)."""
    found: list[CostTracker] = []
    for source in callback_sources:
        handlers = getattr(source, "handlers", source) or []
        for handler in handlers:
            if isinstance(handler, CostTracker) and handler not in found:
                found.append(handler)
    return found


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
