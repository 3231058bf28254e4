"""An append-only SQLite ledger of every LLM call, so `cpo costs` can show per-run and per-session history.

Writes happen on a background thread, so a slow or locked disk never stalls the calls in flight,
and a failed write is logged once and counted instead of breaking a call that was already paid
for. `flush()` returns once everything appended so far is committed: the CLI calls it before it
writes an email as produced, so a killed run never leaves an email without its cost. A call's start is
on disk before the request is sent, in the ledger's start journal (`cpo.accounting.start_journal`: a memory
write, nothing on the call's path waits), so a call in flight when the process is killed is filed, the next
time the ledger is opened, as one of unknown cost (possibly billed); a call that ends is one row.

The schema carries a version (`PRAGMA user_version`); older ledgers are migrated when opened for
writing, and a ledger from a newer cpo is refused with a one-line error.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import queue
import sqlite3
import threading
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cpo.accounting.ledger_rows import (
    MIGRATIONS,
    OK,
    REFUSED,
    STARTED,
    UNKNOWN_COST,
    CallRow,
    now,
    statements,
    write_calls,
)
from cpo.accounting.start_journal import StartJournal, available, discard, orphans
from cpo.core.errors import InputError, LedgerError

__all__ = ["OK", "REFUSED", "SCHEMA_VERSION", "STARTED", "UNKNOWN_COST", "CallRow", "Ledger"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = max(MIGRATIONS)
BUSY_TIMEOUT_S = 5.0

# How `_grouped` groups and names rows: per session, per run, or per email (a standalone email is its own run).
GROUPINGS = {
    "session_id": ("c.session_id", "MAX(s.name)"),
    "run_id": ("c.run_id", "MAX(c.run_name)"),
    "email_id": ("COALESCE(c.email_id, c.run_id)", "MAX(COALESCE(c.email_name, c.run_name))"),
}


@dataclass(frozen=True)
class _SessionRow:
    session_id: str
    name: str | None


@dataclass(frozen=True)
class _AuditHead:
    run_id: str
    head: str
    rows: int


_FLUSH = object()
_STOP = object()


def _schema_version(conn: sqlite3.Connection) -> int:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version == 0 and conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'calls'").fetchone():
        return 1  # written by cpo 0.1, before the schema had a version
    return version


class Ledger:
    """The cost ledger at `path`. `readonly=True` opens it for reading only (as `cpo costs` does)."""

    def __init__(
        self,
        path: Path | str,
        *,
        readonly: bool = False,
        busy_timeout_s: float = BUSY_TIMEOUT_S,
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.busy_timeout_s = busy_timeout_s
        self.errors = 0
        self.lost_rows = 0
        self._error_kinds: set[str] = set()
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._enqueued = 0
        self._done = 0
        self._progress = threading.Condition()
        self._writer: threading.Thread | None = None
        self._conn = self._open()
        self.version = _schema_version(self._conn)
        self.filed_starts = self._file_orphans()
        self._journal: StartJournal | None = None
        if not readonly:
            self._journal = self._start_journal()
            self._writer = threading.Thread(target=self._write_loop, name="cpo-ledger", daemon=True)
            self._writer.start()
            atexit.register(self.close)  # a daemon thread dies at exit: commit what is queued first

    def _open(self) -> sqlite3.Connection:
        """Connect and bring the schema up to date; every failure is one LedgerError line."""
        where = str(self.path)
        try:
            if self.readonly:
                if not self.path.is_file():
                    raise LedgerError(f"no cost ledger at {where}: run `cpo run` first, or pass --ledger FILE")
                conn = sqlite3.connect(f"file:{quote(str(self.path.resolve()))}?mode=ro", uri=True)
            else:
                if self.path.is_dir():
                    raise LedgerError(f"cost ledger {where} is a directory; give a file path (CPO_LEDGER)")
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                except (FileExistsError, NotADirectoryError):
                    raise LedgerError(
                        f"cost ledger {where} cannot be created: {self.path.parent} is not a directory"
                    ) from None
                conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            version = _schema_version(conn)
            if version > SCHEMA_VERSION:
                raise LedgerError(
                    f"cost ledger {where} has schema {version}, written by a newer cpo (this one reads up to "
                    f"{SCHEMA_VERSION}); upgrade cpo or use another ledger"
                )
            if not self.readonly:
                conn.execute("PRAGMA journal_mode=WAL")
                self._migrate(conn, version)
            elif version == 0:
                raise LedgerError(f"{where} is not a cpo cost ledger (it has no calls table)")
            return conn
        except LedgerError:
            raise
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"cost ledger {where} cannot be used: {exc}") from None
        except OSError as exc:
            raise LedgerError(f"cost ledger {where} cannot be created: {exc.strerror or exc}") from None

    @staticmethod
    def _migrate(conn: sqlite3.Connection, version: int) -> None:
        for target in range(version + 1, SCHEMA_VERSION + 1):
            conn.executescript(f"BEGIN IMMEDIATE; {MIGRATIONS[target]} PRAGMA user_version = {target}; COMMIT;")

    def start_session(self, session_id: str, name: str | None) -> None:
        """Record a session's name (e.g. the command that ran it) once, before its calls."""
        self._enqueue(_SessionRow(session_id, name))

    def record_audit_head(self, run_id: str, head: str, rows: int) -> None:
        """The safety audit's latest hash for a run: a second copy, outside the run directory."""
        self._enqueue(_AuditHead(run_id, head, rows))

    def audit_head(self, run_id: str) -> str | None:
        if self.version < 4:
            return None
        found = self._query("SELECT head FROM audit_heads WHERE run_id = ?", [run_id])
        return str(found[0]["head"]) if found else None

    def append(self, row: CallRow) -> None:
        """Queue one call for writing; never blocks on the disk."""
        self._enqueue(row)

    def record_start(self, row: CallRow) -> None:
        """A call's start, on disk (in the start journal) when this returns, before the call is sent; its end
        (`append`) is the ledger row. Without a journal (Windows), the start is queued like any row."""
        if self.readonly:
            raise LedgerError(f"cost ledger {self.path} was opened read-only")
        if self._journal is not None:
            self._journal.begin(row)
        else:
            self._enqueue(row)

    def _start_journal(self) -> StartJournal | None:
        """This process's start journal; None (starts queued like any row, logged once) where it cannot be made."""
        if not available():
            return None
        try:
            return StartJournal(self.path)
        except OSError as exc:
            log.warning(
                "cost ledger %s: no start journal (%s): calls in flight at a kill -9 will not be in the ledger",
                self.path,
                exc.strerror or exc,
            )
            return None

    def _file_orphans(self) -> int:
        """File the starts of processes that died with calls in flight as possibly-billed rows; how many.

        Done on every open, a read-only one included, as long as this process may write the ledger file."""
        if self.version < 5 or (self.readonly and not os.access(self.path, os.W_OK)):
            return 0  # journals exist only beside ledgers of schema 5 and later
        filed = 0
        for journal, rows in orphans(self.path):
            try:
                conn = self._writing_connection(self.busy_timeout_s)
                try:
                    write_calls(conn, rows)  # a start never overwrites an end committed before the kill
                finally:
                    conn.close()
            except sqlite3.Error as exc:
                log.warning("cost ledger %s: cannot file the calls in flight of %s: %s", self.path, journal.name, exc)
                continue
            discard(journal)
            filed += len(rows)
        return filed

    def _enqueue(self, item: Any) -> None:
        if self.readonly:
            raise LedgerError(f"cost ledger {self.path} was opened read-only")
        with self._progress:
            self._enqueued += 1
        self._queue.put(item)

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything appended so far is committed (or failed and counted); False on timeout."""
        if self.readonly:
            return True
        with self._progress:
            target = self._enqueued
            return self._progress.wait_for(lambda: self._done >= target, timeout=timeout)

    async def aflush(self, timeout: float | None = 30.0) -> bool:
        """`flush` without blocking the event loop."""
        return await asyncio.to_thread(self.flush, timeout)

    def _writing_connection(self, busy_timeout_s: float) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        return conn

    def _write_loop(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            conn = self._writing_connection(self.busy_timeout_s)
        except sqlite3.Error as exc:
            self._failed(exc)
        while True:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in batch)
            rows = [item for item in batch if isinstance(item, CallRow | _SessionRow | _AuditHead)]
            if rows:
                if conn is None:
                    self._failed(sqlite3.OperationalError("the ledger could not be opened by its writer"), len(rows))
                else:
                    self._write(conn, rows)
            with self._progress:
                self._done += len(rows)
                self._progress.notify_all()
            if stop:
                if conn is not None:
                    self._file_open_starts(conn)
                    conn.close()
                return

    def _file_open_starts(self, conn: sqlite3.Connection) -> None:
        """At close: the calls this process started and never ended are possibly billed; then the journal goes."""
        if self._journal is None:
            return
        errors = self.errors
        self._write(conn, list(self._journal.open_starts()))
        self._journal.close(keep=self.errors > errors)  # not filed: the next open files it

    def _write(self, conn: sqlite3.Connection, rows: list[CallRow | _SessionRow | _AuditHead]) -> None:
        calls = [row for row in rows if isinstance(row, CallRow)]
        others = [row for row in rows if not isinstance(row, CallRow)]
        try:
            if others or statements(calls) > 1:
                conn.execute("BEGIN IMMEDIATE")
            for row in others:
                if isinstance(row, _AuditHead):
                    conn.execute(
                        "INSERT OR REPLACE INTO audit_heads (run_id, head, rows, ts) VALUES (?,?,?,?)",
                        (row.run_id, row.head, row.rows, now()),
                    )
                else:
                    conn.execute(
                        "INSERT OR IGNORE INTO sessions (session_id, name, started) VALUES (?,?,?)",
                        (row.session_id, row.name, now()),
                    )
            write_calls(conn, calls)  # an end updates its start row, or inserts the whole call if it was lost
            if conn.in_transaction:
                conn.execute("COMMIT")
            if self._journal is not None:  # ended calls are in the ledger now: their starts are done with
                for call in calls:
                    if call.status != STARTED:
                        self._journal.end(call.call_id)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            # A lost start is not a lost call: its end inserts the whole row (and late starts are counted).
            self._failed(exc, sum(isinstance(r, CallRow) and r.status != STARTED for r in rows))

    def _failed(self, exc: BaseException, lost: int = 0) -> None:
        """Log each kind of failure once; count every failure and every row lost."""
        with self._lock:
            self.errors += 1
            self.lost_rows += lost
            kind = f"{type(exc).__name__}: {exc}"
            first = kind not in self._error_kinds
            self._error_kinds.add(kind)
        if first:
            log.error("cost ledger %s: write failed (%s); the calls are still counted in memory", self.path, kind)

    def close(self) -> None:
        """Commit what is queued, stop the writer, close the connection."""
        atexit.unregister(self.close)
        if self._writer is not None and self._writer.is_alive():
            self._queue.put(_STOP)
            self._writer.join(timeout=BUSY_TIMEOUT_S * 2)
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _query(self, sql: str, args: list[Any]) -> list[dict[str, Any]]:
        try:
            with self._lock:
                cur = self._conn.execute(sql, args)
                cols = [c[0] for c in cur.description]
                return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"cost ledger {self.path} cannot be read: {exc}") from None

    def _grouped(self, key: str, limit: int, session_id: str | None = None) -> list[dict[str, Any]]:
        self.flush()  # read our own writes
        group, name = GROUPINGS[key]
        if key == "email_id" and self.version < 3:
            group, name = GROUPINGS["run_id"]
        if key == "session_id" and self.version < 2:
            name = "NULL"
        where, args = ("WHERE c.session_id = ?", [session_id]) if session_id else ("", [])
        join = "LEFT JOIN sessions s ON s.session_id = c.session_id" if self.version >= 2 else ""
        rows = self._query(
            f"""
            SELECT {group} AS id, MIN(c.ts) AS started, {name} AS name,
                   SUM(c.status NOT LIKE '{REFUSED}%') AS calls,
                   SUM(c.status != 'ok' AND c.status NOT LIKE '{REFUSED}%') AS failed_calls,
                   SUM(c.status LIKE '{REFUSED}%') AS refused_calls, SUM(c.input_tokens) AS input_tokens,
                   SUM(c.cached_input_tokens) AS cached_input_tokens, SUM(c.output_tokens) AS output_tokens,
                   GROUP_CONCAT(DISTINCT c.model) AS models,
                   SUM(c.cost_usd IS NULL AND c.status NOT LIKE '{UNKNOWN_COST}%') AS unpriced_calls,
                   SUM(c.status LIKE '{UNKNOWN_COST}%') AS unknown_cost_calls,
                   COUNT(DISTINCT c.run_id) AS runs
            FROM calls c {join} {where} GROUP BY {group} ORDER BY started DESC LIMIT ?""",
            [*args, limit],
        )
        for row in rows:
            costs = self._query(f"SELECT cost_usd FROM calls c WHERE {group} = ? AND cost_usd IS NOT NULL", [row["id"]])
            exact = sum((Decimal(c["cost_usd"]) for c in costs), Decimal(0))
            row["cost_usd"] = None if row["unpriced_calls"] else exact
        return rows

    def sessions(self, limit: int = 20) -> list[dict[str, Any]]:
        """Most recent sessions first, with exact summed cost (None if any call was unpriced)."""
        return self._grouped("session_id", limit)

    def session(self, session_id: str) -> dict[str, Any] | None:
        """One session's totals, or None when it has no calls yet."""
        found = self._grouped("session_id", 1, session_id)
        return found[0] if found else None

    def runs(self, session_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Most recent runs first, optionally of one session."""
        return self._grouped("run_id", limit, session_id)

    def emails(self, session_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The emails of one session, each with the calls it made (within a campaign run or on its own)."""
        return self._grouped("email_id", limit, session_id)

    def resolve_session(self, prefix: str) -> str:
        """The session whose id is `prefix`, or the only one starting with it; InputError otherwise."""
        found = self._query(
            "SELECT DISTINCT session_id FROM calls WHERE session_id = ? OR substr(session_id, 1, ?) = ? LIMIT 6",
            [prefix, len(prefix), prefix],
        )
        ids = [r["session_id"] for r in found]
        if prefix in ids:
            return prefix
        if not ids:
            raise InputError(f"no session {prefix!r} in the cost ledger {self.path}")
        if len(ids) > 1:
            raise InputError(f"session prefix {prefix!r} is ambiguous: {', '.join(i[:12] for i in ids[:5])} ...")
        return str(ids[0])
