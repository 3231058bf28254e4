"""Azure AI Search as cpo's content index (the `azure-search-documents` SDK, an optional extra).

`AzureSearchIndex.build` creates or updates the index (key `id`; searchable `title`, `section`, `text`;
filterable `audience`, a Collection(Edm.String)), uploads every snippet (mergeOrUpload) and then deletes
documents whose ids are no longer among the snippets, so the index holds exactly the approved content.
`search` sends the query with an OData audience filter: `audience/any(a: a eq 'all')` for general content,
`audience/any(a: a eq 'all' or a eq 'Gold')` for a tier.

Errors are one line naming the service's host, never the key: refused credentials are a `ConfigError`
(exit 2), anything else the service or the network did is `SearchUnavailable` (exit 1).

The SDK is imported when an index is constructed, not when this module is, so `import cpo` never needs it.
The helpers for reading settings and describing Azure SDK errors are shared with `cpo.agents.azure_safety`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cpo.agents.content_index import ContentHit
from cpo.errors import ConfigError, CpoError
from cpo.models import Snippet

if TYPE_CHECKING:
    from azure.core.credentials import AzureKeyCredential, TokenCredential
    from azure.search.documents import SearchClient
    from azure.search.documents.indexes import SearchIndexClient

SERVICES_HINT = "pip install 'cpo[azure-services]'"
ENTRA_HINT = "pip install 'cpo[azure]'"
# Production defaults for the SDK's pipeline: a few retries and bounded waits instead of the SDK's
# 10 retries and 300 s timeouts. Anything passed as `**client_kwargs` wins.
DEFAULT_CLIENT_KWARGS: dict[str, Any] = {"retry_total": 3, "connection_timeout": 10.0, "read_timeout": 60.0}
UPLOAD_BATCH = 1000  # the service's limit of documents per indexing request
PAGE = 1000  # the service's largest `top`
_INDEX_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,126}[a-z0-9])?$")
# Characters the simple query syntax reads as operators; the analyzer splits words on them anyway.
_QUERY_OPERATORS = re.compile(r"""[+\-&|!(){}\[\]^"~*?:\\/]""")


class SearchUnavailable(CpoError):
    """Azure AI Search could not be reached or did not do what was asked (not a credentials problem)."""

    exit_code = 1


# --- shared Azure plumbing (also used by cpo.agents.azure_safety) -----------------------------------------


def required_env(name: str, what: str) -> str:
    """A setting that must be present; its absence is one line naming the variable."""
    value = os.environ.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is not set: {what}")
    return value


def endpoint_host(endpoint: str, variable: str) -> str:
    """The host of an http(s) endpoint, or a ConfigError naming the variable it should come from."""
    parts = urlsplit(endpoint.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{variable} must be an https:// URL, got {endpoint.strip()!r}")
    return parts.hostname


def entra_credential(key_variable: str) -> TokenCredential:
    """Keyless sign-in (Entra ID) through azure-identity's DefaultAzureCredential, an optional extra."""
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise ConfigError(
            f"{key_variable} is not set; set it, or install azure-identity for Entra ID sign-in ({ENTRA_HINT})"
        ) from None
    credential: TokenCredential = DefaultAzureCredential()
    return credential


def env_credential(key_variable: str) -> AzureKeyCredential | TokenCredential:
    """An AzureKeyCredential from `key_variable` when it is set, else Entra ID."""
    from azure.core.credentials import AzureKeyCredential

    key = os.environ.get(key_variable, "").strip()
    return AzureKeyCredential(key) if key else entra_credential(key_variable)


def one_line(text: str, secret: str | None = None, limit: int = 300) -> str:
    """Collapse whitespace, drop a secret if it slipped in, and cap the length."""
    if secret:
        text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def transport_reason(exc: BaseException) -> str:
    """Why a request got no HTTP answer, in a few words (connection refused, host not found, timed out)."""
    text = str(exc)
    chain: list[BaseException] = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)
    inner = getattr(exc, "inner_exception", None)
    if isinstance(inner, BaseException):
        chain.append(inner)
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "Connection refused" in text:
        return "connection refused"
    if "Name or service not known" in text or "getaddrinfo" in text or "nodename nor servname" in text:
        return "host name not found"
    if any(isinstance(e, TimeoutError) for e in chain) or "timed out" in text.lower():
        return "timed out"
    if "Bearer token authentication is not permitted for non-TLS" in text:
        return "Entra ID sign-in needs an https:// endpoint"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first


def http_message(exc: Any) -> str:
    """The service's own error message from an HttpResponseError, else its reason phrase."""
    error = getattr(exc, "error", None)
    message = getattr(error, "message", None) if error is not None else None
    if isinstance(message, str) and message.strip():
        return message
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else type(exc).__name__


# --- the index ---------------------------------------------------------------------------------------------


def describe_azure_error(
    exc: Exception, where: str, secret: str | None, credentials_hint: str, doing: str = ""
) -> tuple[bool, str]:
    """(the credentials were refused?, one line) for an Azure SDK error; the key never appears in it."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

    status = getattr(exc, "status_code", None)
    during = f" while {doing}" if doing else ""
    if isinstance(exc, HttpResponseError) and status in (401, 403):
        detail = one_line(http_message(exc), secret, 160)
        return True, f"{where} refused the credentials (HTTP {status}: {detail}){during}: {credentials_hint}"
    if isinstance(exc, ClientAuthenticationError):  # azure-identity could not get a token
        detail = one_line(str(exc).strip().splitlines()[0] if str(exc).strip() else "", secret, 160)
        return True, f"{where}: Entra ID sign-in failed{during}: {detail}"
    if isinstance(exc, HttpResponseError) and status is not None:
        return False, f"{where} answered HTTP {status}{during}: {one_line(http_message(exc), secret, 200)}"
    if isinstance(exc, ServiceRequestError):
        return False, f"{where} is unreachable{during}: {transport_reason(exc)}"
    return False, f"{where} did not answer{during}: {one_line(transport_reason(exc), secret)}"


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
    def from_env(cls, **client_kwargs: Any) -> AzureSearchIndex:
        """From AZURE_SEARCH_ENDPOINT, AZURE_SEARCH_INDEX and AZURE_SEARCH_KEY (else Entra ID)."""
        endpoint = required_env(
            "AZURE_SEARCH_ENDPOINT", "the Azure AI Search endpoint, https://<service>.search.windows.net"
        )
        index = required_env("AZURE_SEARCH_INDEX", "the name of the Azure AI Search index for the approved content")
        endpoint_host(endpoint, "AZURE_SEARCH_ENDPOINT")
        _search_sdk()
        return cls(endpoint, index, env_credential("AZURE_SEARCH_KEY"), **client_kwargs)

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
            detail = one_line(str(first.error_message or f"status {first.status_code}"), self._secret)
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
