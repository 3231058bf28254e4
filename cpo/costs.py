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
from langchain_core.outputs import ChatGeneration, LLMResult
from pydantic import BaseModel, Field

from cpo.budget import Budget
from cpo.errors import UnpricedBudget
from cpo.ledger import REFUSED, UNKNOWN_COST, CallRow, Ledger
from cpo.pricing import PriceBook, TokenCounts
from cpo.retries import is_format_refusal, may_have_been_billed
from cpo.settings import Settings
from cpo.tokens import count_text_tokens, count_tokens

log = logging.getLogger(__name__)

# The worst case of a call that sets no max_tokens: the largest output of current OpenAI chat models.
DEFAULT_WORST_OUTPUT_TOKENS = 16_384
UNREPORTED = "<unreported>"
# Tags the run of one email, so calls made inside a larger run (a campaign graph) are also kept per email.
EMAIL_TAG = "cpo:email"

F = TypeVar("F", bound=Callable[..., Any])


class UsageCounts(BaseModel):
    """Additive usage figures. cost_usd is exact (Decimal) and None once any unpriced call is included.

    A call of unknown cost (it timed out or was cancelled after it was sent, so the provider may have
    billed it without telling us) adds to `unknown_cost_calls`, not to the tokens, and leaves
    `cost_usd` a number: the known sum.
    """

    calls: int = 0
    failed_calls: int = 0
    unknown_cost_calls: int = 0
    refused_calls: int = Field(
        0, description="structured-output method refusals (no tokens, not billed); not in calls or failed_calls"
    )
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    cost_usd: Decimal | None = Decimal(0)
    estimated_calls: int = Field(0, description="calls whose tokens were counted locally: provider sent no usage")
    latency_s: float = 0.0

    def _add(
        self,
        counts: TokenCounts,
        cost: Decimal | None,
        *,
        failed: bool,
        estimated: bool,
        latency: float,
        unknown: bool,
        refused: bool = False,
    ) -> None:
        if refused:
            self.refused_calls += 1
            return
        self.calls += 1
        self.failed_calls += int(failed)
        self.unknown_cost_calls += int(unknown)
        self.input_tokens += counts.input_tokens
        self.cached_input_tokens += counts.cached_input_tokens
        self.output_tokens += counts.output_tokens
        self.reasoning_tokens += counts.reasoning_tokens
        self.total_tokens += counts.input_tokens + counts.output_tokens
        if not unknown:
            self.cost_usd = None if cost is None or self.cost_usd is None else self.cost_usd + cost
        self.estimated_calls += int(estimated)
        self.latency_s += latency

    def merge(self, other: UsageCounts) -> None:
        """Add another aggregate into this one (used to total runs)."""
        for name in (
            "calls",
            "failed_calls",
            "unknown_cost_calls",
            "refused_calls",
            "input_tokens",
            "cached_input_tokens",
            "output_tokens",
            "reasoning_tokens",
            "total_tokens",
            "estimated_calls",
            "latency_s",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.cost_usd = None if self.cost_usd is None or other.cost_usd is None else self.cost_usd + other.cost_usd


class Usage(UsageCounts):
    """Usage of a run or a session, with a per-model breakdown (keys are real model names)."""

    by_model: dict[str, UsageCounts] = Field(default_factory=dict)

    def add_call(
        self,
        model: str,
        counts: TokenCounts,
        cost: Decimal | None,
        *,
        failed: bool = False,
        estimated: bool = False,
        latency: float = 0.0,
        unknown: bool = False,
        refused: bool = False,
    ) -> None:
        flags = {"failed": failed, "estimated": estimated, "latency": latency, "unknown": unknown, "refused": refused}
        self._add(counts, cost, **flags)  # type: ignore[arg-type]
        self.by_model.setdefault(model, UsageCounts())._add(counts, cost, **flags)  # type: ignore[arg-type]

    def merge(self, other: UsageCounts) -> None:
        super().merge(other)
        for model, counts in getattr(other, "by_model", {}).items():
            self.by_model.setdefault(model, UsageCounts()).merge(counts)

    @property
    def cost_display(self) -> str:
        """Cost for humans: enough digits to see sub-cent runs, 'unknown' rather than $0 for unpriced."""
        shown = format_usd(self.cost_usd)
        if self.unknown_cost_calls and self.cost_usd is not None:
            shown += f" + {self.unknown_cost_calls} call(s) of unknown cost"
        return shown

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-safe dict; Decimal costs become exact strings."""
        return dict(json.loads(self.model_dump_json()))

    def _repr_html_(self) -> str:
        from html import escape

        rows = "".join(
            f"<tr><td>{escape(m)}</td><td>{u.calls}</td><td>{u.input_tokens}</td><td>{u.cached_input_tokens}</td>"
            f"<td>{u.output_tokens}</td><td>{format_usd(u.cost_usd)}</td></tr>"
            for m, u in self.by_model.items()
        )
        return (
            f"<b>Usage</b>: {self.calls} calls ({self.failed_calls} failed), {self.total_tokens} tokens, "
            f"{escape(self.cost_display)}, {self.latency_s:.2f} s"
            "<table><tr><th>model</th><th>calls</th><th>input</th><th>cached</th><th>output</th>"
            f"<th>cost</th></tr>{rows}</table>"
        )


def price_book_for(settings: Settings) -> PriceBook:
    """Prices for the configured provider: Azure's table (also for offline what-ifs); a self-hosted
    OpenAI-compatible server is priced only if genai-prices knows its URL or the price file names the model."""
    provider = settings.provider
    return PriceBook(
        settings.price_file,
        provider_id=None if provider == "openai-compatible" else "azure",
        provider_api_url=settings.openai_base_url if provider == "openai-compatible" else None,
    )


def format_usd(cost: Decimal | None) -> str:
    """$0.000123 style; never rounds a real cost to $0.00."""
    if cost is None:
        return "unknown"
    if cost == 0:
        return "$0"
    if cost >= Decimal("0.01"):
        return f"${cost:.4f}"
    return f"${cost:.8f}".rstrip("0")


def schema_tokens(params: dict[str, Any], model: str | None) -> int:
    """Tokens of the tools / response_format schema a request carries (billed as input)."""
    parts = [params.get(key) for key in ("tools", "functions", "response_format")]
    extra = params.get("extra_body")
    if isinstance(extra, dict):
        parts.append(extra.get("response_format"))
    return sum(count_text_tokens(json.dumps(part, default=str), model) for part in parts if part)


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


class _Call:
    """An LLM call between its start callback and its end."""

    __slots__ = ("deployment", "email", "messages", "model_hint", "root", "started")

    def __init__(
        self,
        root: UUID,
        model_hint: str | None,
        deployment: str | None,
        messages: Sequence[BaseMessage] | None,
        email: tuple[UUID, str] | None = None,
    ) -> None:
        self.root, self.model_hint, self.deployment, self.messages = root, model_hint, deployment, messages
        self.email = email
        self.started = time.perf_counter()


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
        self.default_model = default_model
        self.budget = None if max_usd is None else Budget(Decimal(str(max_usd)))
        self.ledger = Ledger(ledger) if isinstance(ledger, Path | str) else ledger
        self.session_id = session_id or uuid.uuid4().hex
        self.session_name = session_name
        self.session = Usage()
        self.runs: dict[UUID, Usage] = {}
        self.run_names: dict[UUID, str] = {}
        self.accounting_errors = 0
        self._error_kinds: set[str] = set()
        self._parents: dict[UUID, UUID | None] = {}
        self._email_runs: dict[UUID, str] = {}
        self._calls: dict[UUID, _Call] = {}
        self._reserved: set[UUID] = set()
        self._learned: dict[str, str] = {}
        self._lock = threading.RLock()
        if self.ledger is not None:
            self.ledger.start_session(self.session_id, session_name)

    def use_ledger(self, ledger: Ledger, *, session_name: str | None = None) -> None:
        """Record every later call in `ledger` (the CLI opens it only once its input has been checked)."""
        self.ledger = ledger
        self.session_name = session_name or self.session_name
        ledger.start_session(self.session_id, self.session_name)

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

    # -- attribution -------------------------------------------------------------------------------

    def _root(self, run_id: UUID, parent_run_id: UUID | None) -> UUID:
        node, seen = parent_run_id, 0
        root = run_id
        while node is not None and seen < 1000:
            root = node
            node = self._parents.get(node)
            seen += 1
        return root

    def _email(self, parent_run_id: UUID | None) -> tuple[UUID, str] | None:
        """The email run (tagged EMAIL_TAG) a call belongs to, when it runs inside one (e.g. in a campaign graph)."""
        node, seen = parent_run_id, 0
        while node is not None and seen < 1000:
            if node in self._email_runs:
                return node, self._email_runs[node]
            node = self._parents.get(node)
            seen += 1
        return None

    def _enter(self, run_id: UUID, parent_run_id: UUID | None, name: str | None, tags: list[str] | None = None) -> None:
        with self._lock:
            self._parents[run_id] = parent_run_id
            if parent_run_id is None:
                self.run_names[run_id] = name or "run"
            if tags and EMAIL_TAG in tags and self._email(parent_run_id) is None:
                self._email_runs[run_id] = name or "email"

    def _forget(self, run_id: UUID) -> None:
        with self._lock:
            self._parents.pop(run_id, None)
            self._email_runs.pop(run_id, None)

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
        self._enter(run_id, parent_run_id, kwargs.get("name") or (serialized or {}).get("name"), kwargs.get("tags"))

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
        self._enter(run_id, parent_run_id, kwargs.get("name") or (serialized or {}).get("name"))

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
        self._enter(run_id, parent_run_id, kwargs.get("name") or (serialized or {}).get("name"))

    @_never_raises
    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._forget(run_id)

    @_never_raises
    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._forget(run_id)

    @_never_raises
    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._forget(run_id)

    @_never_raises
    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._forget(run_id)

    @_never_raises
    def on_retriever_end(self, documents: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._forget(run_id)

    @_never_raises
    def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._forget(run_id)

    # -- the budget: reserve before a call is sent --------------------------------------------------

    def model_hint(self, params: dict[str, Any]) -> str | None:
        """The model a call will be priced as before it answers; never an Azure deployment name."""
        deployment = params.get("azure_deployment")
        if "azure" in str(params.get("_type", "")) or deployment:
            # `model` is what the user named (CPO_MODEL_NAME), never the deployment.
            return (
                self.prices.deployment_model(deployment)
                or self.default_model
                or params.get("model")
                or (self._learned.get(deployment) if deployment else None)
            )
        return self.default_model or params.get("model") or params.get("model_name")

    def worst_case(self, messages: Sequence[Any], params: dict[str, Any]) -> Callable[[], Decimal | None]:
        """The most this call can cost: its input counted locally (schemas included) plus max_tokens of output.

        Returned as a function of what is known when it is asked: None while the model is not known
        yet (the first call to an Azure deployment with no CPO_MODEL_NAME), a price once a reply named
        it; UnpricedBudget when the model is known but has no price.
        """
        output = params.get("max_tokens") or params.get("max_completion_tokens") or DEFAULT_WORST_OUTPUT_TOKENS
        hint = self.model_hint(params)
        input_tokens = count_tokens(messages, hint) + schema_tokens(params, hint)
        worst = TokenCounts(input_tokens=input_tokens, output_tokens=int(output))
        deployment = params.get("azure_deployment")

        def priced() -> Decimal | None:
            model = self.model_hint(params)
            if not self.prices.is_priced(model, deployment):
                if model is None:
                    return None
                raise UnpricedBudget(model, self.max_usd or Decimal(0))
            return self.prices.cost(model, worst, deployment=deployment, warn=False)

        return priced

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
                root = self._root(run_id, parent_run_id)
                email = self._email(parent_run_id)
                self._calls[run_id] = _Call(root, hint, params.get("azure_deployment"), prompt, email)
        except Exception as exc:
            self._accounting_failed("on_chat_model_start", exc)

    @_never_raises
    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            call = self._calls.pop(run_id, None)
        if call is None:
            return
        generation = response.generations[0][0] if response.generations and response.generations[0] else None
        message = generation.message if isinstance(generation, ChatGeneration) else None
        usage = getattr(message, "usage_metadata", None)
        reported = (getattr(message, "response_metadata", None) or {}).get("model_name") or (
            response.llm_output or {}
        ).get("model_name")
        model = self.prices.resolve_model(reported, call.deployment) or call.model_hint or UNREPORTED
        self._learn(call.deployment, reported)
        if usage:
            counts = _counts_from_metadata(usage)
            estimated = False
        else:
            text = generation.text if generation else ""
            counts = TokenCounts(
                input_tokens=count_tokens(call.messages or [], model),
                output_tokens=count_text_tokens(text, model),
            )
            estimated = True
            log.warning("provider returned no token usage for %s; counted locally with tiktoken", model)
        self._record(run_id, call, model, counts, status="ok", estimated=estimated)

    @_never_raises
    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            call = self._calls.pop(run_id, None)
        if call is None:
            return
        completion = getattr(error, "completion", None)
        usage = getattr(completion, "usage", None)
        reported = getattr(completion, "model", None)
        model = self.prices.resolve_model(reported, call.deployment) or call.model_hint or UNREPORTED
        self._learn(call.deployment, reported)
        if usage is not None:
            status = f"error:{type(error).__name__}"
            self._record(run_id, call, model, _counts_from_openai_usage(usage), status=status)
        elif is_format_refusal(error):
            self._record(run_id, call, model, TokenCounts(), status=f"{REFUSED}:{type(error).__name__}")
        elif may_have_been_billed(error) or isinstance(error, asyncio.CancelledError | KeyboardInterrupt):
            self._record(run_id, call, model, TokenCounts(), status=f"{UNKNOWN_COST}:{type(error).__name__}")
        else:
            self._record(run_id, call, model, TokenCounts(), status=f"error:{type(error).__name__}")

    def _learn(self, deployment: str | None, reported: str | None) -> None:
        """Remember which model an Azure deployment serves, to reserve for its later calls."""
        if deployment and reported:
            with self._lock:
                self._learned.setdefault(deployment, reported)

    def _record(
        self, run_id: UUID, call: _Call, model: str, counts: TokenCounts, *, status: str, estimated: bool = False
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
                )
        if self.budget is not None:
            self.budget.settle(run_id, cost, unknown=unknown)
            if cost is None and not unknown:
                self.budget.break_with(UnpricedBudget(model, self.budget.max_usd))
        if self.ledger is not None:
            self.ledger.append(
                CallRow(
                    session_id=self.session_id,
                    run_id=str(call.root),
                    run_name=self.run_names.get(call.root),
                    model=model,
                    counts=counts,
                    cost=None if unknown else cost,
                    latency_s=latency,
                    status=status,
                    estimated=estimated,
                    deployment=call.deployment,
                    email_id=None if call.email is None else str(call.email[0]),
                    email_name=None if call.email is None else call.email[1],
                )
            )

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


def _counts_from_metadata(usage: dict[str, Any]) -> TokenCounts:
    details_in = usage.get("input_token_details") or {}
    details_out = usage.get("output_token_details") or {}
    return TokenCounts(
        input_tokens=int(usage.get("input_tokens") or 0),
        cached_input_tokens=int(details_in.get("cache_read") or 0),
        output_tokens=int(usage.get("output_tokens") or 0),
        reasoning_tokens=int(details_out.get("reasoning") or 0),
    )


def _counts_from_openai_usage(usage: Any) -> TokenCounts:
    prompt_details = getattr(usage, "prompt_tokens_details", None)
    completion_details = getattr(usage, "completion_tokens_details", None)
    return TokenCounts(
        input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        cached_input_tokens=int(getattr(prompt_details, "cached_tokens", 0) or 0),
        output_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        reasoning_tokens=int(getattr(completion_details, "reasoning_tokens", 0) or 0),
    )
