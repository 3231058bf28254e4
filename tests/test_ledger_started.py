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
import threading
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


def test_a_call_is_on_disk_as_started_before_its_start_callback_returns(tmp_path: Path) -> None:
    """The start row is committed (another connection reads it) when the callback returns, i.e. before the
    request is sent; the session counts it as a call of unknown cost; its end updates that same row."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    tracker = CostTracker(ledger=ledger, default_model="gpt-4o-mini")
    call = uuid.uuid4()
    try:
        tracker.on_chat_model_start({}, [[HumanMessage("hello")]], run_id=call, invocation_params=PARAMS)
        (row,) = committed(path)
        assert (row["status"], row["cost_usd"], row["call_id"]) == (STARTED, None, str(call))
        (session,) = Ledger(path, readonly=True).sessions()
        assert (session["calls"], session["unknown_cost_calls"], session["cost_usd"]) == (1, 1, Decimal(0))

        tracker.on_llm_end(answer(), run_id=call)
        assert ledger.flush()
        (row,) = committed(path)  # the same row, ended: not a second one
        assert (row["status"], row["call_id"], row["input_tokens"], row["output_tokens"]) == ("ok", str(call), 120, 40)
        assert Decimal(row["cost_usd"]) > 0
        (session,) = Ledger(path, readonly=True).sessions()
        assert (session["calls"], session["unknown_cost_calls"]) == (1, 0)
    finally:
        ledger.close()


@pytest.mark.live_server
def test_a_call_is_not_sent_until_its_start_row_is_committed(live_server: Any, tmp_path: Path) -> None:
    """The ledger's write lock is held by another connection: the request must not leave until it is released
    and the start row committed; when the server receives the request, the row is already on disk."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path, start_wait_s=10)
    tracker = CostTracker(ledger=ledger)
    on_disk_at_arrival: list[list[str]] = []

    def responder(_: dict[str, Any]) -> Reply:
        on_disk_at_arrival.append([r["status"] for r in committed(path)])
        return ok("hello")

    live_server.responder = responder
    model = build_chat_model(azure_settings(live_server.endpoint))
    holder = locked(path)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (model.invoke("hi", config={"callbacks": [tracker]}), done.set()))
    thread.start()
    try:
        time.sleep(0.5)  # far longer than a request to the loopback server takes
        assert live_server.requests == [], "the call was sent before its start was committed"
        assert not done.is_set()
    finally:
        holder.close()
    thread.join(10)
    try:
        assert done.is_set() and len(live_server.requests) == 1
        assert on_disk_at_arrival == [[STARTED]]
        assert ledger.flush()
        assert [r["status"] for r in committed(path)] == ["ok"]
        assert ledger.late_starts == 0 and ledger.errors == 0
    finally:
        ledger.close()


def test_a_start_that_cannot_be_committed_in_time_is_late_not_lost(tmp_path: Path) -> None:
    """Accounting never stops a call: a locked ledger delays the start by at most start_wait_s, then the call goes
    ahead, the row is queued and lands once the lock frees, and it is counted as late (not as an error)."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path, start_wait_s=0.05)
    tracker = CostTracker(ledger=ledger, default_model="gpt-4o-mini")
    holder = locked(path)
    threading.Timer(0.5, holder.close).start()
    calls = [uuid.uuid4() for _ in range(8)]
    started = time.perf_counter()
    for call in calls:
        tracker.on_chat_model_start({}, [[HumanMessage("hello")]], run_id=call, invocation_params=PARAMS)
    assert time.perf_counter() - started < 0.4  # one wait, not one per call
    tracker.on_llm_end(answer(), run_id=calls[0])
    try:
        assert ledger.flush(timeout=10)
        rows = committed(path)
        assert sorted(r["call_id"] for r in rows) == sorted(map(str, calls))
        assert sorted(r["status"] for r in rows) == ["ok"] + [STARTED] * 7
        assert ledger.late_starts == 8 and ledger.errors == 0 and ledger.lost_rows == 0
    finally:
        ledger.close()


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
    call = uuid.uuid4()
    tracker.on_chat_model_start({}, [[HumanMessage("hello")]], run_id=call, invocation_params=PARAMS)
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

    rows = ledger_rows()
    started = [r for r in rows if r["status"] == STARTED]
    assert len(started) >= received  # every request the server received has its row (none of them ended)
    assert all(r["cost_usd"] is None for r in started)
    (session,) = Ledger("runs/ledger.sqlite", readonly=True).sessions()
    assert session["unknown_cost_calls"] >= received

    env = {**os.environ, "COLUMNS": "250"}
    cli = Path(sys.executable).parent / "cpo"
    shown = subprocess.run(
        [str(cli), "costs", "--ledger", "runs/ledger.sqlite"], env=env, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    assert f"+ {session['unknown_cost_calls']} unknown (possibly billed)" in shown.stdout
