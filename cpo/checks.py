"""`cpo check`: does the endpoint answer, which structured-output method works, does it run calls in parallel.

Each probe is a handful of tiny calls (billed like any other, and recorded in the ledger). What it
learns is kept in the endpoint notes, so `cpo run` starts with the method that works and can warn
when `--concurrency` is more than the server will run at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableConfig

from cpo.endpoints import EndpointNotes, endpoint_key

# Two calls at once taking this many times one call alone means the server ran them one after another.
SERIAL_RATIO = 1.6
PARALLEL_PROMPT = "Count from 1 to 40 in words, separated by commas."
PARALLEL_MAX_TOKENS = 48


@dataclass(frozen=True)
class Parallelism:
    """Timings of one call alone and two at once, and the verdict."""

    single_s: float
    pair_s: float

    @property
    def ratio(self) -> float:
        return self.pair_s / self.single_s if self.single_s > 0 else 1.0

    @property
    def parallel(self) -> bool:
        return self.ratio < SERIAL_RATIO

    def describe(self) -> str:
        how = "in parallel" if self.parallel else "one at a time"
        return (
            f"serves requests {how}: 2 at once took {self.pair_s:.2f} s, {self.ratio:.1f}x one alone "
            f"({self.single_s:.2f} s)"
        )


async def measure_parallelism(model: BaseChatModel, config: RunnableConfig | None = None) -> Parallelism:
    """One warm-up call, one timed call alone, then two timed together."""
    bound = model.bind(max_tokens=PARALLEL_MAX_TOKENS, temperature=0)
    messages = [HumanMessage(PARALLEL_PROMPT)]
    await bound.ainvoke(messages, config)
    started = time.perf_counter()
    await bound.ainvoke(messages, config)
    single = time.perf_counter() - started
    started = time.perf_counter()
    await asyncio.gather(*(bound.ainvoke(messages, config) for _ in range(2)))
    return Parallelism(single_s=single, pair_s=time.perf_counter() - started)


def concurrency_warning(notes: EndpointNotes, model: Any, concurrency: int) -> str | None:
    """A one-line warning when the endpoint was measured to serve one request at a time."""
    if concurrency <= 1 or notes.get(endpoint_key(model), "parallel") is not False:
        return None
    return (
        f"warning: this endpoint serves one request at a time (measured by `cpo check`); with --concurrency "
        f"{concurrency} requests wait in its queue and can time out: use --concurrency 1"
    )


def check_endpoint(
    say: Callable[[str], Any], *, notes: EndpointNotes, settings: Any, callbacks: list[Any] | None = None
) -> int:
    """Connection, structured-output method and parallelism, one line each; 0 if all answered."""
    from cpo.chains.email import build_email_chain
    from cpo.llm import build_chat_model, model_source
    from cpo.runner import one_line

    model = build_chat_model(settings)
    if model_source(model) == "offline":
        say(
            "❌ no LLM endpoint is configured: set AZURE_OPENAI_ENDPOINT, AZURE_OPENAI_API_KEY and "
            "AZURE_OPENAI_DEPLOYMENT_NAME (or OPENAI_BASE_URL and CPO_MODEL_NAME); until then cpo uses its "
            "offline drafting model"
        )
        return 1
    config: RunnableConfig = {"callbacks": callbacks or [], "run_name": "cpo check"}
    key = endpoint_key(model)
    try:
        reply = model.bind(max_tokens=20).invoke("Say 'Connection successful'", config)
    except Exception as exc:  # every failure becomes one line: that is the point of a check
        say(f"❌ {settings.describe()}: {one_line(exc)}")
        return 1
    served_by = reply.response_metadata.get("model_name") or "model not reported"
    say(f"✅ {settings.describe()} answered ({served_by}): {' '.join(str(reply.content).split())[:80]}")

    chain = build_email_chain(model, settings=settings, notes=notes, offline_fallback=False)
    before = chain.method
    try:
        method = chain.probe_method(config)
    except Exception as exc:
        say(f"❌ structured output: no method worked ({one_line(exc)})")
        return 1
    tried = "" if method == before else f" ({before} refused)"
    say(f"✅ structured output: {method}{tried}; remembered for this endpoint")

    try:
        measured = asyncio.run(measure_parallelism(model, config))
    except Exception as exc:
        say(f"❌ parallelism not measured: {one_line(exc)}")
        return 1
    notes.note(key, parallel=measured.parallel, pair_ratio=round(measured.ratio, 2))
    say(f"{'✅' if measured.parallel else 'ℹ️'} {measured.describe()}")
    if not measured.parallel:
        say("   use `cpo run --concurrency 1` with this endpoint: queued requests wait and can time out")
    return 0
