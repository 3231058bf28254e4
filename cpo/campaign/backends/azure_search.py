"""Azure AI Search as cpo's content index (the `azure-search-documents` SDK, an optional extra).

`AzureSearchIndex.build` creates or updates the index (key `id`; searchable `title`, `section`, `text`;
filterable `audience`, a Collection(Edm.String)), uploads every snippet (mergeOrUpload) and then deletes
documents whose ids are no longer among the snippets, so the index holds exactly the approved content.
`search` sends the query with an OData audience filter: `audience/any(a: a eq 'all')` for general content,
`audience/any(a: a eq 'all' or a eq 'Gold')` for a tier.

Errors are one line naming the service's host, never the key: refused credentials are a `ConfigError`
(exit 2), anything else the service or the network did is `SearchUnavailable` (exit 1).

The SDK is imported when an index is constructed, not when this module is, so `import cpo` never needs it.
The helpers for reading settings and describing Azure SDK errors are in `cpo.campaign.backends.azure_common`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from cpo.campaign.backends.azure_common import (
    DEFAULT_CLIENT_KWARGS,
    SERVICES_HINT,
    clean_line,
    credential,
    describe_azure_error,
    endpoint_host,
    required,
)
from cpo.campaign.backends.content_index import ContentHit
from cpo.core.errors import ConfigError, CpoError, ExitCode
from cpo.core.models import Snippet
from cpo.core.settings import Settings

if TYPE_CHECKING:
    from azure.core.credentials import AzureKeyCredential, TokenCredential
    from azure.search.documents import SearchClient
    from azure.search.documents.indexes import SearchIndexClient

UPLOAD_BATCH = 1000  # the service's limit of documents per indexing request
PAGE = 1000  # the service's largest `top`
_INDEX_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,126}[a-z0-9])?$")
# Characters the simple query syntax reads as operators; the analyzer splits words on them anyway.
_QUERY_OPERATORS = re.compile(r"""[+\-&|!(){}\[\]^"~*?:\\/]""")


class SearchUnavailable(CpoError):
    """Azure AI Search could not be reached or did not do what was asked (not a credentials problem)."""

    exit_code = ExitCode.FAILED


def audience_filter(audience: str | None) -> str:
    """The OData filter for snippets meant for everyone, or for everyone and one tier."""
    if audience is None or audience == "all":
        return "audience/any(a: a eq 'all')"
    return "audience/any(a: a eq 'all' or a eq '{}')".format(audience.replace("'", "''"))


def plain_query(query: str) -> str:
    """The query's words without simple-query-syntax operators (a stray quote or dash changes the meaning)."""
    return " ".join(_QUERY_OPERATORS.sub(" ", query).split())


def _search_sdk() -> tuple[type[SearchClient], type[SearchIndexClient]]:
    try:
        from azure.search.documents import SearchClient
        from azure.search.documents.indexes import SearchIndexClient
    except ImportError:
        raise ConfigError(f"Azure AI Search needs the azure-search-documents package: {SERVICES_HINT}") from None
    return SearchClient, SearchIndexClient


class AzureSearchIndex:
    """The approved content in an Azure AI Search index; see the module docstring."""

    name = "azure-ai-search"

    def __init__(
        self,
        endpoint: str,
        index: str,
        credential: AzureKeyCredential | TokenCredential,
        **client_kwargs: Any,
    ) -> None:
        search_client, index_client = _search_sdk()
        from azure.core.credentials import AzureKeyCredential

        self.host = endpoint_host(endpoint, "AZURE_SEARCH_ENDPOINT")
        if not _INDEX_NAME.match(index):
            raise ConfigError(
                f"AZURE_SEARCH_INDEX {index!r} is not an index name (lowercase letters, digits and dashes)"
            )
        self.endpoint = endpoint.strip().rstrip("/")
        self.index = index
        self._secret = credential.key if isinstance(credential, AzureKeyCredential) else None
        kwargs = {**DEFAULT_CLIENT_KWARGS, **client_kwargs}
        self._client = search_client(endpoint=self.endpoint, index_name=index, credential=credential, **kwargs)
        self._indexes = index_client(endpoint=self.endpoint, credential=credential, **kwargs)

    @classmethod
    def from_settings(cls, settings: Settings, **client_kwargs: Any) -> AzureSearchIndex:
        """From AZURE_SEARCH_ENDPOINT, AZURE_SEARCH_INDEX and AZURE_SEARCH_KEY (else Entra ID) in `settings`."""
        endpoint = required(
            settings.azure_search_endpoint,
            "AZURE_SEARCH_ENDPOINT",
            "the Azure AI Search endpoint, https://<service>.search.windows.net",
        )
        index = required(
            settings.azure_search_index,
            "AZURE_SEARCH_INDEX",
            "the name of the Azure AI Search index for the approved content",
        )
        _search_sdk()
        return cls(endpoint, index, credential(settings.azure_search_key, "AZURE_SEARCH_KEY"), **client_kwargs)

    @classmethod
    def from_env(cls, **client_kwargs: Any) -> AzureSearchIndex:
        """`from_settings` with the environment and `.env` as they are now."""
        return cls.from_settings(Settings(), **client_kwargs)

    def __repr__(self) -> str:
        return f"AzureSearchIndex(endpoint={self.endpoint!r}, index={self.index!r})"

    def build(self, snippets: list[Snippet]) -> None:
        """Create or update the index, upload the snippets, then delete documents no snippet has any more."""
        from azure.core.exceptions import AzureError
        from azure.search.documents.indexes.models import SearchableField, SearchIndex, SimpleField

        definition = SearchIndex(
            name=self.index,
            fields=[
                SimpleField(name="id", type="Edm.String", key=True, sortable=True),
                SearchableField(name="title"),
                SearchableField(name="section"),
                SearchableField(name="text"),
                SimpleField(name="audience", type="Collection(Edm.String)", filterable=True),
            ],
        )
        documents = [
            {"id": s.id, "title": s.title, "section": s.section, "text": s.text, "audience": list(s.audience)}
            for s in snippets
        ]
        doing = f"building index {self.index!r}"
        try:
            self._indexes.create_or_update_index(definition)
            for start in range(0, len(documents), UPLOAD_BATCH):
                self._check(self._client.merge_or_upload_documents(documents[start : start + UPLOAD_BATCH]), doing)
            wanted = {s.id for s in snippets}
            stale = [{"id": key} for key in self._all_ids() if key not in wanted]
            for start in range(0, len(stale), UPLOAD_BATCH):
                self._check(self._client.delete_documents(stale[start : start + UPLOAD_BATCH]), doing)
        except AzureError as exc:
            raise self._error(exc, doing) from None

    def search(self, query: str, *, audience: str | None, top: int) -> list[ContentHit]:
        """The best `top` snippets for `query` meant for everyone or for `audience`; none for a blank query."""
        from azure.core.exceptions import AzureError

        text = plain_query(query)
        if not text or top <= 0:
            return []
        try:
            results = self._client.search(
                search_text=text,
                filter=audience_filter(audience),
                top=min(top, PAGE),
                select=["id", "title", "section", "audience"],
            )
            return [
                ContentHit(
                    id=str(r["id"]),
                    title=str(r.get("title") or ""),
                    section=str(r.get("section") or ""),
                    audience=[str(a) for a in r.get("audience") or []],
                    score=float(r["@search.score"]),
                )
                for r in results
            ]
        except AzureError as exc:
            raise self._error(exc, f"searching index {self.index!r}") from None

    def _all_ids(self) -> list[str]:
        """Every document key in the index, a page at a time."""
        ids: list[str] = []
        while True:
            page = [
                str(r["id"])
                for r in self._client.search(
                    search_text="*", select=["id"], order_by=["id asc"], top=PAGE, skip=len(ids)
                )
            ]
            ids += page
            if len(page) < PAGE:
                return ids

    def _check(self, results: Iterable[Any], doing: str) -> None:
        failed = [r for r in results if not r.succeeded]
        if failed:
            first = failed[0]
            detail = clean_line(str(first.error_message or f"status {first.status_code}"), self._secret)
            raise SearchUnavailable(
                f"Azure AI Search at {self.host}: {len(failed)} document(s) failed while {doing}; "
                f"first {first.key!r}: {detail}"
            )

    def _error(self, exc: Exception, doing: str) -> CpoError:
        """One line for an SDK error: refused credentials are configuration, the rest unavailability."""
        refused, line = describe_azure_error(
            exc,
            f"Azure AI Search at {self.host}",
            self._secret,
            "check AZURE_SEARCH_KEY, or the signed-in identity's Search roles",
            doing,
        )
        return ConfigError(line) if refused else SearchUnavailable(line)
