"""`cpo run` under interruption and faults: Ctrl-C, kill -9, bad credentials, a dead host, fallbacks.

These run the real command in a subprocess against the live loopback server, because signals and
timing cannot be recorded in a cassette.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from azure_server import PROMPT_FILTERED_BODY, email_drafter, error, hang, ok, server_error
from conftest import TEST_KEY

from cpo.cli import main

pytestmark = pytest.mark.live_server
EMAILS = 20  # the sample campaign: five segments, three tones and a control each


def azure_env(endpoint: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_OPENAI_", "OPENAI_", "CPO_"))}
    env.update(
        {
            "AZURE_OPENAI_ENDPOINT": endpoint,
            "AZURE_OPENAI_DEPLOYMENT_NAME": "gpt-4o-mini",
            "AZURE_OPENAI_API_KEY": TEST_KEY,
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
    )
    return env


def start_run(endpoint: str, *args: str, **env: str) -> subprocess.Popen[str]:
    cli = Path(sys.executable).parent / "cpo"
    return subprocess.Popen(
        [str(cli), "run", *args],
        env=azure_env(endpoint, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_requests(server: Any, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while len(server.requests) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(server.requests)} requests arrived")
        time.sleep(0.02)


def the_run_dir() -> Path:
    (run_dir,) = [p for p in Path("runs").iterdir() if p.is_dir() and not p.name.startswith(".")]
    return run_dir


def ledger_rows() -> list[dict[str, Any]]:
    with sqlite3.connect("runs/ledger.sqlite") as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM calls")]


def assert_paid_emails_match_paid_calls() -> list[dict[str, Any]]:
    """Every email in variants.json has its paid calls in the ledger, and every paid call has its email."""
    variants = json.loads((the_run_dir() / "variants.json").read_text())
    paid_emails = {r["email_id"] for r in ledger_rows() if r["status"] == "ok"}
    assert {v["run_id"] for v in variants} == paid_emails
    costs = json.loads((the_run_dir() / "costs.json").read_text())
    assert costs["emails"]["produced"] == len(variants)
    return list(variants)


@pytest.mark.waits
def test_ctrl_c_against_a_hung_endpoint_returns_within_two_seconds(live_server: Any) -> None:
    """Before: SIGINT was ignored until every call used its timeouts and retries (36-37 s), then exit 130, silent."""
    live_server.script("gpt-4o-mini", *[hang(60) for _ in range(40)])
    proc = start_run(live_server.endpoint, "--concurrency", "4")
    wait_for_requests(live_server, 4)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert time.monotonic() - sent < 2.0
    assert proc.returncode == 130
    assert f"interrupted: 0 of {EMAILS} emails, $0 + 4 call(s) of unknown cost spent" in err
    assert json.loads((the_run_dir() / "variants.json").read_text()) == []
    rows = ledger_rows()
    assert len(rows) == 4 and all(r["status"].startswith("unknown-cost") for r in rows)


@pytest.mark.waits
def test_ctrl_c_keeps_every_email_that_was_paid_for(live_server: Any) -> None:
    """Before: Ctrl-C after 12 s left 8 emails in variants.json while the ledger counted 12 paid calls."""
    live_server.responder = email_drafter
    live_server.latency = 0.3
    proc = start_run(live_server.endpoint, "--concurrency", "4")
    wait_for_requests(live_server, 10)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert time.monotonic() - sent < 2.0
    assert proc.returncode == 130
    variants = assert_paid_emails_match_paid_calls()
    assert 0 < len(variants) < EMAILS
    assert f"interrupted: {len(variants)} of {EMAILS} emails" in err


@pytest.mark.waits
def test_a_second_ctrl_c_exits_at_once_and_leaves_valid_files(live_server: Any) -> None:
    live_server.script("gpt-4o-mini", ok(tool_args=None), *[hang(60) for _ in range(40)])
    live_server.responder = None
    proc = start_run(live_server.endpoint, "--concurrency", "2")
    wait_for_requests(live_server, 3)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert time.monotonic() - sent < 0.5
    assert proc.returncode == 130 and "interrupted again" in err
    json.loads((the_run_dir() / "variants.json").read_text())
    json.loads((the_run_dir() / "costs.json").read_text())


@pytest.mark.waits
def test_kill_9_never_leaves_a_produced_email_without_its_cost(live_server: Any) -> None:
    live_server.responder = email_drafter
    live_server.latency = 0.1
    proc = start_run(live_server.endpoint, "--concurrency", "4")
    wait_for_requests(live_server, 9)
    proc.kill()
    proc.communicate(timeout=10)
    kept = [json.loads(p.read_text()) for p in (the_run_dir() / "emails").glob("*.json")]
    paid_emails = {r["email_id"] for r in ledger_rows() if r["status"] == "ok"}
    assert kept and {v["run_id"] for v in kept} <= paid_emails


def test_an_authentication_failure_ends_the_run_after_the_first(
    live_server: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: every email was tried and the same 401 printed 20 times."""
    for name, value in azure_env(live_server.endpoint, AZURE_OPENAI_API_KEY="wrong-key").items():
        monkeypatch.setenv(name, value)
    code = main(["run", "--concurrency", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(live_server.requests) == 1
    assert err.count("refused the credentials") == 1 and "401" in err


def test_a_connection_error_names_the_host_it_tried(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in azure_env("http://127.0.0.1:9", CPO_LLM_MAX_RETRIES="0").items():
        monkeypatch.setenv(name, value)
    code = main(["run", "--concurrency", "4"])
    err = capsys.readouterr().err
    assert code == 1
    assert "cannot reach http://127.0.0.1:9:" in err


@pytest.mark.parametrize(
    "reply",
    [error(401), error(403), error(404), error(400, PROMPT_FILTERED_BODY)],
    ids=["401", "403", "404", "400-content-filter"],
)
def test_the_offline_fallback_never_covers_a_non_transient_fault(
    live_server: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], reply: Any
) -> None:
    """Before: these silently became template emails."""
    live_server.script("gpt-4o-mini", *[reply] * EMAILS)
    for name, value in azure_env(live_server.endpoint, CPO_OFFLINE_FALLBACK="1").items():
        monkeypatch.setenv(name, value)
    code = main(["run", "--concurrency", "1"])
    err = capsys.readouterr().err
    assert code != 0
    assert "offline drafting model for such emails" not in err
    assert all(not v["fallback_used"] for v in json.loads((the_run_dir() / "variants.json").read_text()))


def test_the_offline_fallback_engages_after_transient_failures_and_says_so_once(
    live_server: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    live_server.script("gpt-4o-mini", *[server_error(503, 1)] * (EMAILS * 2))
    for name, value in azure_env(live_server.endpoint, CPO_OFFLINE_FALLBACK="1", CPO_LLM_MAX_RETRIES="1").items():
        monkeypatch.setenv(name, value)
    code = main(["run", "--concurrency", "4"])
    out, err = capsys.readouterr()
    assert code == 0
    assert err.count("using the offline drafting model for such emails") == 1
    assert f"offline fallback: {EMAILS} of {EMAILS} emails were drafted offline" in out
    assert len(live_server.requests) == EMAILS * 2  # every email really tried the endpoint, and retried
