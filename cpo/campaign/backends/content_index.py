"""What a content index returns and the interface every backend (embedded SQLite FTS5, Azure AI Search) has.

Retrieval (`cpo.campaign.agents.retrieval`) queries an index with words from a segment's features and offer and
an audience filter (the segment's tier); a hit carries its snippet's metadata and the backend's score.
"""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel

from cpo.core.models import Snippet


class ContentHit(BaseModel):
    """One approved snippet found for a query, with the backend's relevance score (higher is better)."""

    id: str
    title: str
    section: str
    audience: list[str]
    score: float


class ContentIndex(Protocol):
    """A searchable copy of the approved content."""

    name: str  # "sqlite-fts5" or "azure-ai-search", recorded in retrieval.json

    def build(self, snippets: list[Snippet]) -> None:
        """Replace the index's documents with `snippets` (id, title, section, text, audience)."""

    def search(self, query: str, *, audience: str | None, top: int) -> list[ContentHit]:
        """The best `top` snippets for `query` whose audience is "all" or includes `audience` (a tier)."""
