"""The one place a chat model is built: Azure OpenAI, an OpenAI-compatible server, or the offline drafter.

The provider is chosen once, by `Settings.provider`; this module builds what it names.
"""

from __future__ import annotations

import os
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
    if settings.deployments is not None:
        return _deployment_pool(settings, params)
    auth: dict[str, Any]
    if settings.azure_api_key is not None:
        auth = {"api_key": settings.azure_api_key}
    else:
        auth = {"azure_ad_token_provider": _entra_token_provider()}
    endpoint = str(settings.azure_endpoint)
    pacer = pacer_for(settings)
    sync_client, async_client = http_clients(endpoint, pacer)
    fields: dict[str, Any] = {
        "azure_endpoint": endpoint,
        "azure_deployment": settings.azure_deployment,
        "api_version": settings.azure_api_version,
        "model": settings.model_name,
        "http_client": sync_client,
        "http_async_client": async_client,
        "quota_pacer": pacer,
        **auth,
        **params,
    }
    return CpoAzureChatOpenAI(**fields)


def _deployment_pool(settings: Settings, params: dict[str, Any]) -> BaseChatModel:
    """The deployments file's deployments as one model, each with its own key, quota and price name."""
    from cpo.llm.pool import CpoAzureDeployment, DeploymentPool, Member, Router

    assert settings.deployments is not None
    members = []
    for entry in settings.deployments.deployments:
        pacer = QuotaPacer(entry.rpm, entry.tpm, window_s=settings.quota_window) if entry.rpm or entry.tpm else None
        sync_client, async_client = http_clients(entry.endpoint, pacer)
        fields: dict[str, Any] = {
            "quota_pacer": pacer,
            "azure_endpoint": entry.endpoint,
            "azure_deployment": entry.deployment,
            "api_version": entry.api_version or settings.azure_api_version,
            "model": settings.model_name,
            "http_client": sync_client,
            "http_async_client": async_client,
            **_deployment_auth(settings, entry.api_key_env, entry.name),
            **params,
        }
        members.append(Member(entry, CpoAzureDeployment(deployment_label=entry.name, **fields)))
    first = members[0].model
    fields = {name: getattr(first, name) for name in _SHARED_FIELDS if getattr(first, name, None) is not None}
    router = Router(members, settings.deployments.failover_after)
    return DeploymentPool(router=router, **fields, **params)


# What the pool takes from its first deployment, so that binding tools or a schema works as on any Azure model.
_SHARED_FIELDS = (
    "azure_endpoint",
    "deployment_name",
    "openai_api_version",
    "model_name",
    "openai_api_key",
    "azure_ad_token_provider",
    "http_client",
    "http_async_client",
)


def _deployment_auth(settings: Settings, variable: str, name: str) -> dict[str, Any]:
    """A deployment's key from the variable the file names (the environment, then .env); Entra ID when the
    default variable is unset; a variable the file names explicitly must be set."""
    from cpo.core.deployments import DEFAULT_KEY_VARIABLE

    if variable == DEFAULT_KEY_VARIABLE:
        key = settings.azure_api_key.get_secret_value() if settings.azure_api_key is not None else None
    else:
        key = os.environ.get(variable) or _dotenv_value(variable)
    if key:
        return {"api_key": key}
    if variable != DEFAULT_KEY_VARIABLE:
        raise ConfigError(f"CPO_DEPLOYMENTS_FILE: deployment {name}: api_key_env names {variable}, which is not set")
    return {"azure_ad_token_provider": _entra_token_provider()}


def _dotenv_value(variable: str) -> str | None:
    from dotenv import dotenv_values

    value = dotenv_values(".env").get(variable) if os.path.isfile(".env") else None
    return value.strip() or None if value else None


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
    pacer = pacer_for(settings)
    sync_client, async_client = http_clients(base_url, pacer)
    fields: dict[str, Any] = {
        "base_url": base_url,
        "api_key": key,
        "model": settings.model_name,
        "http_client": sync_client,
        "http_async_client": async_client,
        "quota_pacer": pacer,
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
