"""Every private hook cpo uses in httpx2, langchain-core and langchain-openai, gathered in one place.

Each hook names the private attribute it relies on, and `tests/test_hooks.py` pins each one against
the installed libraries: an upgrade that moves one fails there, naming the hook, instead of somewhere
deep inside a campaign. Nothing else in cpo touches a private name of these libraries.

- `wrap_network_backend`: httpx2's `HTTPTransport._pool._network_backend` (no public hook for it).
- `invocation_params`: langchain-core's `BaseChatModel._get_invocation_params` (what a call will send).
- `KeepsFilteredUsage`: langchain-openai's `_create_chat_result`, which raises a bare ValueError saying
  "content filter" and so loses the billed usage.
- `SendsMaxTokens`: langchain-openai's `_get_request_payload`, which sends only `max_completion_tokens`.
- `NamesItsDeployment`: langchain-core's `_get_invocation_params` again, to tell the callbacks which deployment
  of several (`cpo.llm.pool`) a call went to.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import openai

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langchain_openai.chat_models.base import BaseChatOpenAI as _OpenAIModel
else:
    _OpenAIModel = object

REASONING_MODEL = re.compile(r"^(o\d|gpt-5)")
# A call's parameters name its deployment as the deployments file does (several endpoints may each have a
# deployment called "gpt-4o-mini", billed differently); a single deployment is its Azure name.
DEPLOYMENT_PARAM = "cpo_deployment"


def wrap_network_backend(transport: Any, wrap: Callable[[Any], Any]) -> None:
    """Put `wrap(backend)` in place of the network backend of an httpx2 transport's connection pool."""
    pool = transport._pool
    pool._network_backend = wrap(pool._network_backend)


def invocation_params(model: BaseChatModel, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The parameters a chat model will send for a call (model, max_tokens, response_format, tools ...)."""
    return dict(model._get_invocation_params(stop=stop, **kwargs))


class NamesItsDeployment(_OpenAIModel):
    """For one deployment of several: its calls' parameters carry the name the deployments file gives it, which
    the cost tracker records and prices by (the payload sent is unchanged)."""

    deployment_label: str

    def _get_invocation_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        return {**super()._get_invocation_params(stop=stop, **kwargs), DEPLOYMENT_PARAM: self.deployment_label}


class ContentFilteredError(openai.ContentFilterFinishReasonError, ValueError):
    """Azure withheld the answer (finish_reason content_filter); `.completion` keeps the billed usage.

    langchain-openai raises a bare ValueError here, which loses the usage; a ValueError subclass keeps
    existing `except ValueError` code working.
    """


class KeepsFilteredUsage(_OpenAIModel):
    """For langchain-openai models: a content-filtered answer raises `ContentFilteredError` with its usage."""

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


class SendsMaxTokens(_OpenAIModel):
    """For OpenAI-compatible servers: the output limit goes out as `max_tokens`, the field every such server reads.

    langchain-openai sends only `max_completion_tokens`, which llama-cpp-python's server ignores, so the
    limit (and the budget's worst case built on it) silently did not hold there. Reasoning models (o1, o3,
    gpt-5 ...) accept only the new field and keep it.
    """

    def _get_request_payload(self, input_: Any, *, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        payload: dict[str, Any] = super()._get_request_payload(input_, stop=stop, **kwargs)
        if "max_completion_tokens" in payload and not REASONING_MODEL.match(self.model_name or ""):
            payload["max_tokens"] = payload.pop("max_completion_tokens")
        return payload


def _as_completion(response: dict[str, Any]) -> Any:
    from openai.types.chat import ChatCompletion

    return ChatCompletion.model_validate(response)
