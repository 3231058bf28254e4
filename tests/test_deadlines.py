"""Wall-clock bounds: per attempt, per retry wait, per email. Live loopback server: time cannot be recorded."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import openai
import pytest
from azure_server import error, hang, ok, rate_limited, trickling
from conftest import azure_settings

from cpo import ContentBundle, CostTracker, DeadlineExceeded, build_chat_model, build_email_chain
from cpo.core.deadlines import deadline_scope
from cpo.net.transport import env_proxy_for

pytestmark = pytest.mark.live_server
BUNDLE = ContentBundle.load()


def test_a_trickling_server_cannot_stretch_an_attempt(live_server: Any) -> None:
    """The SDK's timeout bounds each read; a server sending a byte every 50 ms kept a call alive for 8.4 s."""
    live_server.script("gpt-4o-mini", trickling(0.05))
    model = build_chat_model(azure_settings(live_server.endpoint, timeout=0.5, max_retries=0))
    started = time.perf_counter()
    with pytest.raises(openai.APITimeoutError):
        model.invoke("hello")
    assert 0.45 <= time.perf_counter() - started < 0.9


def test_trickled_headers_are_bounded_too(live_server: Any) -> None:
    live_server.script("gpt-4o-mini", trickling(0.05, headers=True))
    model = build_chat_model(azure_settings(live_server.endpoint, timeout=0.5, max_retries=0))
    started = time.perf_counter()
    with pytest.raises(openai.APITimeoutError):
        model.invoke("hello")
    assert time.perf_counter() - started < 0.9


async def test_async_attempts_are_bounded_the_same_way(live_server: Any) -> None:
    live_server.script("gpt-4o-mini", trickling(0.05))
    model = build_chat_model(azure_settings(live_server.endpoint, timeout=0.5, max_retries=0))
    started = time.perf_counter()
    with pytest.raises(openai.APITimeoutError):
        await model.ainvoke("hello")
    assert time.perf_counter() - started < 0.9


def test_a_slow_but_steady_answer_within_the_timeout_succeeds(live_server: Any) -> None:
    """The bound is on the whole attempt, not a guess: a trickle that ends in time is a normal answer."""
    live_server.script("gpt-4o-mini", ok("Hi", trickle=0.0005))
    model = build_chat_model(azure_settings(live_server.endpoint, timeout=5, max_retries=0))
    assert model.invoke("hello").content == "Hi"


def test_retry_after_is_honoured_in_elapsed_time(live_server: Any) -> None:
    live_server.script("gpt-4o-mini", rate_limited(400), ok("done"))
    model = build_chat_model(azure_settings(live_server.endpoint, timeout=2))
    started = time.perf_counter()
    assert model.invoke("hello").content == "done"
    elapsed = time.perf_counter() - started
    arrivals = [r["_received_at"] for r in live_server.requests]
    assert len(arrivals) == 2
    assert arrivals[1] - arrivals[0] >= 0.4  # the server's retry-after-ms, not the 0.5 s default backoff guess
    assert elapsed < 1.5


def test_a_retry_after_longer_than_the_cap_ends_the_call_instead_of_retrying_early(live_server: Any) -> None:
    """The SDK would sleep up to 120 s; cpo gives up at once when the server asks for more than the cap."""
    live_server.script("gpt-4o-mini", rate_limited(60_000), ok("too early"))
    model = build_chat_model(azure_settings(live_server.endpoint, timeout=2, retry_max_wait=5))
    started = time.perf_counter()
    with pytest.raises(openai.RateLimitError) as caught:
        model.invoke("hello")
    assert time.perf_counter() - started < 0.5
    assert len(live_server.requests) == 1
    assert "more than CPO_RETRY_MAX_WAIT=5 s" in " ".join(caught.value.__notes__)


def test_waits_never_pass_the_enclosing_deadline(live_server: Any) -> None:
    live_server.script("gpt-4o-mini", rate_limited(1500), ok("too late"))
    model = build_chat_model(azure_settings(live_server.endpoint, timeout=2))
    started = time.perf_counter()
    with deadline_scope(1.0), pytest.raises(openai.RateLimitError) as caught:
        model.invoke("hello")
    assert time.perf_counter() - started < 0.5
    assert "no time left before the deadline" in " ".join(caught.value.__notes__)


def ended_by_the_deadline(exc: BaseException) -> bool:
    """The deadline passed during an attempt, or left no time for the next one (the last error, with a note)."""
    notes = " ".join(getattr(exc, "__notes__", []))
    return isinstance(exc, DeadlineExceeded) or "no time left before the deadline" in notes


def test_an_email_deadline_covers_all_attempts_and_repairs(live_server: Any) -> None:
    """4 attempts of 0.4 s would take 1.6 s plus backoff; the email's 1 s deadline ends it at 1 s.

    Which error ends it depends on timing: the deadline passing during the second attempt
    (DeadlineExceeded), or a retry wait that no longer fits (the timeout, noted so); both within 1.3 s.
    """
    live_server.script("gpt-4o-mini", *[hang(5) for _ in range(4)])
    settings = azure_settings(live_server.endpoint, timeout=0.4, max_retries=3, email_deadline=1.0)
    chain = build_email_chain(build_chat_model(settings), settings=settings)
    started = time.perf_counter()
    with pytest.raises(Exception) as caught:
        chain.invoke(BUNDLE.request("High-Value Recent", "urgent"))
    assert ended_by_the_deadline(caught.value), caught.value
    assert time.perf_counter() - started < 1.3


async def test_the_async_email_deadline_is_the_same(live_server: Any) -> None:
    live_server.script("gpt-4o-mini", *[hang(5) for _ in range(4)])
    settings = azure_settings(live_server.endpoint, timeout=0.4, max_retries=3, email_deadline=1.0)
    chain = build_email_chain(build_chat_model(settings), settings=settings)
    started = time.perf_counter()
    with pytest.raises(Exception) as caught:
        await chain.ainvoke(BUNDLE.request("High-Value Recent", "urgent"))
    assert ended_by_the_deadline(caught.value), caught.value
    assert time.perf_counter() - started < 1.3


def test_a_timed_out_attempt_is_a_call_of_unknown_cost(live_server: Any) -> None:
    """The server may have processed it; the known sum stays a number and the count says what is unknown."""
    live_server.script("gpt-4o-mini", hang(5), ok("second"))
    tracker = CostTracker(max_usd="1")
    model = build_chat_model(azure_settings(live_server.endpoint, timeout=0.3, max_retries=1, model_name="gpt-4o-mini"))
    model.invoke("hello", config={"callbacks": [tracker]})
    session = tracker.session
    assert (session.calls, session.failed_calls, session.unknown_cost_calls) == (2, 1, 1)
    assert session.cost_usd is not None and session.cost_usd > 0
    assert "1 call(s) of unknown cost" in session.cost_display
    assert tracker.budget is not None and tracker.budget.settled > session.cost_usd  # the reservation is kept


def test_environment_proxies_are_resolved_for_the_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx ignores proxy variables once a transport is given, so cpo resolves them itself."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    assert env_proxy_for("https://res.openai.azure.com") == "http://proxy.internal:3128"
    assert env_proxy_for("http://127.0.0.1:8765") is None


def test_a_client_error_is_not_retried_and_not_slowed(live_server: Any) -> None:
    live_server.script("gpt-4o-mini", error(400))
    model = build_chat_model(azure_settings(live_server.endpoint))
    started = time.perf_counter()
    with pytest.raises(openai.BadRequestError):
        asyncio.run(model.ainvoke("hello"))
    assert len(live_server.requests) == 1 and time.perf_counter() - started < 1
