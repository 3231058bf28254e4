"""Which content index and which safety screen a campaign uses: chosen here, once, from the environment.

Azure AI Search when `AZURE_SEARCH_ENDPOINT` is set, else the embedded SQLite FTS5 index; Azure AI
Content Safety when `AZURE_CONTENT_SAFETY_ENDPOINT` is set, else the local policy's terms. The settings
are `cpo.core.settings.Settings` (the environment or `.env`, validated once); the Azure SDKs are
imported only when their backend is chosen.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cpo.campaign.backends.content_index import ContentIndex
from cpo.campaign.backends.sqlite_index import SqliteFtsIndex
from cpo.core.models import Snippet
from cpo.core.settings import Settings

if TYPE_CHECKING:
    from cpo.campaign.agents.safety import SafetyPolicy, Screen

INDEX_FILE = "content-index.sqlite"


def uses_azure_search(settings: Settings | None = None) -> bool:
    return (settings or Settings()).azure_search_endpoint is not None


def uses_azure_content_safety(settings: Settings | None = None) -> bool:
    return (settings or Settings()).azure_content_safety_endpoint is not None


def embedded_index(snippets: list[Snippet] | None = None, path: Path | None = None) -> SqliteFtsIndex:
    """The SQLite FTS5 index of the approved content (in memory without a path), (re)built if the content changed."""
    from cpo.email.content import load_snippets

    index = SqliteFtsIndex(path or ":memory:")
    index.ensure(snippets if snippets is not None else list(load_snippets().values()))
    return index


def content_index(runs_dir: Path | None, settings: Settings | None = None) -> ContentIndex:
    """Azure AI Search (filled by `cpo index`), else the embedded index in the runs directory (in memory when
    None: a dry run writes nothing), rebuilt whenever the approved content changed."""
    settings = settings or Settings()
    if uses_azure_search(settings):
        from cpo.campaign.backends.azure_search import AzureSearchIndex

        return AzureSearchIndex.from_settings(settings)
    return embedded_index(path=None if runs_dir is None else runs_dir / INDEX_FILE)


def build_screen(policy: SafetyPolicy, settings: Settings | None = None) -> Screen:
    """Azure AI Content Safety, else the local policy's terms."""
    settings = settings or Settings()
    if uses_azure_content_safety(settings):
        from cpo.campaign.backends.azure_safety import AzureContentSafety

        return AzureContentSafety.from_settings(settings)
    from cpo.campaign.agents.safety import LocalScreen

    return LocalScreen(policy)
