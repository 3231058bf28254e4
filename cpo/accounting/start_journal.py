"""The ledger's start journal: each call is on disk as started before it is sent, at the cost of a memory write.

A call's start must survive a kill -9 of the process, so that the calls in flight then show as possibly billed.
Committing a row to SQLite before every request costs the calls in flight about 4 points of concurrency
efficiency on two cores (measured with `benchmarks/concurrency.py --ledger`): any blocking step on a call's
path lets go of the GIL, and winning it back from the other threads takes milliseconds. A write into a shared
memory map holds the GIL and makes no system call, and the kernel keeps the page when the process dies.

So each writing `Ledger` keeps a journal file beside the database (`.<ledger>.starts/<pid>-<id>.journal`, hidden):
fixed slots, one per call in flight, claimed by a counter with no lock. A slot is cleared once the call's end
row is committed. The journal file is flock'ed while its process lives; opening a ledger files the starts of
every journal whose process has died as possibly-billed rows and deletes the journal. Like SQLite's WAL with
`synchronous=NORMAL`, this survives a killed process, not a power cut.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import mmap
import os
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from decimal import Decimal
from pathlib import Path
from typing import Any

from cpo.accounting.ledger_rows import STARTED, CallRow
from cpo.core.usage import TokenCounts

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no journal, calls reach the ledger when they end
    fcntl = None  # type: ignore[assignment]

SLOTS = 4096
SLOT_BYTES = 1024
FREE, USED = b"\0", b"S"
HEADER = 3  # state byte, then the payload's length in two bytes


def folder_of(ledger: Path) -> Path:
    """Hidden beside the ledger (`runs/.ledger.sqlite.starts/`): the runs folder lists run directories."""
    return ledger.with_name(f".{ledger.name}.starts")


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty (another process's journal), or already gone
        folder.rmdir()


def _payload(row: CallRow) -> bytes:
    """The row as compact JSON, names shortened until it fits its slot."""
    data = asdict(row)
    data["counts"] = {}
    data["cost"] = None
    for cut in (None, 120, 0):
        if cut is not None:
            for key in ("run_name", "email_name"):
                data[key] = (data[key] or "")[:cut] or None
        raw = json.dumps(data, separators=(",", ":")).encode()
        if len(raw) <= SLOT_BYTES - HEADER:
            return raw
    raise ValueError("a call's start row does not fit a journal slot")


def _row(raw: bytes) -> CallRow:
    data: dict[str, Any] = json.loads(raw)
    data["counts"] = TokenCounts()
    data["cost"] = None if data.get("cost") is None else Decimal(str(data["cost"]))
    data["status"] = STARTED
    return CallRow(**data)


class StartJournal:
    """One process's journal of calls in flight (see the module docstring)."""

    def __init__(self, ledger: Path) -> None:
        folder = folder_of(ledger)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = folder / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.journal"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the kernel when this process dies
            # Blocks allocated now, not on first write: a page of a sparse file written to a full disk is a
            # SIGBUS, which would kill the process mid-call instead of failing here.
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, SLOTS * SLOT_BYTES)
            else:  # pragma: no cover - macOS
                os.ftruncate(fd, SLOTS * SLOT_BYTES)
            self._map = mmap.mmap(fd, SLOTS * SLOT_BYTES)
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        self._fd = fd
        self._next = itertools.count()
        self._slots: dict[str, int] = {}  # call id -> the slot holding its start

    def begin(self, row: CallRow) -> None:
        """Put the call's start in a free slot: plain memory writes, no lock and no system call."""
        raw = _payload(row)
        for _ in range(SLOTS):
            slot = next(self._next) % SLOTS
            at = slot * SLOT_BYTES
            if self._map[at : at + 1] == FREE:
                self._map[at + 1 : at + HEADER + len(raw)] = len(raw).to_bytes(2, "big") + raw
                self._map[at : at + 1] = USED  # last: a slot is never read half-written
                if row.call_id is not None:
                    self._slots[row.call_id] = slot
                return
        raise RuntimeError(f"more than {SLOTS} calls in flight")

    def end(self, call_id: str | None) -> None:
        """The call's end is committed to the ledger: free its slot."""
        slot = self._slots.pop(call_id, None) if call_id is not None else None
        if slot is not None:
            self._map[slot * SLOT_BYTES : slot * SLOT_BYTES + 1] = FREE

    def open_starts(self) -> list[CallRow]:
        """The calls started and not ended (at close: possibly billed)."""
        return list(_used(self._map))

    def close(self, *, keep: bool = False) -> None:
        """Delete the journal (file what `open_starts` returns first), or `keep` it for the next open to file."""
        with contextlib.suppress(ValueError, OSError):
            self._map.close()
        if not keep:
            with contextlib.suppress(OSError):
                self.path.unlink()
            _remove_if_empty(self.path.parent)
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _used(view: mmap.mmap | bytes) -> Iterator[CallRow]:
    for slot in range(len(view) // SLOT_BYTES):
        at = slot * SLOT_BYTES
        if view[at : at + 1] != USED:
            continue
        size = int.from_bytes(view[at + 1 : at + HEADER], "big")
        with contextlib.suppress(ValueError, TypeError, KeyError):
            yield _row(bytes(view[at + HEADER : at + HEADER + size]))


def starts_on_disk(ledger: Path) -> list[CallRow]:
    """Every start in the journals beside `ledger`, live or dead, as the files on disk hold them (for tools and
    tests that look at a running process from outside)."""
    folder = folder_of(ledger)
    return [row for path in sorted(folder.glob("*.journal")) for row in _used(path.read_bytes())]


def orphans(ledger: Path) -> Iterator[tuple[Path, list[CallRow]]]:
    """(journal, its open starts) for each journal beside `ledger` whose process has died. The journal is
    held locked while the caller files the rows; delete it afterwards (`discard`)."""
    folder = folder_of(ledger)
    if fcntl is None or not folder.is_dir():
        return
    for path in sorted(folder.glob("*.journal")):
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its process is alive
            with open(fd, "rb", closefd=False) as handle:
                yield path, list(_used(handle.read()))
        finally:
            os.close(fd)


def discard(journal: Path) -> None:
    """Delete a filed journal, and its folder once no journal is left."""
    journal.unlink(missing_ok=True)
    _remove_if_empty(journal.parent)


def available() -> bool:
    return fcntl is not None
