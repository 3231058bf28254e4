"""A loopback HTTP server that speaks the Azure OpenAI chat-completions protocol.

The real `openai` SDK and `langchain_openai` talk to it unmodified, so tests exercise the
real retry, timeout, parsing and usage code paths: recording VCR cassettes, live timeout
tests (a timeout cannot be recorded) and latency-bound benchmarks. Standard library only,
plus cpo's offline tiktoken encodings so usage numbers look like Azure's.

Run standalone with `python tests/azure_server.py --port 8765 --latency 0.3`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import select
import socket
import socketserver
import struct
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_MODEL = "gpt-4o-mini-2024-07-18"
CREATED = 1764000000
REGION = "Sweden Central"

_SAFE = {"filtered": False, "severity": "safe"}
_CATEGORIES = ("hate", "self_harm", "sexual", "violence")

AUTH_ERROR_BODY: dict[str, Any] = {
    "error": {
        "code": "401",
        "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
        "provide a valid key for an active subscription and use a correct regional API endpoint for "
        "your resource.",
    }
}
RESOURCE_NOT_FOUND_BODY: dict[str, Any] = {"error": {"code": "404", "message": "Resource not found"}}
DEPLOYMENT_NOT_FOUND_BODY: dict[str, Any] = {
    "error": {
        "code": "DeploymentNotFound",
        "message": "The API deployment for this resource does not exist. If you created the deployment "
        "within the last 5 minutes, please wait a moment and try again.",
    }
}
BAD_REQUEST_BODY: dict[str, Any] = {"error": {"code": "BadRequest", "message": "Invalid request"}}
# What llama.cpp's server answers (HTTP 500) to a `json_schema` response_format it does not support.
JSON_SCHEMA_UNSUPPORTED_BODY: dict[str, Any] = {
    "error": {
        "code": 500,
        "message": 'response_format type must be one of "text" or "json_object", but got: json_schema',
        "type": "server_error",
    }
}
PROMPT_FILTERED_BODY: dict[str, Any] = {
    "error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content "
        "management policy. Please modify your prompt and retry. To learn more about our content "
        "filtering policies please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766",
        "type": None,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
        "innererror": {
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": {
                "hate": {"filtered": False, "severity": "safe"},
                "self_harm": {"filtered": False, "severity": "safe"},
                "sexual": {"filtered": False, "severity": "safe"},
                "violence": {"filtered": True, "severity": "medium"},
            },
        },
    }
}

_DEFAULT_ERROR_BODIES: dict[int, dict[str, Any]] = {
    400: BAD_REQUEST_BODY,
    401: AUTH_ERROR_BODY,
    403: {"error": {"code": "403", "message": "Public access is disabled. Please configure private endpoint."}},
    404: RESOURCE_NOT_FOUND_BODY,
    408: {"error": {"code": "Timeout", "message": "The operation was timeout."}},
    500: {
        "error": {
            "code": "InternalServerError",
            "message": "The server had an error while processing your request. Sorry about that!",
        }
    },
    502: {"error": {"code": "BadGateway", "message": "Bad gateway."}},
    503: {
        "error": {
            "code": "ServiceUnavailable",
            "message": "The service is temporarily unable to process your request. Please try again later.",
        }
    },
    504: {"error": {"code": "GatewayTimeout", "message": "The operation was timeout."}},
}


def _count(text: str) -> int:
    """Tokens as Azure counts them for gpt-4o-mini (o200k_base), with cpo's offline encoding files."""
    from cpo.net.tokens import count_text_tokens

    return count_text_tokens(text, "gpt-4o-mini")


def _filter_results(violence_high: bool = False) -> dict[str, Any]:
    """Azure's per-category content-filter annotation; all safe unless a filter fired."""
    results: dict[str, Any] = {name: dict(_SAFE) for name in _CATEGORIES}
    if violence_high:
        results["violence"] = {"filtered": True, "severity": "high"}
    return results


def _prompt_filter_results() -> list[dict[str, Any]]:
    """Azure attaches this to every successful completion and to the first stream chunk."""
    return [{"prompt_index": 0, "content_filter_results": _filter_results()}]


class Quota:
    """A deployment's quota as Azure enforces it, scaled down for tests: at most `requests` requests and
    `tokens` tokens (prompt + max_tokens, counted on arrival) in any `window_s` seconds. A request over it gets
    a 429 with `retry-after-ms` (when the oldest counted request leaves the window) and is not billed; every
    answer carries `x-ratelimit-remaining-requests` / `-tokens`."""

    def __init__(self, requests: int | None = None, tokens: int | None = None, window_s: float = 60.0) -> None:
        self.requests, self.tokens, self.window_s = requests, tokens, window_s
        self.counted: deque[tuple[float, int]] = deque()
        self.throttled = 0
        self.admitted = 0

    def admit(self, cost: int, now: float) -> tuple[int | None, dict[str, str]]:
        """(None or the ms to wait, the remaining-quota headers); the caller holds the server's lock."""
        while self.counted and self.counted[0][0] <= now - self.window_s:
            self.counted.popleft()
        used_requests, used_tokens = len(self.counted), sum(c for _, c in self.counted)
        over = (self.requests is not None and used_requests + 1 > self.requests) or (
            self.tokens is not None and used_tokens + cost > self.tokens
        )
        if over:
            self.throttled += 1
            oldest = self.counted[0][0] if self.counted else now
            wait_ms = max(1, math.ceil((oldest + self.window_s - now) * 1000))
        else:
            self.counted.append((now, cost))
            self.admitted += 1
            used_requests, used_tokens, wait_ms = used_requests + 1, used_tokens + cost, None
        headers = {}
        if self.requests is not None:
            headers["x-ratelimit-remaining-requests"] = str(max(0, self.requests - used_requests))
        if self.tokens is not None:
            headers["x-ratelimit-remaining-tokens"] = str(max(0, self.tokens - used_tokens))
        return wait_ms, headers


@dataclass(frozen=True)
class Reply:
    """One queued answer: status 200 is a completion built from the request, anything else an error."""

    status: int = 200
    content: str | None = None
    tool_args: dict[str, Any] | str | None = None
    finish_reason: str = "stop"
    model: str = DEFAULT_MODEL
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    trickle: float = 0.0
    trickle_headers: bool = False
    omit_usage: bool = False
    omit_model: bool = False
    reset: bool = False


def ok(
    content: str | None = None,
    *,
    tool_args: dict[str, Any] | str | None = None,
    finish_reason: str = "stop",
    model: str = DEFAULT_MODEL,
    cached_tokens: int = 0,
    reasoning_tokens: int = 0,
    completion_tokens: int | None = None,
    prompt_tokens: int | None = None,
    delay: float = 0.0,
    trickle: float = 0.0,
    trickle_headers: bool = False,
    omit_usage: bool = False,
    omit_model: bool = False,
) -> Reply:
    """A successful completion; unset token counts are computed from the request like Azure does.

    `trickle` sends the response one byte every `trickle` seconds (the headers too with
    `trickle_headers`); `omit_usage` / `omit_model` leave out the usage block / the model name,
    as some OpenAI-compatible servers do.
    """
    return Reply(
        content=content,
        tool_args=tool_args,
        finish_reason=finish_reason,
        model=model,
        cached_tokens=cached_tokens,
        reasoning_tokens=reasoning_tokens,
        completion_tokens=completion_tokens,
        prompt_tokens=prompt_tokens,
        delay=delay,
        trickle=trickle,
        trickle_headers=trickle_headers,
        omit_usage=omit_usage,
        omit_model=omit_model,
    )


def trickling(interval: float = 0.05, *, headers: bool = False) -> Reply:
    """A valid answer sent one byte every `interval` seconds: each read is quick, the whole is slow."""
    return ok(trickle=interval, trickle_headers=headers)


def error(
    status: int,
    body: dict[str, Any] | None = None,
    *,
    headers: dict[str, str] | None = None,
    delay: float = 0.0,
) -> Reply:
    """An error reply; without a body, Azure's usual body for that status."""
    if body is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        body = _DEFAULT_ERROR_BODIES.get(status, {"error": {"code": str(status), "message": phrase}})
    return Reply(status=status, body=body, headers=dict(headers or {}), delay=delay)


def _retry_headers(retry_after_ms: int) -> dict[str, str]:
    """Azure sends both; the openai SDK prefers `retry-after-ms`."""
    return {
        "retry-after-ms": str(retry_after_ms),
        "retry-after": str(max(1, math.ceil(retry_after_ms / 1000))),
    }


def rate_limited(retry_after_ms: int = 10) -> Reply:
    """Azure's token-rate-limit 429, with the retry hints the SDK honours."""
    seconds = max(1, math.ceil(retry_after_ms / 1000))
    message = (
        "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have "
        "exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after "
        f"{seconds} second{'' if seconds == 1 else 's'}. Please go here: https://aka.ms/oai/quotaincrease "
        "if you would like to further increase the default rate limit."
    )
    return error(429, {"error": {"code": "429", "message": message}}, headers=_retry_headers(retry_after_ms))


def server_error(status: int = 503, retry_after_ms: int | None = 10) -> Reply:
    """A retryable 5xx; the short retry hint keeps SDK retries fast in tests."""
    headers = _retry_headers(retry_after_ms) if retry_after_ms is not None else None
    return error(status, headers=headers)


def hang(seconds: float) -> Reply:
    """Answer only after `seconds`, so the client's timeout fires first."""
    return ok(delay=seconds)


def connection_reset(answer: Reply | None = None) -> Reply:
    """Read the request, then drop the connection with a TCP reset instead of answering: the client cannot know
    whether the model ran (with `bill_abandoned`, the server bills `answer` as generated)."""
    return dataclasses.replace(answer or ok(), reset=True)


def _text_of(content: Any) -> str:
    """Message content as plain text: a string, or the text parts of a content-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    return ""


def prompt_tokens_of(request: dict[str, Any]) -> int:
    """Prompt tokens the way OpenAI's cookbook counts them, plus tools and the json_schema."""
    total = 3
    for message in request.get("messages") or []:
        if not isinstance(message, dict):
            continue
        total += 3 + _count(_text_of(message.get("content")))
        name = message.get("name")
        if isinstance(name, str) and name:
            total += _count(name) + 1
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                total += _count(str(function.get("name") or "")) + _count(str(function.get("arguments") or ""))
    tools = request.get("tools")
    if tools:
        total += _count(json.dumps(tools))
    response_format = request.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema", spec) if isinstance(spec, dict) else spec
        total += _count(json.dumps(schema))
    return total


def _last_user_text(request: dict[str, Any]) -> str:
    """Text of the last user message; the default reply echoes it."""
    for message in reversed(request.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _default_text(request: dict[str, Any]) -> str:
    """What the server says when nobody scripted a content: a connection check or an echo."""
    text = _last_user_text(request)
    if "Connection successful" in text:
        return "Connection successful"
    return "Echo: " + text[:200]


def _forced_tool(tools: list[dict[str, Any]], tool_choice: Any) -> str:
    """The function the model must call: the one `tool_choice` names, else the first tool."""
    if isinstance(tool_choice, dict):
        function = tool_choice.get("function")
        if isinstance(function, dict) and function.get("name"):
            return str(function["name"])
    for tool in tools:
        function = tool.get("function")
        if isinstance(function, dict) and function.get("name"):
            return str(function["name"])
    return "tool"


def _args_json(tool_args: dict[str, Any] | str) -> str:
    """Tool arguments travel as a JSON string; a string is taken as already encoded."""
    return tool_args if isinstance(tool_args, str) else json.dumps(tool_args)


@dataclass
class _Completion:
    """A built answer before it is serialised as JSON or as SSE chunks."""

    completion_id: str
    model: str
    finish_reason: str
    content: str | None
    tool_call: dict[str, Any] | None
    usage: dict[str, Any]


def _build_completion(request: dict[str, Any], reply: Reply, prompt_tokens: int, completion_id: str) -> _Completion:
    """Apply the tool, response_format, truncation and content-filter rules to one request."""
    finish = reply.finish_reason
    tools = [t for t in request.get("tools") or [] if isinstance(t, dict)]
    tool_choice = request.get("tool_choice")
    forced = tool_choice == "required" or isinstance(tool_choice, dict)
    use_tools = bool(tools) and tool_choice != "none"
    if use_tools and reply.content is not None and reply.tool_args is None and not forced:
        use_tools = False
    content: str | None = None
    tool_call: dict[str, Any] | None = None
    counted = ""
    if use_tools:
        if finish != "content_filter":
            arguments = _args_json(reply.tool_args) if reply.tool_args is not None else "{}"
            if finish == "length":
                arguments = arguments[: len(arguments) // 2]
            else:
                finish = "tool_calls"
            call_id = "call_" + hashlib.sha256((completion_id + ":call").encode()).hexdigest()[:24]
            tool_call = {
                "id": call_id,
                "type": "function",
                "function": {"name": _forced_tool(tools, tool_choice), "arguments": arguments},
            }
            counted = arguments
    else:
        if reply.content is not None:
            content = reply.content
        elif reply.tool_args is not None:
            content = _args_json(reply.tool_args)
        elif finish == "content_filter":
            content = ""
        else:
            content = _default_text(request)
        if finish == "length":
            content = content[: len(content) // 2]
        counted = content
    if reply.completion_tokens is not None:
        completion_tokens = reply.completion_tokens
    else:
        limit = request.get("max_completion_tokens") or request.get("max_tokens")
        if finish == "length" and isinstance(limit, int):
            completion_tokens = limit
        else:
            completion_tokens = _count(counted) + reply.reasoning_tokens
    prompt = reply.prompt_tokens if reply.prompt_tokens is not None else prompt_tokens
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": min(reply.cached_tokens, prompt), "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reply.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    return _Completion(completion_id, reply.model, finish, content, tool_call, usage)


def _completion_body(done: _Completion) -> dict[str, Any]:
    """The non-streaming `chat.completion` object in Azure's shape."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": done.content,
        "refusal": None,
        "annotations": [],
    }
    if done.tool_call is not None:
        message["tool_calls"] = [done.tool_call]
    return {
        "id": done.completion_id,
        "object": "chat.completion",
        "created": CREATED,
        "model": done.model,
        "system_fingerprint": "fp_test",
        "prompt_filter_results": _prompt_filter_results(),
        "choices": [
            {
                "index": 0,
                "finish_reason": done.finish_reason,
                "logprobs": None,
                "message": message,
                "content_filter_results": _filter_results(done.finish_reason == "content_filter"),
            }
        ],
        "usage": done.usage,
    }


def _pieces(text: str) -> list[str]:
    """Split a text into up to three stream deltas."""
    if not text:
        return []
    if len(text) < 3:
        return [text]
    step = math.ceil(len(text) / 3)
    return [text[i : i + step] for i in range(0, len(text), step)]


def _stream_chunks(done: _Completion, include_usage: bool) -> list[dict[str, Any]]:
    """The SSE chunk sequence Azure sends: prompt filter, role, deltas, finish, optional usage."""
    first = {
        "choices": [],
        "created": 0,
        "id": "",
        "model": "",
        "object": "",
        "prompt_filter_results": _prompt_filter_results(),
    }
    base: dict[str, Any] = {
        "id": done.completion_id,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": done.model,
        "system_fingerprint": "fp_test",
    }
    if include_usage:
        base["usage"] = None

    def chunk(delta: dict[str, Any], finish: str | None = None, filters: bool = False) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        if filters:
            choice["content_filter_results"] = _filter_results(finish == "content_filter")
        return {**base, "choices": [choice]}

    chunks = [first]
    if done.tool_call is not None:
        call = done.tool_call
        head = {
            "index": 0,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""},
        }
        chunks.append(chunk({"role": "assistant", "content": None, "tool_calls": [head]}))
        for piece in _pieces(call["function"]["arguments"]):
            chunks.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}, filters=True))
    else:
        chunks.append(chunk({"role": "assistant", "content": "", "refusal": None}))
        for piece in _pieces(done.content or ""):
            chunks.append(chunk({"content": piece}, filters=True))
    chunks.append(chunk({}, done.finish_reason, filters=True))
    if include_usage:
        chunks.append({**base, "choices": [], "usage": done.usage})
    return chunks


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that never blocks on close and skips the reverse-DNS lookup in bind."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128
    allow_reuse_address = True
    owner: LoopbackServer

    def server_bind(self) -> None:
        """Bind without `socket.getfqdn`, which can stall for seconds on a machine without DNS."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that time out and hang up are expected; stay quiet about them."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)) or self.owner._stopping.is_set():
            return
        super().handle_error(request, client_address)


class _IPv6Server(_Server):
    """Same server on an IPv6 literal such as ::1."""

    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    """Routes one connection's requests to its AzureTestServer; HTTP/1.1 keep-alive throughout."""

    protocol_version = "HTTP/1.1"
    # Headers and body are separate writes; with Nagle on, the body waits ~40 ms for a delayed ACK.
    disable_nagle_algorithm = True
    server_version = "AzureTestServer/1.0"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.owner._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line; benchmarks send thousands."""

    def do_POST(self) -> None:
        self.server.owner._handle(self)

    def do_GET(self) -> None:
        self.server.owner._handle(self)

    def do_PUT(self) -> None:
        self.server.owner._handle(self)

    def do_DELETE(self) -> None:
        self.server.owner._handle(self)

    def read_body(self) -> bytes:
        """Read the whole request body so the connection can be reused."""
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length > 0 else b""


class LoopbackServer:
    """A ThreadingHTTPServer on a loopback address (a free port unless one is given), serving from a daemon
    thread; every request goes to `_handle`. Shared by the Azure OpenAI test server and the Azure service
    emulators (`azure_services.py`)."""

    thread_name = "loopback-server"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.endpoint = ""
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Any:
        """Bind and serve in a daemon thread; `endpoint` is valid afterwards."""
        if self._httpd is not None:
            raise RuntimeError(f"{type(self).__name__} is already running")
        self._stopping = threading.Event()
        server_class = _IPv6Server if ":" in self.host else _Server
        httpd = server_class((self.host, self.port), _Handler)
        httpd.owner = self
        self._httpd = httpd
        port = httpd.server_address[1]
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.endpoint = f"http://{shown}:{port}"
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=self.thread_name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake hanging handlers and drop kept-alive connections."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _handle(self, handler: _Handler) -> None:
        raise NotImplementedError


class AzureTestServer(LoopbackServer):
    """The fake Azure OpenAI resource: scripted replies first, then per-deployment scenarios.

    `requests` gets every parsed body as it arrives. `billed` gets one entry per answer, appended
    before the response is written so a client that has its result can already see it; a request
    whose client hung up while the server waited (a timeout) is not answered and so not billed.
    Scenario attempts are counted only when no scripted reply was queued.

    `responder`, when given, is called with the parsed request JSON whenever no scripted reply is
    queued for the deployment; a Reply it returns is used (latency still applies), None falls
    through to the scenario behaviour. It runs on the handler thread, so it must be thread-safe.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        latency: float = 0.0,
        api_key: str = "test-key",
        responder: Callable[[dict[str, Any]], Reply | None] | None = None,
    ) -> None:
        super().__init__(host, port)
        self.latency = latency
        self.api_key = api_key
        self.responder = responder
        self.billed: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self._queues: dict[str, deque[Reply]] = {}
        self._attempts: dict[tuple[str, str], int] = {}
        self._counter = 0
        self.in_flight = 0
        self.max_in_flight = 0
        # Answer one request at a time, as llama-cpp-python's server does (the others wait in line).
        self.serial = False
        self._serial = threading.Lock()
        self.quota: Quota | None = None  # set to enforce a deployment's requests and tokens per window
        self.bill_abandoned = False  # bill answers the client hung up on or that a reset cut off (`abandoned`)

    thread_name = "azure-test-server"

    def start(self) -> AzureTestServer:
        started: AzureTestServer = super().start()
        return started

    def __enter__(self) -> AzureTestServer:
        return self.start()

    def script(self, deployment: str, *replies: Reply) -> None:
        """Queue replies (FIFO) for a deployment, or for a model name on the /v1 route."""
        with self._lock:
            self._queues.setdefault(deployment, deque()).extend(replies)

    def reset(self) -> None:
        """Forget queued replies, records and scenario counters; list objects stay the same."""
        with self._lock:
            self._queues.clear()
            self._attempts.clear()
            self.billed.clear()
            self.requests.clear()

    def _scenario(self, deployment: str, body_key: str, prompt_tokens: int) -> Reply:
        """The built-in behaviour of the special deployment names; attempts count per distinct body."""
        with self._lock:
            attempt = self._attempts.get((deployment, body_key), 0) + 1
            self._attempts[(deployment, body_key)] = attempt
        if deployment == "rate-limited":
            return rate_limited(10) if attempt == 1 else ok()
        if deployment == "flaky-503":
            return server_error(503, 10) if attempt <= 2 else ok()
        if deployment == "always-503":
            return server_error(503, 10)
        if deployment == "slow":
            return hang(30)
        if deployment == "truncated":
            return ok(finish_reason="length")
        if deployment == "content-filtered":
            return ok("", finish_reason="content_filter")
        if deployment == "prompt-filtered":
            return error(400, PROMPT_FILTERED_BODY)
        if deployment == "unauthorized":
            return error(401, AUTH_ERROR_BODY)
        if deployment == "not-found":
            return error(404, DEPLOYMENT_NOT_FOUND_BODY)
        if deployment == "bad-request":
            return error(400, BAD_REQUEST_BODY)
        if deployment == "unknown-model":
            return ok(model="mystery-model-2031-01-01")
        if deployment == "cached":
            return ok(cached_tokens=prompt_tokens // 2)
        if deployment == "reasoning":
            return ok(model="o3-mini-2025-01-31", reasoning_tokens=7)
        return ok()

    def _next_reply(
        self, deployment: str, body_key: str, prompt_tokens: int, request: dict[str, Any] | None = None
    ) -> Reply:
        with self._lock:
            queue = self._queues.get(deployment)
            if queue:
                return queue.popleft()
        if self.responder is not None and request is not None:
            reply = self.responder(request)
            if reply is not None:
                return reply
        return self._scenario(deployment, body_key, prompt_tokens)

    def _wait(self, handler: _Handler, seconds: float) -> bool:
        """Sleep before answering; False if the client hung up or the server is stopping."""
        deadline = time.monotonic() + seconds
        sock = handler.connection
        watch = True
        while True:
            if self._stopping.is_set():
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            step = min(remaining, 0.05)
            if not watch:
                self._stopping.wait(step)
                continue
            try:
                readable = select.select([sock], [], [], step)[0]
                if readable and sock.recv(1, socket.MSG_PEEK) == b"":
                    return False
            except (OSError, ValueError):
                return False
            if readable:
                watch = False

    def _bill(
        self,
        deployment: str | None,
        status: int,
        model: str | None,
        usage: dict[str, Any] | None,
        *,
        abandoned: bool = False,
    ) -> dict[str, Any]:
        """Record what Azure would charge for this answer (nothing for errors); returns the entry."""
        usage = usage or {}
        entry = {
            "deployment": deployment,
            "status": status,
            "prompt_tokens": usage.get("prompt_tokens", 0),
            "completion_tokens": usage.get("completion_tokens", 0),
            "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
            "reasoning_tokens": (usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0),
            "model": model,
        }
        if abandoned:
            entry["abandoned"] = True
        with self._lock:
            self.billed.append(entry)
        return entry

    def _common_headers(self, deployment: str | None) -> dict[str, str]:
        return {
            "apim-request-id": str(uuid.uuid4()),
            "x-request-id": str(uuid.uuid4()),
            "x-ms-region": REGION,
            "azureml-model-deployment": deployment or "",
            "x-ratelimit-remaining-requests": "99",
            "x-ratelimit-remaining-tokens": "99000",
        }

    def _send(self, handler: _Handler, status: int, body: bytes, headers: dict[str, str]) -> None:
        """Write one complete response with Content-Length; a vanished client is not an error."""
        try:
            handler.send_response(status)
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.send_header("content-length", str(len(body)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(body)
            handler.wfile.flush()
        except (ConnectionError, OSError):
            handler.close_connection = True

    def _send_error(self, handler: _Handler, deployment: str | None, reply: Reply) -> None:
        self._bill(deployment, reply.status, None, None)
        headers = {"content-type": "application/json", **self._common_headers(deployment), **reply.headers}
        self._send(handler, reply.status, json.dumps(reply.body or {}).encode(), headers)

    def _send_stream(self, handler: _Handler, deployment: str, chunks: list[dict[str, Any]]) -> None:
        """Send SSE events with chunked transfer encoding so each event reaches the client as written."""
        headers = {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            **self._common_headers(deployment),
            "transfer-encoding": "chunked",
        }
        events = [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]
        try:
            handler.send_response(200)
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            for event in events:
                handler.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
            handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()
        except (ConnectionError, OSError):
            handler.close_connection = True

    def _handle(self, handler: _Handler) -> None:
        """Route, authenticate, pick a reply, wait, then answer one request."""
        try:
            raw = handler.read_body()
        except (ConnectionError, OSError, ValueError):
            handler.close_connection = True
            return
        url = urlsplit(handler.path)
        segments = [unquote(s) for s in url.path.strip("/").split("/")]
        is_azure = (
            len(segments) == 5 and segments[:2] == ["openai", "deployments"] and segments[3:] == ["chat", "completions"]
        )
        is_v1 = segments == ["v1", "chat", "completions"]
        if handler.command != "POST" or not (is_azure or is_v1):
            if self._wait(handler, self.latency):
                self._send_error(handler, None, error(404, RESOURCE_NOT_FOUND_BODY))
            else:
                handler.close_connection = True
            return
        headers = {k.lower(): v for k, v in handler.headers.items()}
        try:
            request = json.loads(raw or b"null")
        except ValueError:
            request = None
        model_field = str(request.get("model") or "") if isinstance(request, dict) else ""
        deployment = segments[2] if is_azure else model_field
        with self._lock:
            self._counter += 1
            counter = self._counter
            if isinstance(request, dict):
                self.requests.append(
                    {**request, "_deployment": deployment, "_headers": headers, "_received_at": time.perf_counter()}
                )
        reply: Reply | None = None
        if is_azure:
            key = headers.get("api-key")
            bearer = (headers.get("authorization") or "").startswith("Bearer ")
            if key != self.api_key and not bearer:
                reply = error(401, AUTH_ERROR_BODY)
            elif not parse_qs(url.query).get("api-version"):
                reply = error(404, RESOURCE_NOT_FOUND_BODY)
        if reply is None and not isinstance(request, dict):
            reply = error(400, {"error": {"code": "BadRequest", "message": "Request body is not a JSON object."}})
        prompt_tokens = 0
        if reply is None:
            assert isinstance(request, dict)
            prompt_tokens = prompt_tokens_of(request)
            quota_headers: dict[str, str] = {}
            if self.quota is not None:
                answer = request.get("max_completion_tokens") or request.get("max_tokens") or 0
                with self._lock:
                    wait_ms, quota_headers = self.quota.admit(prompt_tokens + int(answer), time.monotonic())
                if wait_ms is not None:
                    reply = rate_limited(wait_ms)
            if reply is None:
                body_key = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
                reply = self._next_reply(deployment, body_key, prompt_tokens, request)
            reply = dataclasses.replace(reply, headers={**reply.headers, **quota_headers})
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            with self._serial if self.serial else contextlib.nullcontext():
                self._answer(handler, deployment, reply, request, raw, counter, prompt_tokens)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _answer(
        self,
        handler: _Handler,
        deployment: str,
        reply: Reply,
        request: Any,
        raw: bytes,
        counter: int,
        prompt_tokens: int,
    ) -> None:
        answered = self._wait(handler, self.latency + reply.delay)
        if not answered or reply.reset:
            if reply.status == 200 and self.bill_abandoned and not self._stopping.is_set():
                assert isinstance(request, dict)
                done = _build_completion(request, reply, prompt_tokens, "chatcmpl-abandoned")
                self._bill(deployment, 200, done.model, done.usage, abandoned=True)
            if answered:
                _reset(handler)
            handler.close_connection = True
            return
        if reply.status != 200:
            self._send_error(handler, deployment, reply)
            return
        assert isinstance(request, dict)
        digest = hashlib.sha256(raw + str(counter).encode()).hexdigest()
        done = _build_completion(request, reply, prompt_tokens, "chatcmpl-" + digest[:29])
        entry = self._bill(deployment, 200, done.model, done.usage)
        if request.get("stream"):
            include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
            self._send_stream(handler, deployment, _stream_chunks(done, include_usage))
            return
        completion = _completion_body(done)
        if reply.omit_usage:
            completion.pop("usage")
        if reply.omit_model:
            completion.pop("model")
        body = json.dumps(completion).encode()
        headers_out = {
            "content-type": "application/json",
            **self._common_headers(deployment),
            **reply.headers,
        }
        if reply.trickle:
            self._send_trickle(handler, body, headers_out, reply, entry)
            return
        self._send(handler, 200, body, headers_out)

    def _send_trickle(
        self, handler: _Handler, body: bytes, headers: dict[str, str], reply: Reply, entry: dict[str, Any]
    ) -> None:
        """Write the response a byte at a time: per-read timeouts never fire, only a wall-clock bound can."""
        head = "HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head += f"content-length: {len(body)}\r\n\r\n"
        data = head.encode() + body
        start = 0 if reply.trickle_headers else len(head.encode())
        try:
            handler.wfile.write(data[:start])
            handler.wfile.flush()
            for i in range(start, len(data)):
                if self._stopping.is_set():
                    break
                handler.wfile.write(data[i : i + 1])
                handler.wfile.flush()
                time.sleep(reply.trickle)
        except (ConnectionError, OSError):
            if self.bill_abandoned:  # the client gave up on an answer already billed
                with self._lock:
                    entry["abandoned"] = True
        handler.close_connection = True


def _reset(handler: _Handler) -> None:
    """Drop the connection with a TCP RST (SO_LINGER 0), as a load balancer or a crashed backend does."""
    with contextlib.suppress(OSError):
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.connection.close()


def email_drafter(request: dict[str, Any]) -> Reply | None:
    """A responder that answers cpo's email prompts like a well-behaved model: a valid JSON draft from
    cpo's offline drafter. Other requests fall through (None)."""
    from langchain_core.messages import convert_to_messages

    from cpo.llm.offline import draft_email, read_brief

    brief = read_brief(convert_to_messages(request.get("messages") or []))
    return None if brief is None else ok(tool_args=draft_email(brief))


FLAWED_SUBJECT_TAIL = " and this subject goes on far too long for any inbox"
SUBJECT_FIX_MARK = "This email subject breaks these rules:"


def flawed_drafter(request: dict[str, Any]) -> Reply | None:
    """Like `email_drafter`, but every first draft's subject is too long, so each email needs a repair call:
    the subject fix is answered with three short subjects."""
    from langchain_core.messages import convert_to_messages

    from cpo.llm.offline import draft_email, read_brief

    messages = request.get("messages") or []
    if any(SUBJECT_FIX_MARK in _text_of(m.get("content")) for m in messages):
        return ok("1. Your Northwind Plus upgrade\n2. A plan for how you order\n3. Northwind Plus, made for you")
    brief = read_brief(convert_to_messages(messages))
    if brief is None:
        return None
    draft = draft_email(brief)
    return ok(tool_args={**draft, "subject": draft["subject"] + FLAWED_SUBJECT_TAIL})


def main(argv: list[str] | None = None) -> None:
    """Serve in the foreground for manual runs and benchmarks until Ctrl-C."""
    parser = argparse.ArgumentParser(description="Loopback Azure OpenAI chat-completions test server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds slept before every answer")
    parser.add_argument("--api-key", default="test-key")
    parser.add_argument("--draft-emails", action="store_true", help="answer cpo email prompts with valid drafts")
    args = parser.parse_args(argv)
    responder = email_drafter if args.draft_emails else None
    server = AzureTestServer(args.host, args.port, latency=args.latency, api_key=args.api_key, responder=responder)
    server.start()
    print(f"Azure test server listening on {server.endpoint} (api key {args.api_key!r})", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
