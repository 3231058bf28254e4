"""The earlier public API keeps its names and dict shapes, on the LangChain path, without the old bugs."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from typing import Any

import openai
import pytest
from azure_server import ok
from conftest import RECORD_ENDPOINT, TEST_KEY, azure_settings, http_requests

from cpo.integrations import azure_openai
from cpo.integrations.azure_openai import AzureOpenAIClient, generate_completion, get_openai_client
from cpo.integrations.azure_openai import test_connection as legacy_test_connection

KEYS = {"text", "finish_reason", "input_tokens", "output_tokens", "tokens_used", "cost_usd", "duration_ms", "model"}
MINI_IN, MINI_OUT = Decimal("0.15"), Decimal("0.60")


def mini_cost(input_tokens: int, output_tokens: int) -> float:
    return float((input_tokens * MINI_IN + output_tokens * MINI_OUT) / Decimal(1_000_000))


@pytest.fixture
def azure_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", RECORD_ENDPOINT)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", TEST_KEY)
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT_NAME", "gpt-4o-mini")
    monkeypatch.setattr(azure_openai, "_default_client", None)


@pytest.mark.vcr
def test_generate_completion_returns_the_documented_dict(azure_server: Any, cassette_billed: Any) -> None:
    azure_server.script("gpt-4o-mini", ok("Upgrade today and save."))
    client = AzureOpenAIClient(settings=azure_settings())
    result = client.generate_completion("Write a subject line.")
    billed = cassette_billed()[0]
    assert set(result) == KEYS
    assert result["text"] == "Upgrade today and save."
    assert result["finish_reason"] == "stop"
    assert result["model"] == "gpt-4o-mini-2024-07-18"
    assert (result["input_tokens"], result["output_tokens"]) == (billed["prompt_tokens"], billed["completion_tokens"])
    assert result["tokens_used"] == result["input_tokens"] + result["output_tokens"]
    assert result["cost_usd"] == pytest.approx(mini_cost(result["input_tokens"], result["output_tokens"]), abs=1e-12)
    assert result["cost_usd"] > 0
    assert result["duration_ms"] > 0


@pytest.mark.vcr
def test_real_finish_reasons_are_reported(azure_server: Any) -> None:
    client = AzureOpenAIClient(settings=azure_settings(deployment="truncated"))
    assert client.generate_completion("Write a long paragraph.", max_tokens=16)["finish_reason"] == "length"
    filtered = AzureOpenAIClient(settings=azure_settings(deployment="content-filtered"))
    result = filtered.generate_completion("Write a paragraph.")
    assert result["finish_reason"] == "content_filter"
    assert result["input_tokens"] > 0  # the filtered answer was billed, and is counted


@pytest.mark.vcr
def test_two_server_errors_then_success(azure_server: Any, vcr: Any) -> None:
    client = AzureOpenAIClient(settings=azure_settings(deployment="flaky-503"))
    result = client.generate_completion("Write a subject line.")
    assert result["finish_reason"] == "stop"
    assert http_requests(azure_server, vcr) == 3
    assert client.get_usage_summary()["total_requests"] == 3  # two failed attempts (no tokens) and one answer
    assert client.get_usage_summary()["input_tokens"] == result["input_tokens"]


@pytest.mark.vcr
def test_unauthorized_is_not_retried(azure_server: Any, vcr: Any) -> None:
    client = AzureOpenAIClient(settings=azure_settings(deployment="unauthorized"))
    with pytest.raises(openai.AuthenticationError):
        client.generate_completion("Write a subject line.")
    assert http_requests(azure_server, vcr) == 1


def test_small_max_tokens_is_a_value_error_before_any_request() -> None:
    client = AzureOpenAIClient(settings=azure_settings("http://127.0.0.1:9"))  # unreachable: must not be called
    with pytest.raises(ValueError, match="max_tokens must be an integer >= 16"):
        client.generate_completion("Hi", max_tokens=15)
    assert client.get_usage_summary()["total_requests"] == 0


@pytest.mark.vcr
def test_usage_summary_after_several_calls(azure_server: Any, cassette_billed: Any) -> None:
    client = AzureOpenAIClient(settings=azure_settings())
    results = [client.generate_completion(f"Write subject line number {i}.") for i in range(3)]
    summary = client.get_usage_summary()
    billed = cassette_billed()
    assert summary["total_requests"] == 3
    assert summary["input_tokens"] == sum(b["prompt_tokens"] for b in billed)
    assert summary["output_tokens"] == sum(b["completion_tokens"] for b in billed)
    assert summary["total_tokens"] == summary["input_tokens"] + summary["output_tokens"]
    assert summary["total_cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in results), abs=1e-12)
    assert summary["total_cost_usd"] > 0  # the old client rounded small sessions to 0.0
    assert summary["avg_tokens_per_request"] == summary["total_tokens"] / 3


def test_calculate_cost_uses_the_price_table() -> None:
    client = AzureOpenAIClient(settings=azure_settings())
    assert client.calculate_cost(1000, 100, "gpt-4o-mini-2024-07-18") == pytest.approx(mini_cost(1000, 100))
    cached = client.calculate_cost(1000, 100, "gpt-4o-mini", cached_input_tokens=1000)
    assert cached == pytest.approx(float((1000 * Decimal("0.075") + 100 * MINI_OUT) / Decimal(1_000_000)))
    assert client.calculate_cost(10, 10, "mystery-model") is None


@pytest.mark.vcr
def test_module_functions_share_the_client(azure_env: None, azure_server: Any) -> None:
    assert legacy_test_connection() == "Connection successful"
    result = generate_completion("Write a subject line.", max_tokens=50)
    assert set(result) == KEYS
    assert azure_openai._client().get_usage_summary()["total_requests"] == 2


def test_get_openai_client_is_configured_with_the_timeout(azure_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPO_LLM_TIMEOUT", "7")
    client = get_openai_client()
    assert isinstance(client, openai.AzureOpenAI)
    assert client.timeout == 7.0
    assert client.max_retries == 3


def test_get_openai_client_without_azure_is_a_config_error() -> None:
    from cpo import ConfigError

    with pytest.raises(ConfigError, match="AZURE_OPENAI_ENDPOINT"):
        get_openai_client()


def test_imported_test_connection_is_not_collected_as_a_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        "from cpo.integrations.azure_openai import test_connection, AzureOpenAIClient\n"
        "def test_real():\n    assert True\n"
    )
    result = pytester.runpytest("-q", "-p", "no:recording", "-p", "no:asyncio")
    result.assert_outcomes(passed=1)


def test_module_check_reports_offline_as_failure() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cpo.integrations.azure_openai"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stdout.startswith("❌ no LLM endpoint is configured")


def test_with_no_endpoint_the_legacy_api_raises_instead_of_pretending(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the offline notice came back as `text` with finish_reason "stop", and test_connection() said
    "Connection successful (offline ...)", so an old script checking for "Connection successful" passed."""
    from cpo import ConfigError

    monkeypatch.setattr(azure_openai, "_default_client", None)
    for call in (
        AzureOpenAIClient,
        lambda: generate_completion("Write a subject line."),
        legacy_test_connection,
    ):
        with pytest.raises(ConfigError, match="no LLM endpoint is configured: set AZURE_OPENAI_ENDPOINT"):
            call()
