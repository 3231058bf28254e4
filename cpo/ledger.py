"""An append-only SQLite ledger of every LLM call, so `cpo costs` can show per-run and per-session history."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from cpo.pricing import TokenCounts

SCHEMA = """
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


class Ledger:
    """One connection shared by threads behind a lock; costs stored as exact decimal text."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(SCHEMA)
        self._lock = threading.Lock()

    def append(
        self,
        *,
        session_id: str,
        run_id: str,
        run_name: str | None,
        model: str,
        counts: TokenCounts,
        cost: Decimal | None,
        latency_s: float,
        status: str,
        estimated: bool = False,
    ) -> None:
        row = (
            datetime.now(UTC).isoformat(timespec="milliseconds"),
            session_id,
            run_id,
            run_name,
            model,
            counts.input_tokens,
            counts.cached_input_tokens,
            counts.output_tokens,
            counts.reasoning_tokens,
            None if cost is None else str(cost),
            latency_s,
            status,
            int(estimated),
        )
        with self._lock:
            self._conn.execute(
                "INSERT INTO calls (ts, session_id, run_id, run_name, model, input_tokens, cached_input_tokens,"
                " output_tokens, reasoning_tokens, cost_usd, latency_s, status, estimated)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                row,
            )

    def _grouped(self, key: str, limit: int, session_id: str | None = None) -> list[dict[str, Any]]:
        where, args = ("WHERE session_id = ?", [session_id]) if session_id else ("", [])
        sql = f"""
            SELECT {key} AS id, MIN(ts) AS started, MAX(run_name) AS name, COUNT(*) AS calls,
                   SUM(status != 'ok') AS failed_calls, SUM(input_tokens) AS input_tokens,
                   SUM(cached_input_tokens) AS cached_input_tokens, SUM(output_tokens) AS output_tokens,
                   GROUP_CONCAT(DISTINCT model) AS models, SUM(cost_usd IS NULL) AS unpriced,
                   COUNT(DISTINCT run_id) AS runs
            FROM calls {where} GROUP BY {key} ORDER BY started DESC LIMIT ?"""
        with self._lock:
            cur = self._conn.execute(sql, [*args, limit])
            cols = [c[0] for c in cur.description]
            rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
            for row in rows:
                costs = self._conn.execute(
                    f"SELECT cost_usd FROM calls WHERE {key} = ? AND cost_usd IS NOT NULL", [row["id"]]
                ).fetchall()
                exact = sum((Decimal(c[0]) for c in costs), Decimal(0))
                row["cost_usd"] = None if row.pop("unpriced") else exact
        return rows

    def sessions(self, limit: int = 20) -> list[dict[str, Any]]:
        """Most recent sessions first, with exact summed cost (None if any call was unpriced)."""
        return self._grouped("session_id", limit)

    def runs(self, session_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Most recent runs first, optionally of one session."""
        return self._grouped("run_id", limit, session_id)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
