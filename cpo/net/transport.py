"""HTTP clients whose every request ends within its timeout of wall time.

The openai SDK's `timeout` bounds each network read, not the request: a server that trickles a few
bytes at a time keeps a call alive for as long as it likes. cpo's transports wrap httpcore's network
backend so that every connect, TLS handshake, read and write gets only the time left before the
request's deadline: its start plus its timeout, or the deadline of the enclosing work (an email, see
`cpo.core.deadlines.deadline_scope`), whichever comes first. The same code bounds sync and async requests.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import AsyncIterator, Iterable, Iterator
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

import httpcore2
import httpx2

from cpo.core.deadlines import work_deadline
from cpo.net.hooks import wrap_network_backend
from cpo.net.pacing import QuotaPacer, request_tokens

# When the HTTP request being sent must end; set by the transports for the duration of a request.
_request_deadline: ContextVar[float | None] = ContextVar("cpo_request_deadline", default=None)

CONNECTION_LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=5.0)


def _bounded(timeout: float | None, exc: type[Exception]) -> float | None:
    """The timeout for one network operation: never past the current request's deadline."""
    deadline = _request_deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise exc("request deadline passed")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore2.NetworkStream):
    def __init__(self, inner: httpcore2.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, httpcore2.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, httpcore2.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, _bounded(timeout, httpcore2.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore2.NetworkBackend):
    def __init__(self, inner: httpcore2.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.NetworkStream:
        bounded = _bounded(timeout, httpcore2.ConnectTimeout)
        return _Stream(self._inner.connect_tcp(host, port, bounded, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore2.NetworkStream:
        bounded = _bounded(timeout, httpcore2.ConnectTimeout)
        return _Stream(self._inner.connect_unix_socket(path, bounded, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _AsyncStream(httpcore2.AsyncNetworkStream):
    def __init__(self, inner: httpcore2.AsyncNetworkStream) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, _bounded(timeout, httpcore2.ReadTimeout))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, _bounded(timeout, httpcore2.WriteTimeout))

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> Any:
        bounded = _bounded(timeout, httpcore2.ConnectTimeout)
        return _AsyncStream(await self._inner.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AsyncBackend(httpcore2.AsyncNetworkBackend):
    def __init__(self, inner: httpcore2.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        bounded = _bounded(timeout, httpcore2.ConnectTimeout)
        return _AsyncStream(await self._inner.connect_tcp(host, port, bounded, local_address, socket_options))

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore2.AsyncNetworkStream:
        bounded = _bounded(timeout, httpcore2.ConnectTimeout)
        return _AsyncStream(await self._inner.connect_unix_socket(path, bounded, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _deadline_for(request: httpx2.Request) -> float | None:
    """The request's own deadline (start + its longest timeout), capped by the enclosing work's."""
    timeouts = [float(t) for t in (request.extensions.get("timeout") or {}).values() if t is not None]
    own = time.monotonic() + max(timeouts) if timeouts else None
    outer = work_deadline()
    if own is None or outer is None:
        return own if outer is None else outer
    return min(own, outer)


class _DeadlineBody(httpx2.SyncByteStream):
    """The response body, read under the request's deadline (the SDK reads it after the transport returns)."""

    def __init__(self, inner: Any, deadline: float | None) -> None:
        self._inner, self._deadline = inner, deadline

    def __iter__(self) -> Iterator[bytes]:
        chunks = iter(self._inner)
        while True:
            token = _request_deadline.set(self._deadline)
            try:
                chunk = next(chunks)
            except StopIteration:
                return
            finally:
                _request_deadline.reset(token)
            yield chunk

    def close(self) -> None:
        self._inner.close()


class _AsyncDeadlineBody(httpx2.AsyncByteStream):
    def __init__(self, inner: Any, deadline: float | None) -> None:
        self._inner, self._deadline = inner, deadline

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._inner.__aiter__()
        while True:
            token = _request_deadline.set(self._deadline)
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            finally:
                _request_deadline.reset(token)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


def _paced(request: httpx2.Request) -> bool:
    return request.method == "POST" and request.url.path.endswith("/chat/completions")


def _heard(pacer: QuotaPacer, response: httpx2.Response, tokens: int, sent_at: float) -> None:
    """What the server said about the quota: its remaining counts, a 429's time to come back, or an answer."""
    from cpo.net.faults import retry_after_from

    pacer.observe(response.headers)
    if response.status_code == 429:
        pacer.hold(retry_after_from(response.headers) or 1.0, sent_at)
    else:
        pacer.answered(tokens, sent_at)


class BoundedTransport(httpx2.HTTPTransport):
    """httpx2's transport with every network operation bounded by the request's wall-clock deadline, and
    each chat request paced by the deployment's quota when one is set (`cpo.net.pacing`).

    httpx2 has no public hook for httpcore's network backend: `cpo.net.hooks.wrap_network_backend`.
    """

    def __init__(self, pacer: QuotaPacer | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("limits", CONNECTION_LIMITS)
        super().__init__(**kwargs)
        wrap_network_backend(self, _Backend)
        self.pacer = pacer

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        pacer = self.pacer if _paced(request) else None
        tokens = request_tokens(request.content) if pacer is not None else 0
        if pacer is not None:  # the wait for quota is not part of the request's own timeout
            pacer.acquire(tokens, work_deadline())
        sent_at = pacer.now() if pacer is not None else 0.0
        deadline = _deadline_for(request)
        token = _request_deadline.set(deadline)
        try:
            response = super().handle_request(request)
        finally:
            _request_deadline.reset(token)
        if pacer is not None:
            _heard(pacer, response, tokens, sent_at)
        response.stream = _DeadlineBody(response.stream, deadline)
        return response


class AsyncBoundedTransport(httpx2.AsyncHTTPTransport):
    """The async twin of `BoundedTransport`.

    Its connections belong to the event loop that opened them, so a new loop (a second
    `asyncio.run` in one script) gets a new pool instead of "Event loop is closed".
    """

    def __init__(self, pacer: QuotaPacer | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("limits", CONNECTION_LIMITS)
        self._settings = kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._new_pool()
        self.pacer = pacer

    def _new_pool(self) -> None:
        super().__init__(**self._settings)
        wrap_network_backend(self, _AsyncBackend)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:
                self._new_pool()  # the old pool's connections cannot be used (or closed) from this loop
            self._loop = loop
        pacer = self.pacer if _paced(request) else None
        tokens = request_tokens(request.content) if pacer is not None else 0
        if pacer is not None:
            await pacer.aacquire(tokens, work_deadline())
        sent_at = pacer.now() if pacer is not None else 0.0
        deadline = _deadline_for(request)
        token = _request_deadline.set(deadline)
        try:
            response = await super().handle_async_request(request)
        finally:
            _request_deadline.reset(token)
        if pacer is not None:
            _heard(pacer, response, tokens, sent_at)
        response.stream = _AsyncDeadlineBody(response.stream, deadline)
        return response


def env_proxy_for(url: str) -> str | None:
    """The proxy the environment (HTTPS_PROXY, NO_PROXY, ...) names for this URL, as httpx would use it.

    httpx ignores environment proxies once a transport is given, so cpo resolves them itself.
    """
    parts = urlsplit(url)
    if not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all")


def http_clients(base_url: str, pacer: QuotaPacer | None = None) -> tuple[httpx2.Client, httpx2.AsyncClient]:
    """A sync and an async client for one endpoint, with the openai SDK's defaults and bounded requests,
    both paced by one quota when `pacer` is given."""
    import openai

    proxy = env_proxy_for(base_url)
    return (
        openai.DefaultHttpxClient(transport=BoundedTransport(pacer, proxy=proxy)),
        openai.DefaultAsyncHttpxClient(transport=AsyncBoundedTransport(pacer, proxy=proxy)),
    )
