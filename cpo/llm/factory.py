"""The one place a chat model is built: Azure OpenAI, an OpenAI-compatible server, or the offline drafter.

The provider is chosen once, by `Settings.provider`; this module builds what it names.
"""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_openai import AzureChatOpenAI, ChatOpenAI

from cpo.core.errors import ConfigError
from cpo.core.models import Source
from cpo.core.settings import Settings
from cpo.llm.chat_models import CpoAzureChatOpenAI, CpoChatOpenAI
from cpo.net.pacing import QuotaPacer
from cpo.net.retries import RetryPolicy
from cpo.net.transport import http_clients

ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"


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
    from cpo.llm.offline import OfflineChatModel

    return OfflineChatModel(**{k: v for k, v in params.items() if k in OfflineChatModel.model_fields})


def pacer_for(settings: Settings) -> QuotaPacer | None:
    """The deployment's quota (CPO_RPM, CPO_TPM), shared by every request the model makes; None unset."""
    if not settings.rpm and not settings.tpm:
        return None
    return QuotaPacer(settings.rpm, settings.tpm, window_s=settings.quota_window)


def _azure(settings: Settings, params: dict[str, Any]) -> BaseChatModel:
    auth: dict[str, Any]
    if settings.azure_api_key is not None:
        auth = {"api_key": settings.azure_api_key}
    else:
        auth = {"azure_ad_token_provider": _entra_token_provider()}
    endpoint = str(settings.azure_endpoint)
    sync_client, async_client = http_clients(endpoint, pacer_for(settings))
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
    sync_client, async_client = http_clients(base_url, pacer_for(settings))
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
