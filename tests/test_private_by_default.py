"""Private by default: what `cpo run` writes is its user's alone, the id key must be too, endpoint notes stay
beside the run, and a call that never left costs a known nothing.

Each test goes through the real `cpo run` (and `--resume`), where a user meets the behaviour.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure_server import email_drafter
from test_runner import azure_env

from cpo.cli import main
from cpo.core.privacy import IdHasher

EMAILS = 20  # the sample campaign: five segments, three tones and a control each
POSIX_ONLY = pytest.mark.skipif(os.name == "nt", reason="Windows does not keep POSIX modes")


@pytest.fixture(autouse=True)
def _restore_umask() -> Iterator[None]:
    """`cpo run` makes the process's files private (umask 077); other tests in this process keep theirs."""
    before = os.umask(0o022)
    os.umask(before)
    yield
    os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def only_run_dir(runs: Path) -> Path:
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return run_dir


def use_endpoint(monkeypatch: pytest.MonkeyPatch, endpoint: str, **extra: str) -> None:
    for name, value in azure_env(endpoint, **extra).items():
        monkeypatch.setenv(name, value)


def free_port() -> int:
    """A loopback port nobody listens on: connecting to it is refused before a byte is sent."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@POSIX_ONLY
def test_a_run_and_the_runs_directory_cpo_creates_are_private_to_their_user(
    capsys: pytest.CaptureFixture[str],
) -> None:
    os.umask(0o022)  # a usual shell: before, everything below came out 0755 / 0644
    assert main(["run", "--out", "runs", "--render"]) == 0, capsys.readouterr().err
    runs = Path("runs")
    run_dir = only_run_dir(runs)
    assert mode(runs) == 0o700 and mode(run_dir) == 0o700
    written = list(runs.rglob("*"))
    assert {"customers.duckdb", "send_list.csv", "assignments.csv", "log.jsonl", "ledger.sqlite"} <= {
        p.name for p in written
    }
    assert any(p.suffix == ".eml" for p in written)  # rendered/, one file per customer
    loose = {str(p): oct(mode(p)) for p in written if mode(p) != (0o700 if p.is_dir() else 0o600)}
    assert loose == {}


@POSIX_ONLY
def test_resuming_a_run_an_older_cpo_left_open_closes_its_directory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--out", "runs"]) == 0
    run_dir = only_run_dir(Path("runs"))
    run_dir.chmod(0o755)  # as runs were made before
    capsys.readouterr()
    assert main(["run", "--resume", str(run_dir)]) == 0, capsys.readouterr().err
    assert mode(run_dir) == 0o700


@POSIX_ONLY
def test_an_id_key_others_can_read_is_refused_in_one_line_before_any_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    key = Path(os.environ["CPO_ID_KEY_FILE"])
    IdHasher.for_installation(key)
    assert mode(key) == 0o600  # a fresh key is private
    key.chmod(0o644)
    code = main(["run", "--out", "runs"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"error: id key file {key} is readable by others (mode 0644): chmod 600 {key}\n"
    assert not Path("runs").exists()  # no run directory, no ledger, no log

    key.chmod(0o600)  # the fix the message gives
    assert main(["run", "--out", "runs"]) == 0


@pytest.mark.live_server
@pytest.mark.waits
def test_a_resume_from_another_directory_keeps_endpoint_notes_in_the_runs_directory(
    live_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    live_server.responder = email_drafter
    use_endpoint(monkeypatch, live_server.endpoint)
    runs = tmp_path / "runs"
    code = main(["run", "--out", str(runs), "--max-usd", "0.002", "--concurrency", "2"])
    err = capsys.readouterr().err
    assert code == 3, err  # stopped by the budget: a run to resume
    notes = runs / "endpoints.json"
    assert json.loads(notes.read_text(encoding="utf-8"))["endpoints"]  # the method that worked, remembered

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code = main(["run", "--resume", str(only_run_dir(runs)), "--max-usd", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"structured output: json_schema (remembered in {notes})" in err
    assert list(elsewhere.iterdir()) == []  # before: ./runs/endpoints.json here
    assert sorted(p.name for p in runs.iterdir() if p.is_file()) == [
        "content-index.sqlite",
        "endpoints.json",
        "ledger.sqlite",
    ]


@pytest.mark.live_server
def test_a_refused_connection_is_a_failed_call_that_cost_nothing_not_an_unknown_cost(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    use_endpoint(monkeypatch, f"http://127.0.0.1:{port}", CPO_LLM_MAX_RETRIES="0")
    code = main(["run", "--out", "runs"])
    out, err = capsys.readouterr()
    assert code == 1
    assert f"cannot reach http://127.0.0.1:{port}:" in err
    session = json.loads((only_run_dir(Path("runs")) / "costs.json").read_text(encoding="utf-8"))["session"]
    assert (session["calls"], session["failed_calls"], session["unknown_cost_calls"]) == (EMAILS, EMAILS, 0)
    assert session["cost_usd"] == "0"
    with sqlite3.connect("runs/ledger.sqlite") as conn:
        rows = conn.execute("SELECT status, cost_usd FROM calls").fetchall()
    assert len(rows) == EMAILS
    assert all(status.startswith("error:") and cost == "0" for status, cost in rows)  # a known 0, not NULL
    assert f"session: {EMAILS} calls ({EMAILS} failed), 0 input + 0 output = 0 tokens, $0\n" in out
    assert "unknown cost" not in out + err
