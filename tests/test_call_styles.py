"""The sync and async call styles share one implementation (the email loop, the attempt loop): the same email,
the same accounting, whichever style a caller uses, also a sync call inside a running event loop (Jupyter).
"""

from __future__ import annotations

import asyncio
from typing import Any

from cpo import ContentBundle, CostTracker, build_email_chain
from cpo.core.models import EmailVariant
from cpo.llm.offline import OfflineChatModel


def comparable(variant: EmailVariant) -> dict[str, Any]:
    """What must not depend on the call style (timings and run ids do)."""
    data = variant.model_dump(mode="json", exclude={"latency_s", "run_id"})
    data["usage"].pop("latency_s")
    for model in data["usage"]["by_model"].values():
        model.pop("latency_s")
    for step in data["steps"]:
        step.pop("seconds")
    return data


def test_invoke_ainvoke_and_batch_give_the_same_email_and_usage() -> None:
    request = ContentBundle.load().request("Lapsed Silver", "urgent")
    chain = build_email_chain(OfflineChatModel())
    sync_tracker, async_tracker = CostTracker(max_usd="1"), CostTracker(max_usd="1")
    sync = chain.invoke(request, {"callbacks": [sync_tracker]})
    in_async = asyncio.run(chain.ainvoke(request, {"callbacks": [async_tracker]}))
    batched = chain.batch([request, request])
    assert comparable(sync) == comparable(in_async) == comparable(batched[0]) == comparable(batched[1])
    assert sync.valid and sync_tracker.session.calls == async_tracker.session.calls == 1
    assert sync_tracker.session.input_tokens == async_tracker.session.input_tokens > 0


async def test_a_sync_call_works_inside_a_running_event_loop() -> None:
    """A notebook cell runs inside Jupyter's event loop: the sync path must not start (or need) its own loop."""
    asyncio.get_running_loop()  # this test body runs on a loop, as a notebook cell does
    request = ContentBundle.load().request("New Customer", "friendly")
    tracker = CostTracker(max_usd="1")
    variant = build_email_chain(OfflineChatModel()).invoke(request, {"callbacks": [tracker]})
    assert variant.valid and tracker.session.calls == 1 and tracker.budget is not None
    assert tracker.budget.snapshot()["in_flight"] == 0  # the reservation was settled
