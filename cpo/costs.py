"""Token and USD accounting: per LLM call, per run (one top-level invocation), per session.

`CostTracker` is a LangChain callback handler and the one source of truth for usage. Pass it in
`config={"callbacks": [tracker]}` so it sees chain starts too and can attribute each LLM call to its
root run, also under `batch`/`abatch` concurrency.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from pydantic import BaseModel, Field

from cpo.errors import BudgetExceeded
from cpo.ledger import Ledger
from cpo.pricing import PriceBook, TokenCounts
from cpo.settings import Settings
from cpo.tokens import count_text_tokens, count_tokens

log = logging.getLogger(__name__)


class UsageCounts(BaseModel):
    """Additive usage figures. cost_usd is exact (Decimal) and None once any unpriced call is included."""

    calls: int = 0
    failed_calls: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    cost_usd: Decimal | None = Decimal(0)
    estimated_calls: int = Field(0, description="calls whose tokens were counted locally: provider sent no usage")
    latency_s: float = 0.0

    def _add(self, counts: TokenCounts, cost: Decimal | None, *, failed: bool, estimated: bool, latency: float) -> None:
        self.calls += 1
        self.failed_calls += int(failed)
        self.input_tokens += counts.input_tokens
        self.cached_input_tokens += counts.cached_input_tokens
        self.output_tokens += counts.output_tokens
        self.reasoning_tokens += counts.reasoning_tokens
        self.total_tokens += counts.input_tokens + counts.output_tokens
        self.cost_usd = None if cost is None or self.cost_usd is None else self.cost_usd + cost
        self.estimated_calls += int(estimated)
        self.latency_s += latency

    def merge(self, other: UsageCounts) -> None:
        """Add another aggregate into this one (used to total runs)."""
        for name in (
            "calls",
            "failed_calls",
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
    ) -> None:
        self._add(counts, cost, failed=failed, estimated=estimated, latency=latency)
        self.by_model.setdefault(model, UsageCounts())._add(
            counts, cost, failed=failed, estimated=estimated, latency=latency
        )

    def merge(self, other: UsageCounts) -> None:
        super().merge(other)
        for model, counts in getattr(other, "by_model", {}).items():
            self.by_model.setdefault(model, UsageCounts()).merge(counts)

    @property
    def cost_display(self) -> str:
        """Cost for humans: enough digits to see sub-cent runs, 'unknown' rather than $0 for unpriced."""
        return format_usd(self.cost_usd)

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-safe dict; Decimal costs become exact strings."""
        return json.loads(self.model_dump_json())

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{m}</td><td>{u.calls}</td><td>{u.input_tokens}</td><td>{u.cached_input_tokens}</td>"
            f"<td>{u.output_tokens}</td><td>{format_usd(u.cost_usd)}</td></tr>"
            for m, u in self.by_model.items()
        )
        return (
            f"<b>Usage</b>: {self.calls} calls ({self.failed_calls} failed), {self.total_tokens} tokens, "
            f"{self.cost_display}, {self.latency_s:.2f} s"
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


class _Call:
    __slots__ = ("messages", "model_hint", "root", "started")

    def __init__(self, root: UUID, model_hint: str | None, messages: Sequence[BaseMessage] | None) -> None:
        self.root, self.model_hint, self.messages = root, model_hint, messages
        self.started = time.perf_counter()


class CostTracker(BaseCallbackHandler):
    """Accumulates tokens and USD per call, per run (root run id) and per session; thread-safe.

    A sync handler with `run_inline` works for both sync and async invocations; `raise_error` lets
    the budget guard stop a call before it is sent.
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
    ) -> None:
        self.prices = prices or PriceBook()
        self.default_model = default_model
        self.max_usd = None if max_usd is None else Decimal(str(max_usd))
        self.ledger = Ledger(ledger) if isinstance(ledger, Path | str) else ledger
        self.session_id = session_id or uuid.uuid4().hex
        self.session = Usage()
        self.runs: dict[UUID, Usage] = {}
        self.run_names: dict[UUID, str] = {}
        self._parents: dict[UUID, UUID | None] = {}
        self._calls: dict[UUID, _Call] = {}
        self._lock = threading.RLock()

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **kwargs: Any) -> CostTracker:
        """A tracker priced for the configured provider, with the configured price file and ledger."""
        settings = settings or Settings()
        kwargs.setdefault("prices", price_book_for(settings))
        kwargs.setdefault("default_model", settings.model_name)
        if "ledger" not in kwargs and settings.ledger_file is not None:
            kwargs["ledger"] = settings.ledger_file
        return cls(**kwargs)

    def _root(self, run_id: UUID, parent_run_id: UUID | None) -> UUID:
        node, seen = parent_run_id, 0
        root = run_id
        while node is not None and seen < 1000:
            root = node
            node = self._parents.get(node)
            seen += 1
        return root

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        with self._lock:
            self._parents[run_id] = parent_run_id
            if parent_run_id is None:
                self.run_names[run_id] = kwargs.get("name") or (serialized or {}).get("name") or "run"

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._forget(run_id)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._forget(run_id)

    def _forget(self, run_id: UUID) -> None:
        with self._lock:
            self._parents.pop(run_id, None)

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
        self._start(run_id, parent_run_id, prompt, metadata, kwargs.get("invocation_params"))

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
        self._start(run_id, parent_run_id, prompt, metadata, kwargs.get("invocation_params"))

    def _start(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        prompt: Sequence[BaseMessage],
        metadata: dict[str, Any] | None,
        invocation: dict[str, Any] | None,
    ) -> None:
        hint = self.default_model or _model_from_params(invocation or {})
        self._check_budget(prompt, hint)
        with self._lock:
            root = self._root(run_id, parent_run_id)
            self._calls[run_id] = _Call(root, hint, prompt)

    def _check_budget(self, prompt: Sequence[BaseMessage], model_hint: str | None) -> None:
        """Refuse the call if the session already spent max_usd, or this call's input alone would pass it."""
        if self.max_usd is None:
            return
        spent = self.session.cost_usd
        if spent is not None and spent >= self.max_usd:
            raise BudgetExceeded(spent, self.max_usd)
        if spent is not None and model_hint:
            estimate = self.estimate_cost(prompt, model_hint, warn=False)
            if estimate is not None and spent + estimate > self.max_usd:
                raise BudgetExceeded(spent, self.max_usd, estimate)

    def estimate_cost(
        self, prompt: str | Sequence[Any], model: str, output_tokens: int = 0, *, warn: bool = True
    ) -> Decimal | None:
        """Pre-flight estimate from a local token count (input, plus an assumed output size)."""
        counts = TokenCounts(input_tokens=count_tokens(prompt, model), output_tokens=output_tokens)
        return self.prices.cost(model, counts, warn=warn)

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
        model = self.prices.resolve_model(reported) or call.model_hint or "<unreported>"
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
        self._record(call, model, counts, failed=False, estimated=estimated, status="ok")

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            call = self._calls.pop(run_id, None)
        if call is None:
            return
        completion = getattr(error, "completion", None)
        usage = getattr(completion, "usage", None)
        reported = getattr(completion, "model", None)
        model = self.prices.resolve_model(reported) or call.model_hint or "<unreported>"
        counts = _counts_from_openai_usage(usage) if usage is not None else TokenCounts()
        self._record(call, model, counts, failed=True, estimated=False, status=f"error:{type(error).__name__}")

    def _record(
        self, call: _Call, model: str, counts: TokenCounts, *, failed: bool, estimated: bool, status: str
    ) -> None:
        latency = time.perf_counter() - call.started
        has_tokens = counts.input_tokens or counts.output_tokens
        cost = self.prices.cost(model, counts) if has_tokens else Decimal(0)
        with self._lock:
            for usage in (self.session, self.runs.setdefault(call.root, Usage())):
                usage.add_call(model, counts, cost, failed=failed, estimated=estimated, latency=latency)
        if self.ledger is not None:
            self.ledger.append(
                session_id=self.session_id,
                run_id=str(call.root),
                run_name=self.run_names.get(call.root),
                model=model,
                counts=counts,
                cost=cost,
                latency_s=latency,
                status=status,
                estimated=estimated,
            )

    def run_usage(self, run_id: UUID | str) -> Usage:
        """Usage of one run (empty if the run made no LLM call)."""
        key = run_id if isinstance(run_id, UUID) else UUID(str(run_id))
        with self._lock:
            return self.runs.get(key, Usage()).model_copy(deep=True)

    def summary(self) -> dict[str, Any]:
        """Session and per-run usage as a JSON-safe dict (costs as exact decimal strings)."""
        with self._lock:
            return {
                "session_id": self.session_id,
                "session": self.session.to_json_dict(),
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


def _model_from_params(invocation: dict[str, Any]) -> str | None:
    """The configured model name, except for Azure where it may be a deployment name (never price by that)."""
    if "azure" in str(invocation.get("_type", "")):
        return None
    return invocation.get("model") or invocation.get("model_name")


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
