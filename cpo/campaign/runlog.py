"""The run's JSON log (`log.jsonl`): one event per line, for audits and for following a run with `tail -f`.

Customer ids never appear in it: they are keyed hashes (`cpo.core.privacy.IdHasher`), so the log can be
shared without the customer file. cpo's own log records (warnings and up) are copied into it too.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from cpo.core.privacy import IdHasher


class RunLog:
    """Appends events to `<run dir>/log.jsonl`; a resumed run appends to the same file."""

    def __init__(self, path: Path, hasher: IdHasher) -> None:
        self.path = path
        self.hash_id = hasher
        self._lock = threading.Lock()
        self._handle: TextIO = path.open("a", encoding="utf-8")
        self._records = _Records(self)

    def event(self, name: str, **fields: Any) -> None:
        line = json.dumps(
            {"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": name, **fields},
            default=str,
            ensure_ascii=False,
        )
        with self._lock:
            if not self._handle.closed:
                self._handle.write(line + "\n")
                self._handle.flush()

    def excluded(self, customers: list[tuple[str, str]]) -> None:
        """Who was left out of the campaign and why, by hashed id."""
        for customer_id, reason in customers:
            self.event("excluded", customer=self.hash_id(customer_id), reason=reason)

    def __enter__(self) -> RunLog:
        logging.getLogger("cpo").addHandler(self._records)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("cpo").removeHandler(self._records)
        with self._lock:
            self._handle.close()


class _Records(logging.Handler):
    def __init__(self, log: RunLog) -> None:
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        self.log.event("log", level=record.levelname.lower(), logger=record.name, message=record.getMessage())
