"""Which run a model call belongs to: its root run (one top-level invocation) and, inside a campaign, its email.

LangChain reports each run's parent; the tree is kept while runs are open, so a call made deep inside
tools, retrievers, `batch` or a LangGraph graph is still attributed to the invocation that started it.
"""

from __future__ import annotations

import threading
from uuid import UUID

# Tags the run of one email, so calls made inside a larger run (a campaign graph) are also kept per email.
EMAIL_TAG = "cpo:email"
MAX_DEPTH = 1000


class RunTree:
    """Open runs and their parents; thread-safe. Root runs keep their names for reports."""

    def __init__(self) -> None:
        self.names: dict[UUID, str] = {}  # root run -> its name
        self._parents: dict[UUID, UUID | None] = {}
        self._emails: dict[UUID, str] = {}
        self._lock = threading.RLock()

    def enter(self, run_id: UUID, parent_run_id: UUID | None, name: str | None, tags: list[str] | None = None) -> None:
        with self._lock:
            self._parents[run_id] = parent_run_id
            if parent_run_id is None:
                self.names[run_id] = name or "run"
            if tags and EMAIL_TAG in tags and self.email(parent_run_id) is None:
                self._emails[run_id] = name or "email"

    def leave(self, run_id: UUID) -> None:
        with self._lock:
            self._parents.pop(run_id, None)
            self._emails.pop(run_id, None)

    def root(self, run_id: UUID, parent_run_id: UUID | None) -> UUID:
        """The outermost open run above `run_id` (itself when it has no parent)."""
        with self._lock:
            node, root, seen = parent_run_id, run_id, 0
            while node is not None and seen < MAX_DEPTH:
                root = node
                node = self._parents.get(node)
                seen += 1
            return root

    def email(self, parent_run_id: UUID | None) -> tuple[UUID, str] | None:
        """The email run (tagged EMAIL_TAG) a call belongs to, when it runs inside one (e.g. in a campaign graph)."""
        with self._lock:
            node, seen = parent_run_id, 0
            while node is not None and seen < MAX_DEPTH:
                if node in self._emails:
                    return node, self._emails[node]
                node = self._parents.get(node)
                seen += 1
            return None
