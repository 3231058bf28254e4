"""The one place a chat model is built: Azure OpenAI, an OpenAI-compatible server, or the offline drafter.

Timeout and retries are always explicit (langchain-openai passes timeout=None otherwise, i.e. no
timeout). Retries are the openai SDK's own, which retry only transient failures: connection errors,
timeouts, 408, 409, 429 and 5xx, honouring `retry-after-ms` / `retry-after`; 400 (Azure's
`content_filter` included), 401, 403, 404 and 422 fail on the first answer.
"""

from __future__ import annotations

from typing import Any, Literal

import openai
from langchain_core.language_models import BaseChatModel
from langchain_openai import AzureChatOpenAI, ChatOpenAI

from cpo.errors import ConfigError
from cpo.settings import Settings

Source = Literal["azure", "openai-compatible", "offline"]
ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"


def build_chat_model(settings: Settings | None = None, **overrides: Any) -> BaseChatModel:
    """A chat model for the configured provider; `overrides` go to the model constructor."""
    settings = settings or Settings()
    params: dict[str, Any] = {
        "timeout": settings.timeout,
        "max_retries": settings.max_retries,
    }
    params.update(overrides)
    if params.get("timeout") is None:
        raise ConfigError("CPO_LLM_TIMEOUT: a timeout is required (got None); calls must never hang")
    provider = settings.provider
    if provider == "azure":
        return _azure(settings, params)
    if provider == "openai-compatible":
        return _openai_compatible(settings, params)
    from cpo.offline import OfflineChatModel

    return OfflineChatModel(**{k: v for k, v in overrides.items() if k in OfflineChatModel.model_fields})


class ContentFilteredError(openai.ContentFilterFinishReasonError, ValueError):
    """Azure withheld the answer (finish_reason content_filter); `.completion` keeps the billed usage.

    langchain-openai raises a bare ValueError here, which loses the usage; a ValueError subclass keeps
    existing `except ValueError` code working.
    """


class CpoAzureChatOpenAI(AzureChatOpenAI):
    """AzureChatOpenAI plus one difference: a content-filtered answer raises with its usage attached."""

    def _create_chat_result(self, response: dict | openai.BaseModel, generation_info: dict | None = None) -> Any:
        try:
            return super()._create_chat_result(response, generation_info)
        except ValueError as exc:
            if "content filter" not in str(exc):
                raise
            completion = response if isinstance(response, openai.BaseModel) else _as_completion(response)
            raise ContentFilteredError(completion=completion) from exc  # type: ignore[arg-type]


def _as_completion(response: dict[str, Any]) -> Any:
    from openai.types.chat import ChatCompletion

    return ChatCompletion.model_validate(response)


def _azure(settings: Settings, params: dict[str, Any]) -> BaseChatModel:
    auth: dict[str, Any]
    if settings.azure_api_key is not None:
        auth = {"api_key": settings.azure_api_key}
    else:
        auth = {"azure_ad_token_provider": _entra_token_provider()}
    return CpoAzureChatOpenAI(
        azure_endpoint=settings.azure_endpoint,
        azure_deployment=settings.azure_deployment,
        api_version=settings.azure_api_version,
        model=settings.model_name,
        **auth,
        **params,
    )


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
    return ChatOpenAI(base_url=settings.openai_base_url, api_key=key, model=settings.model_name, **params)


def model_source(model: Any) -> Source:
    """Which kind of endpoint a model talks to, for the `source` field of outputs."""
    if isinstance(model, AzureChatOpenAI):
        return "azure"
    if isinstance(model, ChatOpenAI):
        return "openai-compatible"
    return "offline"
