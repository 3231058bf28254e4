"""Which content index and which safety screen a campaign uses: chosen here, once, from the environment.

Azure AI Search when `AZURE_SEARCH_ENDPOINT` is set, else the embedded SQLite FTS5 index; Azure AI
Content Safety when `AZURE_CONTENT_SAFETY_ENDPOINT` is set, else the local policy's terms. The Azure
SDKs are imported only when their backend is chosen.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from cpo.campaign.backends.content_index import ContentIndex
from cpo.campaign.backends.sqlite_index import SqliteFtsIndex
from cpo.core.models import Snippet

if TYPE_CHECKING:
    from cpo.campaign.agents.safety import SafetyPolicy, Screen

INDEX_FILE = "content-index.sqlite"
SEARCH_ENDPOINT = "AZURE_SEARCH_ENDPOINT"
CONTENT_SAFETY_ENDPOINT = "AZURE_CONTENT_SAFETY_ENDPOINT"


def uses_azure_search() -> bool:
    return bool(os.environ.get(SEARCH_ENDPOINT, "").strip())


def uses_azure_content_safety() -> bool:
    return bool(os.environ.get(CONTENT_SAFETY_ENDPOINT, "").strip())


def embedded_index(snippets: list[Snippet] | None = None, path: Path | None = None) -> SqliteFtsIndex:
    """The SQLite FTS5 index of the approved content (in memory without a path), (re)built if the content changed."""
    from cpo.email.content import load_snippets

    index = SqliteFtsIndex(path or ":memory:")
    index.ensure(snippets if snippets is not None else list(load_snippets().values()))
    return index


def content_index(runs_dir: Path | None) -> ContentIndex:
    """Azure AI Search (filled by `cpo index`), else the embedded index in the runs directory (in memory when
    None: a dry run writes nothing), rebuilt whenever the approved content changed."""
    if uses_azure_search():
        from cpo.campaign.backends.azure_search import AzureSearchIndex

        return AzureSearchIndex.from_env()
    return embedded_index(path=None if runs_dir is None else runs_dir / INDEX_FILE)


def build_screen(policy: SafetyPolicy) -> Screen:
    """Azure AI Content Safety, else the local policy's terms."""
    if uses_azure_content_safety():
        from cpo.campaign.backends.azure_safety import AzureContentSafety

        return AzureContentSafety.from_env()
    from cpo.campaign.agents.safety import LocalScreen

    return LocalScreen(policy)
