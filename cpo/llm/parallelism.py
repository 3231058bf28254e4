"""Does an endpoint serve requests in parallel? One call alone, then two at once, timed.

`cpo check` measures it and keeps the verdict in the endpoint notes, so `cpo run` can warn when
`--concurrency` is more than the server will run at once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableConfig

from cpo.llm.endpoints import EndpointNotes, endpoint_key

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
