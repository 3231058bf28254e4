"""Settings: environment names, aliases, and one-line errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from cpo import ConfigError, Settings


def test_reads_azure_variables_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com/")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "secret-value")
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT_NAME", "mini")
    settings = Settings()
    assert settings.provider == "azure"
    assert settings.azure_endpoint == "https://res.openai.azure.com"
    assert settings.azure_api_version == "2024-10-21"
    assert (settings.timeout, settings.max_retries) == (10.0, 3)
    assert "secret-value" not in repr(settings) and "secret-value" not in settings.describe()


def test_deployment_alias_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com")
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT", "mini")
    assert Settings().azure_deployment == "mini"


def test_reads_dotenv_in_working_directory(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "OPENAI_BASE_URL=http://127.0.0.1:8080/v1\nCPO_MODEL_NAME=qwen2.5\nCPO_LLM_TIMEOUT=4\n"
    )
    settings = Settings()
    assert settings.provider == "openai-compatible"
    assert settings.timeout == 4.0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com"}, "AZURE_OPENAI_DEPLOYMENT_NAME is not set"),
        ({"AZURE_OPENAI_API_KEY": "k"}, "AZURE_OPENAI_ENDPOINT is not set but AZURE_OPENAI_API_KEY is"),
        (
            {"AZURE_OPENAI_ENDPOINT": "r.openai.azure.com", "AZURE_OPENAI_DEPLOYMENT": "d"},
            "AZURE_OPENAI_ENDPOINT: not an http",
        ),
        ({"CPO_LLM_TIMEOUT": "soon"}, "CPO_LLM_TIMEOUT: Input should be a valid number"),
        ({"CPO_LLM_TIMEOUT": "0"}, "CPO_LLM_TIMEOUT: Input should be greater than 0"),
        ({"CPO_LLM_MAX_RETRIES": "-1"}, "CPO_LLM_MAX_RETRIES: Input should be greater than or equal to 0"),
        ({"OPENAI_BASE_URL": "http://127.0.0.1:8080/v1"}, "CPO_MODEL_NAME is not set"),
        ({"CPO_PROVIDER": "azure"}, "CPO_PROVIDER=azure but AZURE_OPENAI_ENDPOINT is not set"),
        ({"CPO_PROVIDER": "bedrock"}, "CPO_PROVIDER: Input should be"),
    ],
)
def test_bad_configuration_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        Settings()
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_api_key_is_never_echoed_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "sk-very-secret")
    with pytest.raises(ConfigError) as caught:
        Settings()
    assert "sk-very-secret" not in str(caught.value)


def test_ledger_location_follows_the_runs_dir_unless_cpo_ledger_names_one(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().ledger_file() == Path("runs/ledger.sqlite")
    assert Settings().ledger_file(Path("/data/campaign")) == Path("/data/campaign/ledger.sqlite")
    monkeypatch.setenv("CPO_RUNS_DIR", "/srv/cpo-runs")
    assert Settings().ledger_file() == Path("/srv/cpo-runs/ledger.sqlite")
    assert Settings().ledger_requested is None  # the Python API writes no ledger unless asked
    monkeypatch.setenv("CPO_LEDGER", "/tmp/x/ledger.sqlite")
    assert Settings().ledger_file(Path("/data/campaign")) == Path("/tmp/x/ledger.sqlite")
    assert Settings().ledger_requested == Path("/tmp/x/ledger.sqlite")
    monkeypatch.setenv("CPO_LEDGER", "off")
    assert Settings().ledger_file() is None and Settings().ledger_requested is None


def test_deadline_wait_cap_and_output_limit_have_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert (settings.retry_max_wait, settings.email_deadline, settings.max_output_tokens) == (30.0, 120.0, 1000)
    monkeypatch.setenv("CPO_EMAIL_DEADLINE", "0")
    with pytest.raises(ConfigError, match="CPO_EMAIL_DEADLINE: Input should be greater than 0"):
        Settings()


def test_blank_paths_are_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """`CPO_PRICE_FILE=` in a .env used to crash with IsADirectoryError."""
    for name in ("CPO_PRICE_FILE", "CPO_PROMPTS_DIR", "CPO_LEDGER"):
        monkeypatch.setenv(name, "")
    settings = Settings()
    assert settings.price_file is None and settings.prompts_dir is None and settings.ledger_path is None


def test_a_dotenv_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    (tmp_path / ".env").write_bytes(b"CPO_MODEL_NAME=caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        Settings()
    assert str(caught.value) == ".env: not UTF-8 text (byte 0xe9 at offset 18); save it as UTF-8"


def test_the_azure_services_are_read_from_dotenv_and_chosen_in_one_place(tmp_path: Path) -> None:
    """AZURE_SEARCH_* and AZURE_CONTENT_SAFETY_* are settings like the others: `.env` works for them."""
    from cpo.campaign.backends import content_index, uses_azure_content_safety, uses_azure_search
    from cpo.campaign.backends.azure_search import AzureSearchIndex

    assert not uses_azure_search() and not uses_azure_content_safety()
    (tmp_path / ".env").write_text(
        "AZURE_SEARCH_ENDPOINT=http://127.0.0.1:9/\nAZURE_SEARCH_INDEX=approved-content\nAZURE_SEARCH_KEY=sk\n"
        "AZURE_CONTENT_SAFETY_ENDPOINT=http://127.0.0.1:9\nAZURE_CONTENT_SAFETY_KEY=ck\n",
        encoding="utf-8",
    )
    settings = Settings()
    assert settings.azure_search_endpoint == "http://127.0.0.1:9" and settings.azure_search_index == "approved-content"
    assert settings.azure_search_key is not None and "sk" not in repr(settings)
    assert uses_azure_search() and uses_azure_content_safety()
    index = content_index(tmp_path)  # built from the settings, no request made
    assert isinstance(index, AzureSearchIndex) and (index.endpoint, index.index) == (
        "http://127.0.0.1:9",
        "approved-content",
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AZURE_SEARCH_ENDPOINT": "https://x.search.windows.net"}, "AZURE_SEARCH_INDEX is not set; it is required"),
        ({"AZURE_SEARCH_ENDPOINT": "x.search.windows.net"}, "AZURE_SEARCH_ENDPOINT: not an http(s) URL"),
        ({"AZURE_CONTENT_SAFETY_ENDPOINT": "ftp://x"}, "AZURE_CONTENT_SAFETY_ENDPOINT: not an http(s) URL"),
    ],
)
def test_azure_service_settings_are_checked_once_with_one_line(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        Settings()
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
