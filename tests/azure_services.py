"""Loopback emulators of the two Azure REST services cpo's production backends call.

`SearchEmulator` speaks the Azure AI Search data-plane calls that `azure-search-documents` makes:

- `PUT /indexes('<name>')?api-version=...` (create or update an index; `/indexes/<name>` is accepted too),
- `POST /indexes('<name>')/docs/search.index?api-version=...` (upload, merge, mergeOrUpload, delete),
- `POST /indexes('<name>')/docs/search.post.search?api-version=...` (a search with `search`, `filter`,
  `top`, `skip`, `select`, `orderby`).

Scoring is not BM25: a document's score is how often the query's words occur in its searchable fields
(case-insensitive), ties broken by key; `*` matches everything with score 1. The only filters understood
are the shapes cpo sends, `<field>/any(a: a eq '<v>' [or a eq '<v>' ...])` (quotes doubled inside literals);
anything else is answered 400 like the service's "Invalid expression".

`ContentSafetyEmulator` speaks Azure AI Content Safety's `POST /contentsafety/text:analyze?api-version=...`:
each category's severity is the highest one scripted for a trigger word found in the text.

Both check the key header (`api-key`, `Ocp-Apim-Subscription-Key`) and answer with the service's error
JSON when it is wrong, record every request in `requests`, and can be told to fail (`fail_status`) or
to hang (`delay`). Standard library only.
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from azure_server import LoopbackServer, _Handler

# Azure AI Search answers a wrong admin/query key with 403 and this message (and 401 when none is sent).
SEARCH_KEY_REJECTED: dict[str, Any] = {
    "error": {"code": "", "message": "The given API key doesn't match service's internal, primary or secondary keys."}
}
SEARCH_API_VERSION_MISSING: dict[str, Any] = {
    "error": {"code": "", "message": "The api-version query parameter (?api-version=) is required for all requests."}
}
# Azure AI services (Content Safety included) answer a wrong subscription key with 401 and this.
COGNITIVE_KEY_REJECTED: dict[str, Any] = {
    "error": {
        "code": "401",
        "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a "
        "valid key for an active subscription and use a correct regional API endpoint for your resource.",
    }
}
RESOURCE_NOT_FOUND: dict[str, Any] = {"error": {"code": "404", "message": "Resource not found"}}
INTERNAL_ERROR: dict[str, Any] = {
    "error": {"code": "InternalServerError", "message": "An internal error occurred. Please retry later."}
}

SAFETY_CATEGORIES = ("Hate", "SelfHarm", "Sexual", "Violence")
SAFETY_MAX_TEXT = 10_000
_WORD = re.compile(r"\w+")


@dataclass
class Recorded:
    """One request as it arrived: method, decoded path, query parameters, lower-cased headers, JSON body."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


class _Emulator(LoopbackServer):
    """An Azure service on loopback: records every request, answers with `_answer`."""

    thread_name = "azure-service-emulator"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, api_key: str = "test-key") -> None:
        super().__init__(host, port)
        self.api_key = api_key
        self.requests: list[Recorded] = []
        # When set, every request that passes authentication is answered with this status.
        self.fail_status: int | None = None
        # Seconds to wait before answering (a hang, when longer than the client's read timeout).
        self.delay = 0.0

    def _handle(self, handler: _Handler) -> None:
        """Called by the shared handler (`azure_server._Handler`) for every request."""
        try:
            raw = handler.read_body()
        except (ConnectionError, OSError, ValueError):
            handler.close_connection = True
            return
        url = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        headers = {k.lower(): v for k, v in handler.headers.items()}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        request = Recorded(handler.command, unquote(url.path), query, headers, body)
        with self._lock:
            self.requests.append(request)
        status, reply = self._answer(request)
        if self.delay and self._stopping.wait(self.delay):
            handler.close_connection = True  # stopped while hanging: hang up without an answer
            return
        self._send(handler, status, reply)

    def _answer(self, request: Recorded) -> tuple[int, Any]:
        raise NotImplementedError

    def _send(self, handler: _Handler, status: int, body: Any) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        try:
            handler.send_response(status)
            if body is not None:
                handler.send_header("content-type", "application/json; charset=utf-8")
            handler.send_header("content-length", str(len(data)))
            handler.send_header("x-ms-request-id", "00000000-0000-0000-0000-000000000000")
            handler.end_headers()
            handler.wfile.write(data)
            handler.wfile.flush()
        except (ConnectionError, OSError):
            handler.close_connection = True


# ---------------------------------------------------------------------------------------------------------
# Azure AI Search


def _search_error(message: str) -> dict[str, Any]:
    return {"error": {"code": "", "message": message}}


_INDEX_PATH = re.compile(r"^/indexes(?:\('(?P<quoted>(?:[^']|'')*)'\)|/(?P<plain>[^/()]+))(?P<rest>/.*)?$")
_ANY_FILTER = re.compile(r"^\s*(?P<field>\w+)/any\(\s*(?P<var>\w+)\s*:\s*(?P<body>.*)\)\s*$", re.S)
_EQ_TERM = re.compile(r"\s*(?P<var>\w+)\s+eq\s+'(?P<value>(?:[^']|'')*)'\s*", re.S)


def parse_any_filter(expression: str) -> tuple[str, set[str]]:
    """`audience/any(a: a eq 'all' or a eq 'Gold')` -> ("audience", {"all", "Gold"}); ValueError otherwise."""
    match = _ANY_FILTER.match(expression)
    if match is None:
        raise ValueError(f"Invalid expression: only '<field>/any(a: a eq ...)' is emulated, got {expression!r}")
    var, body, values = match["var"], match["body"], set()
    position = 0
    while True:
        term = _EQ_TERM.match(body, position)
        if term is None or term["var"] != var:
            raise ValueError(f"Invalid expression: cannot parse {body[position:]!r} in {expression!r}")
        values.add(term["value"].replace("''", "'"))
        position = term.end()
        if position == len(body):
            return match["field"], values
        joiner = re.compile(r"or\s+").match(body, position)
        if joiner is None:
            raise ValueError(f"Invalid expression: expected 'or' at {body[position:]!r} in {expression!r}")
        position = joiner.end()


def _as_list(value: Any) -> list[str]:
    """`select`/`orderby` arrive as a comma-separated string (the REST form) or, from some SDKs, a list."""
    if value is None:
        return []
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(item).strip() for item in items if str(item).strip()]


class SearchEmulator(_Emulator):
    """An Azure AI Search service on loopback: indexes, documents and a word-count ranking.

    `indexes` maps an index name to its definition as PUT; `documents` maps it to {key: document}.
    `auth_status` is what a wrong `api-key` gets (the service answers 403; 401 when none is sent).
    `reject_keys` makes indexing of those document keys fail (a 207 with per-document errors).
    """

    thread_name = "azure-search-emulator"
    service_name = "emulated-search"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, api_key: str = "test-search-key") -> None:
        super().__init__(host, port, api_key=api_key)
        self.indexes: dict[str, dict[str, Any]] = {}
        self.documents: dict[str, dict[str, dict[str, Any]]] = {}
        self.auth_status = 403
        self.reject_keys: set[str] = set()

    def searches(self) -> list[dict[str, Any]]:
        """The bodies of the search requests received, oldest first."""
        return [r.body for r in self.requests if r.path.endswith("/docs/search.post.search")]

    def _answer(self, request: Recorded) -> tuple[int, Any]:
        key = request.headers.get("api-key")
        bearer = request.headers.get("authorization", "").startswith("Bearer ")
        if key is None and not bearer:
            return 401, SEARCH_KEY_REJECTED
        if key is not None and key != self.api_key:
            return self.auth_status, SEARCH_KEY_REJECTED
        if not request.query.get("api-version"):
            return 400, SEARCH_API_VERSION_MISSING
        if self.fail_status is not None:
            return self.fail_status, INTERNAL_ERROR if self.fail_status >= 500 else _search_error("Failed.")
        match = _INDEX_PATH.match(request.path)
        if match is None:
            return 404, RESOURCE_NOT_FOUND
        name = match["plain"] if match["plain"] is not None else match["quoted"].replace("''", "'")
        route = (request.method, match["rest"] or "")
        with self._lock:
            if route == ("PUT", ""):
                return self._put_index(name, request.body)
            if route == ("GET", ""):
                if name not in self.indexes:
                    return 404, self._no_index(name)
                return 200, self.indexes[name]
            if name not in self.indexes:
                return 404, self._no_index(name)
            if route in (("POST", "/docs/search.index"), ("POST", "/docs/index")):
                return self._index_documents(name, request.body)
            if route in (("POST", "/docs/search.post.search"), ("POST", "/docs/search")):
                return self._search(name, request.body)
        return 404, RESOURCE_NOT_FOUND

    def _no_index(self, name: str) -> dict[str, Any]:
        return _search_error(f"The index '{name}' for service '{self.service_name}' was not found.")

    def _put_index(self, name: str, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("fields"), list):
            return 400, _search_error("The request is invalid. Details: index : The index definition is missing.")
        if body.get("name") != name:
            return 400, _search_error("The index name in the request URI and the request body must match.")
        keys = [f for f in body["fields"] if isinstance(f, dict) and f.get("key")]
        if len(keys) != 1 or keys[0].get("type") != "Edm.String":
            return 400, _search_error("The request is invalid. Details: index : exactly one Edm.String key field.")
        created = name not in self.indexes
        definition = {
            "@odata.context": f"{self.endpoint}/$metadata#indexes/$entity",
            "@odata.etag": f'"0x8DD{len(self.requests):012X}"',
            **body,
        }
        self.indexes[name] = definition
        self.documents.setdefault(name, {})
        return (201 if created else 200), definition

    def _fields(self, name: str) -> dict[str, dict[str, Any]]:
        return {f["name"]: f for f in self.indexes[name]["fields"] if isinstance(f, dict) and "name" in f}

    def _key_field(self, name: str) -> str:
        return next(n for n, f in self._fields(name).items() if f.get("key"))

    def _index_documents(self, name: str, body: Any) -> tuple[int, Any]:
        actions = body.get("value") if isinstance(body, dict) else None
        if not isinstance(actions, list) or not actions:
            return 400, _search_error("The request is invalid. Details: actions : No indexing actions found.")
        fields, key_field, store = self._fields(name), self._key_field(name), self.documents[name]
        for action in actions:
            unknown = sorted(set(action) - set(fields) - {"@search.action"})
            if unknown:
                message = f"The property '{unknown[0]}' does not exist on type 'search.documentFields'."
                return 400, _search_error(f"The request is invalid. Details: {message}")
        results = []
        for action in actions:
            kind = action.get("@search.action", "upload")
            key = action.get(key_field)
            document = {k: v for k, v in action.items() if k != "@search.action"}
            status, error = 200, None
            if not isinstance(key, str) or not key:
                status, error = 400, f"Document key field '{key_field}' is missing."
            elif key in self.reject_keys:
                status, error = 400, f"Document '{key}' was rejected by the emulator."
            elif kind == "delete":
                store.pop(key, None)
            elif kind == "upload":
                status = 200 if key in store else 201
                store[key] = document
            elif kind in ("merge", "mergeOrUpload"):
                if key in store:
                    store[key] = {**store[key], **document}
                elif kind == "merge":
                    status, error = 404, f"Document not found: '{key}'."
                else:
                    status = 201
                    store[key] = document
            else:
                return 400, _search_error(f"The request is invalid. Details: unknown action '{kind}'.")
            results.append({"key": key, "status": error is None, "errorMessage": error, "statusCode": status})
        return (200 if all(r["status"] for r in results) else 207), {"value": results}

    def _search(self, name: str, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            return 400, _search_error("The request is invalid. Details: parameters : The parameter is missing.")
        fields = self._fields(name)
        documents = list(self.documents[name].values())
        expression = body.get("filter")
        if expression:
            try:
                field_name, allowed = parse_any_filter(str(expression))
            except ValueError as exc:
                return 400, _search_error(str(exc))
            spec = fields.get(field_name)
            if spec is None or not spec.get("filterable"):
                return 400, _search_error(f"Invalid expression: '{field_name}' is not a filterable field.")
            documents = [d for d in documents if set(d.get(field_name) or []) & allowed]
        text = str(body.get("search") or "*").strip()
        searchable = [n for n, f in fields.items() if f.get("searchable")]
        scored: list[tuple[float, dict[str, Any]]] = []
        if text == "*":
            scored = [(1.0, d) for d in documents]
        else:
            terms = [t.lower() for t in _WORD.findall(text)]
            for document in documents:
                words = [w.lower() for n in searchable for w in _WORD.findall(str(document.get(n) or ""))]
                score = float(sum(words.count(term) for term in terms))
                if score > 0:
                    scored.append((score, document))
        key_field = self._key_field(name)
        order = _as_list(body.get("orderby"))
        if order:
            for clause in reversed(order):
                field_name, _, direction = clause.partition(" ")
                if field_name not in fields:
                    return 400, _search_error(f"Invalid expression: unknown field '{field_name}' in $orderby.")
                scored.sort(key=lambda item, f=field_name: str(item[1].get(f)), reverse=direction.strip() == "desc")
        else:
            scored.sort(key=lambda item: (-item[0], str(item[1].get(key_field))))
        skip = int(body.get("skip") or 0)
        top = int(body.get("top") if body.get("top") is not None else 50)
        select = _as_list(body.get("select"))
        page = []
        for score, document in scored[skip : skip + top]:
            shown = {k: v for k, v in document.items() if not select or k in select}
            page.append({"@search.score": score, **shown})
        reply: dict[str, Any] = {"@odata.context": f"{self.endpoint}/indexes('{name}')/$metadata#docs(*)"}
        if body.get("count"):
            reply["@odata.count"] = len(scored)
        reply["value"] = page
        return 200, reply


# ---------------------------------------------------------------------------------------------------------
# Azure AI Content Safety


class ContentSafetyEmulator(_Emulator):
    """Azure AI Content Safety's text:analyze on loopback.

    `triggers` maps a word (matched case-insensitively as a whole word) to the severities it causes,
    e.g. {"brawl": {"Violence": 4}}; a category's severity is the highest over the triggers found, else 0.
    With `outputType` FourSeverityLevels the severity is rounded down to 0, 2, 4 or 6 as the service does.
    """

    thread_name = "azure-content-safety-emulator"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_key: str = "test-safety-key",
        triggers: dict[str, dict[str, int]] | None = None,
    ) -> None:
        super().__init__(host, port, api_key=api_key)
        self.triggers: dict[str, dict[str, int]] = dict(triggers or {})

    def texts(self) -> list[str]:
        """The texts analyzed, oldest first."""
        return [r.body["text"] for r in self.requests if isinstance(r.body, dict) and "text" in r.body]

    def _answer(self, request: Recorded) -> tuple[int, Any]:
        key = request.headers.get("ocp-apim-subscription-key")
        bearer = request.headers.get("authorization", "").startswith("Bearer ")
        if key != self.api_key and not (key is None and bearer):
            return 401, COGNITIVE_KEY_REJECTED
        if request.method != "POST" or request.path != "/contentsafety/text:analyze":
            return 404, RESOURCE_NOT_FOUND
        if not request.query.get("api-version"):
            return 404, RESOURCE_NOT_FOUND
        if self.fail_status is not None:
            return self.fail_status, INTERNAL_ERROR
        body = request.body
        if not isinstance(body, dict) or not isinstance(body.get("text"), str) or not body["text"]:
            return 400, _invalid("The text field is required and must not be empty.")
        text = body["text"]
        if len(text) > SAFETY_MAX_TEXT:
            return 400, _invalid(f"The text exceeds the maximum length of {SAFETY_MAX_TEXT} characters.")
        categories = body.get("categories") or list(SAFETY_CATEGORIES)
        unknown = [c for c in categories if c not in SAFETY_CATEGORIES]
        if unknown:
            return 400, _invalid(f"Invalid category: {unknown[0]}.")
        output_type = body.get("outputType", "FourSeverityLevels")
        if output_type not in ("FourSeverityLevels", "EightSeverityLevels"):
            return 400, _invalid(f"Invalid outputType: {output_type}.")
        words = {w.lower() for w in _WORD.findall(text)}
        analysis = []
        for category in categories:
            severity = max(
                (levels.get(category, 0) for word, levels in self.triggers.items() if word.lower() in words),
                default=0,
            )
            if output_type == "FourSeverityLevels":
                severity = severity // 2 * 2
            analysis.append({"category": category, "severity": severity})
        return 200, {"blocklistsMatch": [], "categoriesAnalysis": analysis}


def _invalid(message: str) -> dict[str, Any]:
    return {"error": {"code": "InvalidRequestBody", "message": message, "details": [], "innererror": None}}


def closed_port_endpoint() -> str:
    """An http:// endpoint on loopback where nothing listens (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
