"""The budget holds for a chat model cpo did not build, and a sync call made inside a running event loop (a
notebook cell) waits for room instead of being refused: the two paths by which a call reserves its worst case.
"""

from __future__ import annotations

import asyncio
import threading
import time
from decimal import Decimal
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from cpo import BudgetExceeded, CostTracker
from cpo.llm.offline import OfflineChatModel

MODEL = "gpt-4o-mini"  # priced by the offline price table: $0.15 / $0.60 per million input / output tokens


class PlainModel(BaseChatModel):
    """A LangChain chat model of the user's own: no cpo retries, no cpo reservation of its own."""

    sent: list[str] = Field(default_factory=list)
    billed_output: int = 5_000

    @property
    def _llm_type(self) -> str:
        return "plain"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": MODEL}

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
        self.sent.append(str(messages[-1].content))
        usage = {"input_tokens": 10, "output_tokens": self.billed_output, "total_tokens": 10 + self.billed_output}
        message = AIMessage("ok", usage_metadata=usage, response_metadata={"model_name": MODEL})  # type: ignore[arg-type]
        return ChatResult(generations=[ChatGeneration(message=message)])


def test_a_budget_refuses_a_call_of_a_model_cpo_did_not_build_before_it_is_sent() -> None:
    """Each call may write 16,384 tokens (no max_tokens): about $0.0098. It bills 5,000 output tokens ($0.003)."""
    model = PlainModel()
    tracker = CostTracker(max_usd="0.005")
    with pytest.raises(BudgetExceeded):
        model.invoke("first", {"callbacks": [tracker]})
    assert model.sent == [] and tracker.session.calls == 0  # refused before it was sent

    tracker = CostTracker(max_usd="0.012")
    model.invoke("first", {"callbacks": [tracker]})  # fits: $0.0098 reserved, $0.003 billed
    with pytest.raises(BudgetExceeded):
        model.invoke("second", {"callbacks": [tracker]})  # $0.003 spent + $0.0098 would pass $0.012
    assert model.sent == ["first"] and tracker.session.cost_usd is not None
    assert tracker.session.cost_usd <= Decimal("0.012")


class SlowPricedModel(OfflineChatModel):
    """cpo's own model kind (retries, reservations), priced like gpt-4o-mini, answering after `delay_s`."""

    model_name: str = MODEL
    delay_s: float = 0.4

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
        time.sleep(self.delay_s)
        return super()._generate(messages, stop, run_manager, **kw)


async def test_a_sync_call_inside_a_running_event_loop_waits_for_room_instead_of_being_refused() -> None:
    """Each call reserves ~$0.012 (max_tokens 20,000) and bills far less; the cap ($0.02) holds one at a time.
    A call made from a thread holds the room; a sync call from this coroutine must wait for it, not fail."""
    model = SlowPricedModel().bind(max_tokens=20_000)
    tracker = CostTracker(max_usd="0.02")
    holding = threading.Event()

    def in_flight() -> None:
        holding.set()
        model.invoke("hold the room", {"callbacks": [tracker]})

    other = threading.Thread(target=in_flight)
    other.start()
    holding.wait(2)
    await asyncio.sleep(0.1)  # the thread's call has reserved and is being answered
    assert tracker.budget is not None and tracker.budget.snapshot()["in_flight"] == 1
    started = time.perf_counter()
    reply = model.invoke("then me", {"callbacks": [tracker]})  # sync, on this running loop's thread
    waited = time.perf_counter() - started
    other.join(5)
    assert reply.content and tracker.session.calls == 2 and tracker.budget.refused == 0
    assert waited >= 0.2  # it waited for the other call to settle
