"""The ledger's rows as stored: the schema and its migrations, call statuses, and the SQL of one call's row."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from cpo.core.usage import TokenCounts

CALLS_V1 = """
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    session_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    run_name TEXT,
    model TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    cost_usd TEXT,
    latency_s REAL NOT NULL,
    status TEXT NOT NULL,
    estimated INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS calls_session ON calls(session_id);
CREATE INDEX IF NOT EXISTS calls_run ON calls(run_id);
"""
# Each step takes the schema from version N-1 to N.
MIGRATIONS: dict[int, str] = {
    1: CALLS_V1,
    2: """
ALTER TABLE calls ADD COLUMN deployment TEXT;
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    name TEXT,
    started TEXT NOT NULL
);
""",
    3: """
ALTER TABLE calls ADD COLUMN email_id TEXT;
ALTER TABLE calls ADD COLUMN email_name TEXT;
""",
    4: """
CREATE TABLE IF NOT EXISTS audit_heads (
    run_id TEXT PRIMARY KEY,
    head TEXT NOT NULL,
    rows INTEGER NOT NULL,
    ts TEXT NOT NULL
);
""",
    5: """
ALTER TABLE calls ADD COLUMN call_id TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS calls_call ON calls(call_id) WHERE call_id IS NOT NULL;
""",
}
# Call statuses as stored: "ok", "error:<kind>", "unknown-cost:<kind>", "refused:<kind>".
OK = "ok"
UNKNOWN_COST = "unknown-cost"
# A structured-output method the server refused (no tokens, not billed): kept apart from failed calls.
REFUSED = "refused"
# A call recorded before it was sent and not (yet) ended: if the process died, it may have been billed.
STARTED = f"{UNKNOWN_COST}:started"


@dataclass(frozen=True)
class CallRow:
    """One LLM call as the ledger stores it."""

    session_id: str
    run_id: str
    run_name: str | None
    model: str
    counts: TokenCounts
    cost: Decimal | None
    latency_s: float
    status: str
    estimated: bool = False
    deployment: str | None = None
    email_id: str | None = None  # the email's own run, when the call ran inside a campaign run
    email_name: str | None = None
    call_id: str | None = None  # the LLM call's own run id: its start row is updated when it ends


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


CALL_COLUMNS = (
    "ts, session_id, run_id, run_name, model, deployment, email_id, email_name, input_tokens, cached_input_tokens,"
    " output_tokens, reasoning_tokens, cost_usd, latency_s, status, estimated, call_id"
)
# What a call's end sets on its start row; the start's time, session and run stay.
ENDED_COLUMNS = CALL_COLUMNS.split(", ")[4:-1]
# Rows per statement: 17 values each, under SQLite's 32766 variables.
CALLS_PER_STATEMENT = 1000


def _upsert(rows: int) -> str:
    """Insert each call, or end it in place (a start never overwrites an end)."""
    values = ",".join([f"({','.join('?' * 17)})"] * rows)
    ended = ", ".join(f"{column} = excluded.{column}" for column in ENDED_COLUMNS)
    return (
        f"INSERT INTO calls ({CALL_COLUMNS}) VALUES {values} ON CONFLICT(call_id) WHERE call_id IS NOT NULL"
        f" DO UPDATE SET {ended} WHERE excluded.status != '{STARTED}'"
    )


def call_values(row: CallRow) -> tuple[Any, ...]:
    """The row's values in CALL_COLUMNS order."""
    c = row.counts
    cost = None if row.cost is None else str(row.cost)
    return (
        now(),
        row.session_id,
        row.run_id,
        row.run_name,
        row.model,
        row.deployment,
        row.email_id,
        row.email_name,
        c.input_tokens,
        c.cached_input_tokens,
        c.output_tokens,
        c.reasoning_tokens,
        cost,
        row.latency_s,
        row.status,
        int(row.estimated),
        row.call_id,
    )


def statements(rows: list[CallRow]) -> int:
    """How many statements `write_calls` runs for `rows`."""
    return -(-len(rows) // CALLS_PER_STATEMENT)


def write_calls(conn: sqlite3.Connection, rows: list[CallRow]) -> None:
    """Starts and ends in one statement (per thousand rows): a call's end updates its start row in place,
    or inserts the whole row if its start was lost. One statement is one short hold of the GIL-free
    SQLite step, which the calls waiting on their start rows feel."""
    for first in range(0, len(rows), CALLS_PER_STATEMENT):
        chunk = rows[first : first + CALLS_PER_STATEMENT]
        conn.execute(_upsert(len(chunk)), [value for row in chunk for value in call_values(row)])
