"""The embedded content index: SQLite FTS5 with bm25 over the approved snippets, rebuilt when they change.

One file (`<runs dir>/content-index.sqlite` by default) holds the snippets' title, section, text and
audience, and the fingerprint of the content it was built from; `ensure` rebuilds it only when the
content changed, so every run searches exactly the files it was given (`cpo index` rebuilds on demand).
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path

from cpo.campaign.backends.content_index import ContentHit
from cpo.core.errors import InputError
from cpo.core.models import Snippet

WORD = re.compile(r"[A-Za-z0-9$%][A-Za-z0-9$%'-]*")
# bm25 column weights: a word in a title says more about a snippet than one in its text.
WEIGHTS = (3.0, 2.0, 1.0)
STOP = frozenset(
    {"a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "get", "has", "have", "in", "into", "is",
     "it", "its", "of", "on", "or", "our", "that", "the", "their", "this", "to", "with", "you", "your", "we",
     "will", "can", "more", "every", "any", "all", "per"}
)  # fmt: skip


def content_fingerprint(snippets: list[Snippet]) -> str:
    digest = hashlib.sha256()
    for s in sorted(snippets, key=lambda s: s.id):
        digest.update(s.model_dump_json().encode() + b"\0")
    return digest.hexdigest()


def match_expression(query: str) -> str:
    """An FTS5 query: any of the query's words (quoted, so no word is read as an operator)."""
    words = dict.fromkeys(w.lower().strip("'-") for w in WORD.findall(query))
    terms = [w for w in words if w and w not in STOP]
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in terms)


class SqliteFtsIndex:
    """bm25 search over the approved snippets; the audience filter keeps "all" plus the given tier."""

    name = "sqlite-fts5"

    def __init__(self, path: Path | str = ":memory:") -> None:
        self.path = Path(path) if path != ":memory:" else None
        try:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.path or ":memory:"), check_same_thread=False)
            self._conn.executescript(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);"
                "CREATE VIRTUAL TABLE IF NOT EXISTS docs USING fts5("
                "id UNINDEXED, title, section, text, audience UNINDEXED, tokenize = 'porter unicode61');"
            )
        except (sqlite3.Error, OSError) as exc:
            raise InputError(f"content index {self.path}: cannot be opened ({exc})") from None

    def built_from(self) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
        return None if row is None else str(row[0])

    def build(self, snippets: list[Snippet]) -> None:
        with self._conn:
            self._conn.execute("DELETE FROM docs")
            self._conn.executemany(
                "INSERT INTO docs (id, title, section, text, audience) VALUES (?, ?, ?, ?, ?)",
                [(s.id, s.title, s.section, s.text, " ".join(s.audience)) for s in snippets],
            )
            self._conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('fingerprint', ?)", (content_fingerprint(snippets),)
            )

    def ensure(self, snippets: list[Snippet]) -> bool:
        """Rebuild if the snippets changed since the last build; True when it did."""
        if self.built_from() == content_fingerprint(snippets):
            return False
        self.build(snippets)
        return True

    def search(self, query: str, *, audience: str | None, top: int) -> list[ContentHit]:
        expression = match_expression(query)
        if not expression:
            return []
        rows = self._conn.execute(
            f"SELECT id, title, section, audience, bm25(docs, 0, {', '.join(map(str, WEIGHTS))}, 0) AS rank "
            "FROM docs WHERE docs MATCH ? ORDER BY rank, id",
            (expression,),
        ).fetchall()
        hits = []
        for doc_id, title, section, audiences, rank in rows:
            allowed = audiences.split()
            if "all" in allowed or (audience is not None and audience in allowed):
                hits.append(
                    ContentHit(id=doc_id, title=title, section=section, audience=allowed, score=round(-rank, 4))
                )
            if len(hits) == top:
                break
        return hits

    def close(self) -> None:
        self._conn.close()
