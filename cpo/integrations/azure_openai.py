"""The earlier public API (`AzureOpenAIClient`, `get_openai_client`, `generate_completion`, `test_connection`).

Same names and call shapes as the earlier implementation, built on the one model path
(`build_chat_model`, whose retries, timeouts and deadlines apply here too) and the one accounting
path (`CostTracker`): no second client, no second price table. Fixed on the way: only transient errors
are retried, the real finish_reason and model are reported, costs are priced by the model that
answered and never rounded to zero, and a missing configuration is a `ConfigError`, as it was in the
earlier implementation, never a silent offline answer.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import openai
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda

from cpo.accounting.tracker import CostTracker
from cpo.core.errors import ConfigError
from cpo.core.settings import Settings
from cpo.core.usage import TokenCounts
from cpo.llm.chat_models import ContentFilteredError
from cpo.llm.factory import build_chat_model
from cpo.net.faults import is_transient

DEFAULT_SYSTEM_MESSAGE = "You are a marketing copywriter."
MIN_MAX_TOKENS = 16
NOT_CONFIGURED = (
    "no LLM endpoint is configured: set AZURE_OPENAI_ENDPOINT, AZURE_OPENAI_API_KEY and "
    "AZURE_OPENAI_DEPLOYMENT_NAME (or OPENAI_BASE_URL and CPO_MODEL_NAME)"
)

__all__ = [
    "AzureOpenAIClient",
    "check_connection",
    "generate_completion",
    "get_openai_client",
    "is_transient",
    "test_connection",
]


class AzureOpenAIClient:
    """Completion client with the earlier interface. `max_retries` is the number of attempts, as before.

    The attempts are the model's own (cpo retries transient failures only, honouring retry-after up to
    CPO_RETRY_MAX_WAIT); each is counted in `get_usage_summary()["total_requests"]`.
    """

    def __init__(self, timeout: float = 10.0, max_retries: int = 3, settings: Settings | None = None) -> None:
        if timeout is None or timeout <= 0:
            raise ValueError("timeout must be a positive number of seconds")
        if max_retries < 1:
            raise ValueError("max_retries (attempts) must be at least 1")
        self.settings = settings or Settings()
        if self.settings.provider == "offline":
            raise ConfigError(NOT_CONFIGURED)
        self.timeout = timeout
        self.max_retries = max_retries
        self.model = build_chat_model(self.settings, timeout=timeout, max_retries=max_retries - 1)
        self.tracker = CostTracker.from_settings(self.settings, ledger=None)
        self.last_model: str | None = None

    def generate_completion(
        self, prompt: str, system_message: str = DEFAULT_SYSTEM_MESSAGE, max_tokens: int = 400
    ) -> dict[str, Any]:
        """One chat completion as a dict: text, finish_reason, tokens, cost_usd, duration_ms, model."""
        if not isinstance(max_tokens, int) or max_tokens < MIN_MAX_TOKENS:
            raise ValueError(f"max_tokens must be an integer >= {MIN_MAX_TOKENS} (got {max_tokens!r})")
        if not prompt or not prompt.strip():
            raise ValueError("prompt must not be empty")
        messages = [SystemMessage(system_message), HumanMessage(prompt)]
        model = self.model.bind(max_tokens=max_tokens)

        def complete(batch: list[BaseMessage], config: RunnableConfig) -> Any:
            return model.invoke(batch, config)

        started = time.perf_counter()
        run_id = uuid.uuid4()  # one run: every attempt of this completion is attributed to it
        config: RunnableConfig = {"callbacks": [self.tracker], "run_id": run_id, "run_name": "generate_completion"}
        try:
            message = RunnableLambda(complete).invoke(messages, config)
        except ContentFilteredError as exc:
            return self._result(run_id, "", "content_filter", getattr(exc.completion, "model", None), started)
        meta = message.response_metadata
        return self._result(run_id, str(message.content), meta.get("finish_reason"), meta.get("model_name"), started)

    def _result(
        self, run_id: uuid.UUID, text: str, finish_reason: str | None, model: str | None, started: float
    ) -> dict[str, Any]:
        usage = self.tracker.run_usage(run_id)
        self.last_model = model or next(iter(usage.by_model), None)
        return {
            "text": text,
            "finish_reason": finish_reason,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "tokens_used": usage.total_tokens,
            "cost_usd": None if usage.cost_usd is None else float(usage.cost_usd),
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            "model": self.last_model,
        }

    def calculate_cost(
        self, input_tokens: int, output_tokens: int, model: str | None = None, cached_input_tokens: int = 0
    ) -> float | None:
        """USD for these tokens at `model`'s price (default: the last model that answered); None if unknown."""
        name = model or self.last_model or self.settings.model_name
        cost = self.tracker.prices.cost(name, TokenCounts(input_tokens, cached_input_tokens, output_tokens))
        return None if cost is None else float(cost)

    def get_usage_summary(self) -> dict[str, Any]:
        """Totals since this client was created; the cost is exact (not rounded), None if any call was unpriced."""
        session = self.tracker.session
        cost: Decimal | None = session.cost_usd
        return {
            "total_requests": session.calls,
            "total_tokens": session.total_tokens,
            "input_tokens": session.input_tokens,
            "output_tokens": session.output_tokens,
            "total_cost_usd": None if cost is None else float(cost),
            "avg_tokens_per_request": session.total_tokens / session.calls if session.calls else 0.0,
        }

    def test_connection(self) -> str:
        """The model's reply to a one-line connection prompt (a ConfigError when nothing is configured)."""
        return str(self.generate_completion("Say 'Connection successful'", max_tokens=20)["text"])

    __test__ = False  # not a pytest test class, despite the method name


_default_client: AzureOpenAIClient | None = None


def _client() -> AzureOpenAIClient:
    global _default_client
    if _default_client is None:
        _default_client = AzureOpenAIClient()
    return _default_client


def get_openai_client() -> openai.AzureOpenAI:
    """The configured `openai.AzureOpenAI` (timeout and retries set): the one inside the chat model."""
    settings = Settings()
    if settings.provider != "azure":
        raise ConfigError("AZURE_OPENAI_ENDPOINT is not set; get_openai_client() needs Azure OpenAI configured")
    client = build_chat_model(settings).root_client  # type: ignore[attr-defined]
    # Used directly, outside cpo's model: the SDK's own retries apply (its requests stay wall-clock bounded).
    return client.with_options(max_retries=settings.max_retries)  # type: ignore[no-any-return]


def generate_completion(
    prompt: str, system_message: str = DEFAULT_SYSTEM_MESSAGE, max_tokens: int = 400
) -> dict[str, Any]:
    """Module-level form of `AzureOpenAIClient.generate_completion`, on a shared default client."""
    return _client().generate_completion(prompt, system_message=system_message, max_tokens=max_tokens)


def test_connection() -> str:
    """Module-level form of `AzureOpenAIClient.test_connection`."""
    return _client().test_connection()


test_connection.__test__ = False  # type: ignore[attr-defined]


def check_connection(say: Callable[[str], Any] = print) -> int:
    """Say ✅ or ❌ with the reason (one plain-text line); 0 when the configured endpoint answered, else 1."""
    try:
        settings = Settings()
        if settings.provider == "offline":
            say(f"❌ {NOT_CONFIGURED} (the offline drafting model is in use)")
            return 1
        client = AzureOpenAIClient(timeout=settings.timeout, settings=settings)
        reply = client.test_connection()
    except Exception as exc:  # every failure becomes one line: that is the point of a check
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        say(f"❌ {type(exc).__name__}: {first}")
        return 1
    say(f"✅ {settings.describe()} answered ({client.last_model}): {reply}")
    return 0


if __name__ == "__main__":
    sys.exit(check_connection())
