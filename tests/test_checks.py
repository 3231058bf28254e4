"""`cpo check`: the structured-output method that works, whether the endpoint serves requests in parallel,
and the warning `cpo run` gives when --concurrency is more than it serves. Against the loopback test server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from azure_server import JSON_SCHEMA_UNSUPPORTED_BODY, email_drafter, error, ok

from cpo.cli import main
from cpo.core.settings import Settings
from cpo.llm.endpoints import EndpointNotes, endpoint_key
from cpo.llm.factory import build_chat_model
from cpo.llm.parallelism import Parallelism, concurrency_warning

MODEL = "qwen2.5"


def point_at(monkeypatch: pytest.MonkeyPatch, server: Any) -> None:
    for name in ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_DEPLOYMENT_NAME", "AZURE_OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", f"{server.endpoint}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("CPO_MODEL_NAME", MODEL)


@pytest.mark.live_server
@pytest.mark.parametrize("serial", [True, False])
@pytest.mark.waits
def test_check_names_the_method_and_measures_parallelism(
    serial: bool, live_server: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    live_server.latency = 0.4
    live_server.serial = serial
    # The connection check, then the method probe's json_schema call is refused.
    live_server.script(MODEL, ok(), error(500, JSON_SCHEMA_UNSUPPORTED_BODY))
    point_at(monkeypatch, live_server)
    code = main(["check"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "✅ structured output: function_calling (json_schema refused); remembered for this endpoint" in out
    verdict = "one at a time" if serial else "in parallel"
    assert f"serves requests {verdict}" in out
    (note,) = json.loads(Path("runs/endpoints.json").read_text())["endpoints"].values()
    assert note["method"] == "function_calling" and note["parallel"] is (not serial)


def test_parallelism_verdict_is_the_ratio_of_two_at_once_to_one_alone() -> None:
    assert Parallelism(single_s=1.0, pair_s=1.1).parallel
    assert not Parallelism(single_s=1.0, pair_s=1.9).parallel
    assert "1.9x one alone" in Parallelism(single_s=1.0, pair_s=1.9).describe()


@pytest.mark.live_server
def test_run_warns_when_concurrency_exceeds_what_the_endpoint_serves(
    live_server: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    live_server.responder = email_drafter
    point_at(monkeypatch, live_server)
    model = build_chat_model(Settings())
    notes = EndpointNotes(Path("runs/endpoints.json"))
    notes.note(endpoint_key(model), parallel=False, method="function_calling")
    assert concurrency_warning(notes, model, 1) is None

    code = main(["run", "--concurrency", "4"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "serves one request at a time (measured by `cpo check`)" in err and "use --concurrency 1" in err
    assert "structured output: function_calling (remembered in runs/endpoints.json)" in err
    assert "tools" in live_server.requests[0]  # started with the remembered method: no json_schema probe


def test_an_empty_price_file_setting_means_no_price_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPO_PRICE_FILE", "")
    assert Settings().price_file is None


@pytest.mark.live_server
@pytest.mark.waits
def test_a_low_quota_is_not_timed_as_a_server_answering_one_at_a_time(
    live_server: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """At CPO_RPM=40 the pacer spaces requests 1.7 s apart after a burst of two: timed through it, a parallel
    server read as "one at a time" and `cpo check` advised --concurrency 1. Now each probe is timed once the
    quota has room for it; a quota that never lets two go at once says so instead of guessing."""
    live_server.latency = 0.3
    point_at(monkeypatch, live_server)
    monkeypatch.setenv("CPO_RPM", "40")
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "serves requests in parallel" in out and "--concurrency 1" not in out
    monkeypatch.setenv("CPO_RPM", "20")  # a burst of one: two never go at once
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "parallelism not measured: the quota (CPO_RPM/CPO_TPM) never lets 2 requests go at once" in out
    assert "one at a time" not in out
