"""The chat model built by `build_chat_model`: enforced timeout, transient-only retries."""

from __future__ import annotations

import itertools
import sys
import time
import types
from typing import Any

import openai
import pytest
from azure_server import hang
from conftest import azure_settings, http_requests
from langchain_openai import AzureChatOpenAI, ChatOpenAI

from cpo import ConfigError, Settings, build_chat_model, model_source
from cpo.llm.offline import OfflineChatModel
from cpo.net.retries import RetryPolicy


def test_azure_model_has_explicit_timeout_and_cpo_owned_retries() -> None:
    model = build_chat_model(azure_settings(timeout=7.5, max_retries=2, retry_max_wait=4))
    assert isinstance(model, AzureChatOpenAI)
    assert model.request_timeout == 7.5
    assert model.root_client.timeout == 7.5
    assert model.retry_policy == RetryPolicy(max_retries=2, max_wait_s=4.0)
    assert model.max_retries == 0 and model.root_client.max_retries == 0  # the SDK's own retries are off
    assert model_source(model) == "azure"


def test_defaults_are_ten_seconds_three_retries_and_thirty_second_waits() -> None:
    model = build_chat_model(azure_settings())
    assert model.request_timeout == 10.0
    assert model.retry_policy == RetryPolicy(max_retries=3, max_wait_s=30.0)


def test_openai_compatible_server_gets_stream_usage_and_model_name() -> None:
    settings = Settings(openai_base_url="http://127.0.0.1:11434/v1", model_name="llama3.1:8b")
    model = build_chat_model(settings)
    assert isinstance(model, ChatOpenAI) and not isinstance(model, AzureChatOpenAI)
    assert model.stream_usage is True
    assert model.model_name == "llama3.1:8b"
    assert model.request_timeout == 10.0
    assert model_source(model) == "openai-compatible"


def test_no_endpoint_means_offline_model() -> None:
    model = build_chat_model(Settings())
    assert isinstance(model, OfflineChatModel)
    assert model_source(model) == "offline"


def test_timeout_none_is_refused() -> None:
    with pytest.raises(ConfigError, match="CPO_LLM_TIMEOUT"):
        build_chat_model(azure_settings(), timeout=None)


@pytest.mark.live_server
@pytest.mark.waits
def test_timeout_is_enforced_per_attempt(live_server: Any) -> None:
    """A hung endpoint ends after (max_retries + 1) attempts of `timeout` each, plus the SDK's backoff."""
    timeout, retries = 0.4, 2
    live_server.script("gpt-4o-mini", *[hang(20) for _ in range(retries + 1)])
    model = build_chat_model(azure_settings(live_server.endpoint, timeout=timeout, max_retries=retries))
    started = time.perf_counter()
    with pytest.raises(openai.APITimeoutError):
        model.invoke("hello")
    elapsed = time.perf_counter() - started
    assert len(live_server.requests) == retries + 1
    # backoff between attempts: 0.5 s * 2**n with up to 25% jitter, i.e. at most 0.5 + 1.0 here
    assert timeout * (retries + 1) <= elapsed <= timeout * (retries + 1) + 1.5 + 1.0
    arrivals = [r["_received_at"] for r in live_server.requests]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(gap >= timeout for gap in gaps), gaps


@pytest.mark.live_server
@pytest.mark.waits
def test_hung_endpoint_with_default_settings_is_bounded(live_server: Any) -> None:
    """The defaults (10 s, 3 retries) bound a hang; checked here at 1/20 scale to keep the suite fast."""
    live_server.script("gpt-4o-mini", *[hang(20) for _ in range(4)])
    model = build_chat_model(azure_settings(live_server.endpoint), timeout=0.5)
    started = time.perf_counter()
    with pytest.raises(openai.APITimeoutError):
        model.invoke("hello")
    assert len(live_server.requests) == 4
    assert time.perf_counter() - started < 0.5 * 4 + 0.5 + 1 + 2 + 1.0


@pytest.mark.vcr
def test_rate_limit_is_retried_then_succeeds(azure_server: Any, vcr: Any) -> None:
    model = build_chat_model(azure_settings(deployment="rate-limited"))
    reply = model.invoke("Write one word.")
    assert reply.usage_metadata["input_tokens"] > 0
    assert http_requests(azure_server, vcr) == 2


@pytest.mark.vcr
def test_server_errors_are_retried_then_succeed(azure_server: Any, vcr: Any) -> None:
    model = build_chat_model(azure_settings(deployment="flaky-503"))
    reply = model.invoke("Write one word.")
    assert reply.response_metadata["model_name"] == "gpt-4o-mini-2024-07-18"
    assert http_requests(azure_server, vcr) == 3


@pytest.mark.vcr
def test_retries_stop_at_max_retries(azure_server: Any, vcr: Any) -> None:
    model = build_chat_model(azure_settings(deployment="always-503", max_retries=2))
    with pytest.raises(openai.InternalServerError):
        model.invoke("Write one word.")
    assert http_requests(azure_server, vcr) == 3


@pytest.mark.vcr
@pytest.mark.parametrize(
    ("deployment", "error"),
    [
        ("bad-request", openai.BadRequestError),
        ("prompt-filtered", openai.BadRequestError),
        ("unauthorized", openai.AuthenticationError),
        ("not-found", openai.NotFoundError),
    ],
)
def test_client_errors_fail_after_one_request(
    deployment: str, error: type[Exception], azure_server: Any, vcr: Any
) -> None:
    model = build_chat_model(azure_settings(deployment=deployment))
    started = time.perf_counter()
    with pytest.raises(error):
        model.invoke("Write one word.")
    assert http_requests(azure_server, vcr) == 1
    assert time.perf_counter() - started < 2.0


@pytest.mark.vcr
def test_content_filter_400_names_the_filter(azure_server: Any, vcr: Any) -> None:
    model = build_chat_model(azure_settings(deployment="prompt-filtered"))
    with pytest.raises(openai.BadRequestError) as caught:
        model.invoke("Write one word.")
    assert caught.value.code == "content_filter"


def test_endpoint_without_key_needs_azure_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "azure.identity", None)  # as if the `azure` extra were not installed
    settings = Settings(azure_endpoint="https://r.openai.azure.com", azure_deployment="mini")
    with pytest.raises(ConfigError, match=r"AZURE_OPENAI_API_KEY is not set.*pip install 'cpo\[azure\]'"):
        build_chat_model(settings)


def test_endpoint_without_key_uses_an_entra_token_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("azure.identity")
    fake.DefaultAzureCredential = lambda: "credential"  # type: ignore[attr-defined]
    fake.get_bearer_token_provider = lambda cred, scope: lambda: f"token for {scope} via {cred}"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "azure.identity", fake)
    model = build_chat_model(Settings(azure_endpoint="https://r.openai.azure.com", azure_deployment="mini"))
    assert model.azure_ad_token_provider() == "token for https://cognitiveservices.azure.com/.default via credential"
    assert model.openai_api_key is None


@pytest.mark.live_server
def test_one_model_serves_two_event_loops(live_server: Any) -> None:
    """A script may call asyncio.run twice; the second must not reuse the first loop's connections."""
    import asyncio

    model = build_chat_model(azure_settings(live_server.endpoint))
    assert asyncio.run(model.ainvoke("one")).content == "Echo: one"
    assert asyncio.run(model.ainvoke("two")).content == "Echo: two"
    assert model.invoke("three").content == "Echo: three"
