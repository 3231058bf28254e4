"""What cpo adds to every LangChain chat model it builds: its own retries, deadlines and budget reservations.

Every model cpo builds keeps three promises for each call, sync or async:

- **Wall-clock attempts.** Each HTTP attempt ends within `timeout` seconds of wall time, however the
  server trickles its answer (`cpo.net.transport`), and never past the enclosing deadline (an email's).
- **cpo owns the retries** (the openai SDK's are off, `max_retries=0`): only transient failures
  (timeouts, connection errors, 408, 409, 429, 5xx) are retried, at most `retry_policy.max_retries`
  times, honouring `retry-after` up to `retry_policy.max_wait_s`. Each attempt is its own callback
  run, so every attempt is seen, counted and priced by a `CostTracker` (`cpo.llm.attempts`).
- **Budget first.** Before each attempt is sent, every `CostTracker` among the callbacks reserves the
  attempt's worst case and may refuse it (`BudgetExceeded`), so a budget holds under concurrency.

`generate` and `agenerate` are the one pair of twins here: the attempt loop is `Attempts`; they differ
only in how they reserve and wait (a blocking wait, or an awaited one). Each attempt is sent by the
model `_deployment` names: this one, or for a pool of deployments the one it picks (`cpo.llm.pool`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.outputs import LLMResult
from pydantic import Field

from cpo.accounting.tracker import trackers_in
from cpo.llm.attempts import Attempts
from cpo.net.hooks import invocation_params
from cpo.net.pacing import QuotaPacer
from cpo.net.retries import RetryPolicy


class ResilientChatModel(BaseChatModel):
    """A chat model whose every call is bounded, retried by cpo and budgeted."""

    retry_policy: RetryPolicy = Field(default_factory=RetryPolicy, exclude=True)
    # The deployment's quota, which its transports pace every request by (None: unpaced); `cpo check` times
    # requests only once the quota has room for them.
    quota_pacer: QuotaPacer | None = Field(None, exclude=True)

    def _attempts(
        self,
        messages: list[list[BaseMessage]],
        stop: list[str] | None,
        callbacks: Callbacks,
        run_id: uuid.UUID | None,
        kwargs: dict[str, Any],
    ) -> Attempts:
        trackers = trackers_in(callbacks, self.callbacks)
        # The call's parameters, which a budget prices; not worked out per call when no tracker has one.
        budgeted = any(tracker.budget is not None for tracker in trackers)

        def params(model: BaseChatModel) -> dict[str, Any]:
            return invocation_params(model, stop, kwargs) if budgeted else {}

        prompt = [m for batch in messages for m in batch]
        return Attempts(self.retry_policy, trackers, prompt, params, run_id)

    def _deployment(self, attempts: Attempts) -> AbstractContextManager[ResilientChatModel]:
        """The model that sends the next attempt: this one. A pool of deployments picks one of its own, and
        learns from how the attempt ended (`cpo.llm.pool`)."""
        return nullcontext(self)

    def _elsewhere(self, attempts: Attempts) -> bool:
        """Can another deployment take the retry at once? Never for one model; a pool's may (`cpo.llm.pool`)."""
        return False

    def generate(
        self,
        messages: list[list[BaseMessage]],
        stop: list[str] | None = None,
        callbacks: Callbacks = None,
        *,
        run_id: uuid.UUID | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        attempts = self._attempts(messages, stop, callbacks, run_id, kwargs)
        while True:
            attempt_id = attempts.next()
            try:
                with self._deployment(attempts) as target:
                    for tracker in attempts.trackers:
                        tracker.reserve(attempt_id, attempts.prompt, attempts.params(target))
                    send = super(ResilientChatModel, target).generate
                    return send(messages, stop, callbacks, run_id=attempt_id, **kwargs)
            except Exception as exc:
                wait = attempts.failed(exc, self._elsewhere(attempts))
            finally:
                attempts.close(attempt_id)
            time.sleep(wait)

    async def agenerate(
        self,
        messages: list[list[BaseMessage]],
        stop: list[str] | None = None,
        callbacks: Callbacks = None,
        *,
        run_id: uuid.UUID | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        attempts = self._attempts(messages, stop, callbacks, run_id, kwargs)
        while True:
            attempt_id = attempts.next()
            try:
                with self._deployment(attempts) as target:
                    for tracker in attempts.trackers:
                        await tracker.areserve(attempt_id, attempts.prompt, attempts.params(target))
                    send = super(ResilientChatModel, target).agenerate
                    return await send(messages, stop, callbacks, run_id=attempt_id, **kwargs)
            except Exception as exc:
                wait = attempts.failed(exc, self._elsewhere(attempts))
            finally:
                attempts.close(attempt_id)  # after a cancellation: a call of unknown cost
            await asyncio.sleep(wait)
