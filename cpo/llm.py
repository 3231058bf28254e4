"""The one place a chat model is built: Azure OpenAI, an OpenAI-compatible server, or the offline drafter.

Every model cpo builds keeps three promises for each call, sync or async:

- **Wall-clock attempts.** Each HTTP attempt ends within `timeout` seconds of wall time, however the
  server trickles its answer (`cpo.http`), and never past the enclosing deadline (an email's).
- **cpo owns the retries** (the openai SDK's are off, `max_retries=0`): only transient failures
  (timeouts, connection errors, 408, 409, 429, 5xx) are retried, at most `retry_policy.max_retries`
  times, honouring `retry-after` up to `retry_policy.max_wait_s`. Each attempt is its own callback
  run, so every attempt is seen, counted and priced by a `CostTracker`.
- **Budget first.** Before each attempt is sent, every `CostTracker` among the callbacks reserves the
  attempt's worst case and may refuse it (`BudgetExceeded`), so a budget holds under concurrency.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any, Literal

import openai
from langchain_core.callbacks import Callbacks
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.outputs import LLMResult
from langchain_openai import AzureChatOpenAI, ChatOpenAI
from pydantic import Field

from cpo.costs import CostTracker, trackers_in
from cpo.errors import ConfigError
from cpo.http import deadline_error, http_clients, time_left
from cpo.retries import RetryDecision, RetryPolicy
from cpo.settings import Settings

log = logging.getLogger(__name__)

Source = Literal["azure", "openai-compatible", "offline"]
REASONING_MODEL = re.compile(r"^(o\d|gpt-5)")
ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"
DEADLINE_SLACK_S = 0.05


class ResilientChatModel(BaseChatModel):
    """What cpo adds to a LangChain chat model: its own retries, deadlines and budget reservations."""

    retry_policy: RetryPolicy = Field(default_factory=RetryPolicy, exclude=True)

    def _trackers(self, callbacks: Callbacks) -> list[CostTracker]:
        return trackers_in(callbacks, self.callbacks)

    def _params_for_budget(
        self, trackers: list[CostTracker], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """The call's parameters, which a budget prices; not worked out per call when no tracker has one."""
        if any(tracker.budget is not None for tracker in trackers):
            return self._get_invocation_params(stop=stop, **kwargs)
        return {}

    def _before_attempt(self, retries: int, run_id: uuid.UUID | None) -> uuid.UUID:
        """The run id of the next attempt (the caller's for the first); none starts past the deadline."""
        left = time_left()
        if left is not None and left <= 0:
            raise deadline_error(f"before attempt {retries + 1}")
        return run_id if retries == 0 and run_id is not None else uuid.uuid4()

    def _after_failure(self, exc: Exception, retries: int) -> RetryDecision:
        """Retry, or re-raise (as DeadlineExceeded when the enclosing deadline is what ended it)."""
        left = time_left()
        decision = self.retry_policy.decide(exc, retries, left)
        if decision.retry:
            log.info("attempt %d failed (%s); retrying in %.2f s", retries + 1, _brief(exc), decision.wait_s)
            return decision
        if left is not None and left <= DEADLINE_SLACK_S:
            raise deadline_error(f"during attempt {retries + 1} ({_brief(exc)})") from exc
        if decision.reason:
            exc.add_note(decision.reason)
        raise exc

    def generate(
        self,
        messages: list[list[BaseMessage]],
        stop: list[str] | None = None,
        callbacks: Callbacks = None,
        *,
        run_id: uuid.UUID | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        trackers = self._trackers(callbacks)
        params = self._params_for_budget(trackers, stop, kwargs)
        prompt = [m for batch in messages for m in batch]
        retries = 0
        while True:
            attempt_id = self._before_attempt(retries, run_id)
            try:
                for tracker in trackers:
                    tracker.reserve(attempt_id, prompt, params)
                return super().generate(messages, stop, callbacks, run_id=attempt_id, **kwargs)
            except Exception as exc:
                decision = self._after_failure(exc, retries)
            finally:
                for tracker in trackers:
                    tracker.close_call(attempt_id)
            time.sleep(decision.wait_s)
            retries += 1

    async def agenerate(
        self,
        messages: list[list[BaseMessage]],
        stop: list[str] | None = None,
        callbacks: Callbacks = None,
        *,
        run_id: uuid.UUID | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        trackers = self._trackers(callbacks)
        params = self._params_for_budget(trackers, stop, kwargs)
        prompt = [m for batch in messages for m in batch]
        retries = 0
        while True:
            attempt_id = self._before_attempt(retries, run_id)
            try:
                for tracker in trackers:
                    await tracker.areserve(attempt_id, prompt, params)
                return await super().agenerate(messages, stop, callbacks, run_id=attempt_id, **kwargs)
            except Exception as exc:
                decision = self._after_failure(exc, retries)
            finally:
                for tracker in trackers:
                    tracker.close_call(attempt_id)  # after a cancellation: a call of unknown cost
            await asyncio.sleep(decision.wait_s)
            retries += 1


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:120]}" if text else type(exc).__name__


class ContentFilteredError(openai.ContentFilterFinishReasonError, ValueError):
    """Azure withheld the answer (finish_reason content_filter); `.completion` keeps the billed usage.

    langchain-openai raises a bare ValueError here, which loses the usage; a ValueError subclass keeps
    existing `except ValueError` code working.
    """


class CpoAzureChatOpenAI(ResilientChatModel, AzureChatOpenAI):
    """AzureChatOpenAI plus cpo's call promises, and a content-filtered answer that keeps its usage.

    It relies on langchain-openai raising a ValueError that says "content filter" from
    `_create_chat_result` (pinned by `tests/test_model_layer.py`).
    """

    def _create_chat_result(
        self, response: dict[str, Any] | openai.BaseModel, generation_info: dict[str, Any] | None = None
    ) -> Any:
        try:
            return super()._create_chat_result(response, generation_info)
        except ValueError as exc:
            if "content filter" not in str(exc):
                raise
            completion = response if isinstance(response, openai.BaseModel) else _as_completion(response)
            raise ContentFilteredError(completion=completion) from exc  # type: ignore[arg-type]


class CpoChatOpenAI(ResilientChatModel, ChatOpenAI):
    """ChatOpenAI (any OpenAI-compatible server) plus cpo's call promises.

    The output limit goes out as `max_tokens`, the field every OpenAI-compatible server reads:
    langchain-openai sends only `max_completion_tokens`, which llama-cpp-python's server ignores, so
    the limit (and the budget's worst case built on it) silently did not hold there. Reasoning models
    (o1, o3, gpt-5 ...) accept only the new field and keep it.
    """

    def _get_request_payload(self, input_: Any, *, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        payload: dict[str, Any] = super()._get_request_payload(input_, stop=stop, **kwargs)
        if "max_completion_tokens" in payload and not REASONING_MODEL.match(self.model_name or ""):
            payload["max_tokens"] = payload.pop("max_completion_tokens")
        return payload


def _as_completion(response: dict[str, Any]) -> Any:
    from openai.types.chat import ChatCompletion

    return ChatCompletion.model_validate(response)


def build_chat_model(settings: Settings | None = None, **overrides: Any) -> BaseChatModel:
    """A chat model for the configured provider; `overrides` go to the model constructor.

    `timeout` is the wall-clock bound of one attempt; `max_retries` is the number of extra attempts
    cpo makes for transient failures (the SDK's own retries are always off).
    """
    settings = settings or Settings()
    timeout = overrides.pop("timeout", settings.timeout)
    if timeout is None or timeout <= 0:
        raise ConfigError(f"CPO_LLM_TIMEOUT: a positive timeout is required (got {timeout!r}); calls must never hang")
    policy = RetryPolicy(
        max_retries=int(overrides.pop("max_retries", settings.max_retries)),
        max_wait_s=float(overrides.pop("retry_max_wait", settings.retry_max_wait)),
    )
    params: dict[str, Any] = {"timeout": timeout, "max_retries": 0, "retry_policy": policy, **overrides}
    provider = settings.provider
    if provider == "azure":
        return _azure(settings, params)
    if provider == "openai-compatible":
        return _openai_compatible(settings, params)
    from cpo.offline import OfflineChatModel

    return OfflineChatModel(**{k: v for k, v in params.items() if k in OfflineChatModel.model_fields})


def _azure(settings: Settings, params: dict[str, Any]) -> BaseChatModel:
    auth: dict[str, Any]
    if settings.azure_api_key is not None:
        auth = {"api_key": settings.azure_api_key}
    else:
        auth = {"azure_ad_token_provider": _entra_token_provider()}
    endpoint = str(settings.azure_endpoint)
    sync_client, async_client = http_clients(endpoint)
    fields: dict[str, Any] = {
        "azure_endpoint": endpoint,
        "azure_deployment": settings.azure_deployment,
        "api_version": settings.azure_api_version,
        "model": settings.model_name,
        "http_client": sync_client,
        "http_async_client": async_client,
        **auth,
        **params,
    }
    return CpoAzureChatOpenAI(**fields)


def _entra_token_provider() -> Any:
    """Keyless Azure sign-in (Entra ID) through azure-identity, an optional extra."""
    try:
        from azure.identity import DefaultAzureCredential, get_bearer_token_provider
    except ImportError:
        raise ConfigError(
            "AZURE_OPENAI_API_KEY is not set; set it, or install azure-identity for Entra ID sign-in "
            "(pip install 'cpo[azure]')"
        ) from None
    return get_bearer_token_provider(DefaultAzureCredential(), ENTRA_SCOPE)


def _openai_compatible(settings: Settings, params: dict[str, Any]) -> BaseChatModel:
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "not-needed"
    params.setdefault("stream_usage", True)
    base_url = str(settings.openai_base_url)
    sync_client, async_client = http_clients(base_url)
    fields: dict[str, Any] = {
        "base_url": base_url,
        "api_key": key,
        "model": settings.model_name,
        "http_client": sync_client,
        "http_async_client": async_client,
        **params,
    }
    return CpoChatOpenAI(**fields)


def model_source(model: Any) -> Source:
    """Which kind of endpoint a model talks to, for the `source` field of outputs."""
    if isinstance(model, AzureChatOpenAI):
        return "azure"
    if isinstance(model, ChatOpenAI):
        return "openai-compatible"
    return "offline"
