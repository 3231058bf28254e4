"""Every model call is in the ledger before it is sent, so a kill -9 leaves the calls in flight as possibly billed.

Before: a call reached the ledger only when it ended; after a kill -9 mid-generation the provider had billed
12 calls and the ledger held 10.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from azure_server import Reply, hang, ok
from conftest import azure_settings
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from test_runner import ledger_rows, start_run, wait_for_requests

from cpo import CostTracker
from cpo.accounting.ledger import MIGRATIONS, STARTED, Ledger
from cpo.llm.factory import build_chat_model

PARAMS = {"model": "gpt-4o-mini", "max_tokens": 100}


def committed(path: Path) -> list[dict[str, Any]]:
    """The calls another connection sees: what is on disk, not what is queued."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM calls ORDER BY id")]


def locked(path: Path) -> sqlite3.Connection:
    """Another process's write transaction holding the ledger."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN EXCLUSIVE")
    return conn


def answer(input_tokens: int = 120, output_tokens: int = 40) -> LLMResult:
    usage = {"input_tokens": input_tokens, "output_tokens": output_tokens, "total_tokens": input_tokens + output_tokens}
    message = AIMessage("hi", usage_metadata=usage, response_metadata={"model_name": "gpt-4o-mini"})  # type: ignore[arg-type]
    return LLMResult(generations=[[ChatGeneration(message=message)]])


def start(tracker: CostTracker) -> uuid.UUID:
    """One chat-model call started (its start callback returned: the point where the request is sent)."""
    call = uuid.uuid4()
    tracker.on_chat_model_start({}, [[HumanMessage("hello")]], run_id=call, invocation_params=PARAMS)
    return call


def journal(path: Path) -> list[tuple[str, str | None]]:
    """(status, call id) of every start in the journals beside the ledger, read from the files on disk."""
    from cpo.accounting.start_journal import starts_on_disk

    return [(r.status, r.call_id) for r in starts_on_disk(path)]


def test_a_call_is_on_disk_as_started_before_its_start_callback_returns(tmp_path: Path) -> None:
    """The start is in the journal file (read back from disk) when the callback returns, i.e. before the request
    is sent; its end is one ledger row, and then the start is gone from the journal."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    tracker = CostTracker(ledger=ledger, default_model="gpt-4o-mini")
    call = start(tracker)
    try:
        assert journal(path) == [(STARTED, str(call))]
        assert committed(path) == []  # nothing on the call's path waits for SQLite

        tracker.on_llm_end(answer(), run_id=call)
        assert ledger.flush()
        (row,) = committed(path)
        assert (row["status"], row["call_id"], row["input_tokens"], row["output_tokens"]) == ("ok", str(call), 120, 40)
        assert Decimal(row["cost_usd"]) > 0
        assert journal(path) == []
    finally:
        ledger.close()


@pytest.mark.live_server
def test_a_call_is_on_disk_when_the_server_receives_it_and_a_locked_ledger_delays_nothing(
    live_server: Any, tmp_path: Path
) -> None:
    """Another process holds the ledger's write lock: the call goes out at once, its start already on disk
    when the server receives it; its end is committed once the lock is released."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    tracker = CostTracker(ledger=ledger)
    on_disk_at_arrival: list[list[tuple[str, str | None]]] = []

    def responder(_: dict[str, Any]) -> Reply:
        on_disk_at_arrival.append(journal(path))
        return ok("hello")

    live_server.responder = responder
    model = build_chat_model(azure_settings(live_server.endpoint))
    holder = locked(path)
    try:
        started = time.perf_counter()
        model.invoke("hi", config={"callbacks": [tracker]})
        assert time.perf_counter() - started < 2
        assert len(on_disk_at_arrival) == 1 and [s for s, _ in on_disk_at_arrival[0]] == [STARTED]
        assert committed(path) == []  # the end waits for the lock, off the call's path
    finally:
        holder.close()
    try:
        assert ledger.flush(timeout=10)
        assert [r["status"] for r in committed(path)] == ["ok"]
        assert journal(path) == [] and ledger.errors == 0
    finally:
        ledger.close()


def test_a_live_process_journal_is_not_filed_by_another_reader(tmp_path: Path) -> None:
    """Only the journal of a process that died is filed: a reader opening the ledger meanwhile leaves a live
    writer's calls in flight alone (the journal's flock tells them apart)."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    tracker = CostTracker(ledger=ledger, default_model="gpt-4o-mini")
    call = start(tracker)
    try:
        assert Ledger(path, readonly=True).filed_starts == 0
        assert Ledger(path).filed_starts == 0
        assert journal(path) == [(STARTED, str(call))] and committed(path) == []
    finally:
        ledger.close()
    # Closed with the call never ended: its start is filed as possibly billed, and the journal is gone.
    assert [(r["status"], r["call_id"]) for r in committed(path)] == [(STARTED, str(call))]
    assert journal(path) == []


def test_a_ledger_of_the_previous_schema_opens_and_records_starts(tmp_path: Path) -> None:
    """Schema 4 -> 5 adds calls.call_id; an old row keeps its cost and a new call is started and ended in place."""
    path = tmp_path / "ledger.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        for step in range(1, 5):
            conn.executescript(MIGRATIONS[step])
        conn.executescript(
            "PRAGMA user_version = 4; INSERT INTO calls (ts, session_id, run_id, model, input_tokens,"
            " cached_input_tokens, output_tokens, reasoning_tokens, cost_usd, latency_s, status) VALUES"
            " ('2026-11-20T10:00:00.000+00:00', 's-old', 'r1', 'gpt-4o-mini', 100, 0, 50, 0, '0.000045', 0.5, 'ok');"
        )
    assert Ledger(path, readonly=True).sessions()[0]["cost_usd"] == Decimal("0.000045")
    ledger = Ledger(path)
    assert ledger.version == 5
    tracker = CostTracker(ledger=ledger, default_model="gpt-4o-mini", session_id="s-new")
    call = start(tracker)
    tracker.on_llm_end(answer(), run_id=call)
    ledger.close()
    old, new = committed(path)
    assert (old["call_id"], old["cost_usd"]) == (None, "0.000045")
    assert (new["call_id"], new["status"]) == (str(call), "ok")


@pytest.mark.waits
@pytest.mark.live_server
def test_kill_9_leaves_every_call_in_flight_as_possibly_billed(live_server: Any) -> None:
    """Before: the calls in flight at a kill -9 were in no row; the provider had billed them all the same."""
    live_server.script("gpt-4o-mini", *[hang(60) for _ in range(40)])
    proc = start_run(live_server.endpoint, "--concurrency", "4")
    wait_for_requests(live_server, 4)
    proc.kill()
    proc.communicate(timeout=10)
    received = len(live_server.requests)
    assert received >= 4

    assert ledger_rows() == []  # the killed process had no call's end to write
    reader = Ledger("runs/ledger.sqlite", readonly=True)  # opening the ledger files the dead process's journal
    assert reader.filed_starts >= received
    rows = ledger_rows()
    started = [r for r in rows if r["status"] == STARTED]
    assert len(started) >= received  # every request the server received has its row (none of them ended)
    assert all(r["cost_usd"] is None for r in started)
    (session,) = reader.sessions()
    assert session["unknown_cost_calls"] >= received

    env = {**os.environ, "COLUMNS": "250"}
    cli = Path(sys.executable).parent / "cpo"
    shown = subprocess.run(
        [str(cli), "costs", "--ledger", "runs/ledger.sqlite"], env=env, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    assert f"+ {session['unknown_cost_calls']} unknown (possibly billed)" in shown.stdout


def test_without_a_start_journal_the_ledger_still_records_every_call(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The journal cannot be made (here its folder's name is taken by a file; a full disk is the same):
    one warning, starts go through the writer like any row, and nothing on the call's path fails."""
    path = tmp_path / "ledger.sqlite"
    (tmp_path / ".ledger.sqlite.starts").write_text("not a folder")
    with caplog.at_level("WARNING"):
        ledger = Ledger(path)
    assert "no start journal" in caplog.text
    tracker = CostTracker(ledger=ledger, default_model="gpt-4o-mini")
    try:
        calls = [start(tracker) for _ in range(2)]
        tracker.on_llm_end(answer(), run_id=calls[0])
        assert ledger.flush()
        assert sorted((r["call_id"], r["status"]) for r in committed(path)) == sorted(
            [(str(calls[0]), "ok"), (str(calls[1]), STARTED)]
        )
        assert tracker.accounting_errors == 0 and ledger.errors == 0
    finally:
        ledger.close()
