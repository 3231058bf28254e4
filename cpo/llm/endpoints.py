"""What cpo has learned about an endpoint: the structured-output method that works, and parallelism.

Probing `json_schema` on a server that refuses it costs a round trip per process; remembering the
method that worked, per endpoint and model, spares it. The CLI keeps the notes in
`<runs dir>/endpoints.json` (for `--resume`, the runs directory the run is in, wherever the command
is run from); the Python API keeps them in memory, or beside the ledger when one is configured. A
note is a hint, never a promise: a refusal of the remembered method still downgrades.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cpo.core.files import write_atomically

log = logging.getLogger(__name__)

FILE_NAME = "endpoints.json"


def endpoint_key(model: Any) -> str | None:
    """'<base url> <model or deployment>' for a LangChain OpenAI model; None for the offline drafter."""
    from cpo.llm.factory import model_source

    members = getattr(model, "members", None)
    if members:  # a pool of deployments (`cpo.llm.pool`): what it learns holds for all of them together
        return " + ".join(str(endpoint_key(m.model)) for m in members)
    source = model_source(model)
    if source == "offline":
        return None
    if source == "azure":
        base = str(getattr(model, "azure_endpoint", "") or "")
        name = getattr(model, "deployment_name", None) or getattr(model, "model_name", "")
    else:
        base = str(getattr(model, "openai_api_base", "") or "")
        name = getattr(model, "model_name", "")
    return f"{base.rstrip('/')} {name}"


class EndpointNotes:
    """A small JSON file (or a dict) of per-endpoint notes; thread-safe, written atomically."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._notes: dict[str, dict[str, Any]] = self._read()

    def _read(self) -> dict[str, dict[str, Any]]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            notes = data.get("endpoints", {}) if isinstance(data, dict) else {}
            return {k: v for k, v in notes.items() if isinstance(v, dict)}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            log.warning("ignoring endpoint notes %s (%s); they will be rewritten", self.path, type(exc).__name__)
            return {}

    def get(self, key: str | None, name: str) -> Any:
        if key is None:
            return None
        with self._lock:
            return self._notes.get(key, {}).get(name)

    def clear(self) -> None:
        with self._lock:
            self._notes.clear()

    def note(self, key: str | None, **values: Any) -> None:
        """Record values for an endpoint (with the time); a failed write is logged, never raised."""
        if key is None:
            return
        with self._lock:
            entry = self._notes.setdefault(key, {})
            if all(entry.get(k) == v for k, v in values.items()):
                return
            entry.update(values, updated=datetime.now(UTC).isoformat(timespec="seconds"))
            snapshot = json.dumps({"endpoints": self._notes}, indent=2, sort_keys=True)
        if self.path is None:
            return
        try:
            write_atomically(self.path, snapshot)
        except OSError as exc:
            log.warning("could not save endpoint notes to %s: %s", self.path, exc.strerror or exc)


_IN_MEMORY = EndpointNotes()


def notes_for(path: Path | None) -> EndpointNotes:
    """The notes kept in `path`'s file, or this process's in-memory notes when no path is given."""
    return _IN_MEMORY if path is None else EndpointNotes(path)
