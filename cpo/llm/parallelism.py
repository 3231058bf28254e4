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
PARALLEL_REQUEST_TOKENS = 100  # what a quota counts for one probe: its prompt (about 25) plus PARALLEL_MAX_TOKENS


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


class NotMeasurable(Exception):
    """The deployment's quota never lets two requests go at once: two at once would be timed as the quota's
    spacing, not as the server's (a low CPO_RPM would read as a server answering one at a time)."""


async def measure_parallelism(model: BaseChatModel, config: RunnableConfig | None = None) -> Parallelism:
    """One warm-up call, one timed call alone, then two timed together; each timed once the deployment's quota
    (if paced) has room for it, so that only the server is timed."""
    bound = model.bind(max_tokens=PARALLEL_MAX_TOKENS, temperature=0)
    messages = [HumanMessage(PARALLEL_PROMPT)]
    await bound.ainvoke(messages, config)
    await _room_for(model, 1)
    started = time.perf_counter()
    await bound.ainvoke(messages, config)
    single = time.perf_counter() - started
    await _room_for(model, 2)
    started = time.perf_counter()
    await asyncio.gather(*(bound.ainvoke(messages, config) for _ in range(2)))
    return Parallelism(single_s=single, pair_s=time.perf_counter() - started)


async def _room_for(model: BaseChatModel, requests: int) -> None:
    pacer = getattr(model, "quota_pacer", None)
    if pacer is None:
        return
    wait = pacer.room_in(requests, PARALLEL_REQUEST_TOKENS)
    if wait is None:
        raise NotMeasurable(
            f"the quota (CPO_RPM/CPO_TPM) never lets {requests} requests go at once, so the server cannot be timed"
        )
    await asyncio.sleep(wait)


def concurrency_warning(notes: EndpointNotes, model: Any, concurrency: int) -> str | None:
    """A one-line warning when the endpoint was measured to serve one request at a time."""
    if concurrency <= 1 or notes.get(endpoint_key(model), "parallel") is not False:
        return None
    return (
        f"warning: this endpoint serves one request at a time (measured by `cpo check`); with --concurrency "
        f"{concurrency} requests wait in its queue and can time out: use --concurrency 1"
    )
