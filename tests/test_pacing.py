"""Quota-aware pacing (`cpo.net.pacing`): requests and tokens per window budgeted before each request is sent,
corrected by the server's remaining-quota headers and its 429s.

The planner is checked on a fake clock; the promise itself against the project's loopback test server with a
scaled-down quota (a few requests per second instead of per minute; `CPO_QUOTA_WINDOW` shortens the window),
live, since waits cannot be recorded in a cassette.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import openai
import pytest
from azure_server import Quota
from conftest import azure_settings

from cpo import build_chat_model
from cpo.net import pacing
from cpo.net.pacing import QuotaPacer, QuotaWaitTooLong, request_tokens


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_requests_are_spaced_so_that_no_window_holds_more_than_95_percent() -> None:
    clock = Clock()
    pacer = QuotaPacer(rpm=60, window_s=60, clock=clock)  # three at once (a twentieth), then 54 a minute
    step = 60 / (0.95 * 60 - 3)  # burst + rate x window = 95% of the quota
    waits = [pacer.plan(0) for _ in range(7)]
    assert waits[:3] == [0.0] * 3
    assert waits[3:] == pytest.approx([step, 2 * step, 3 * step, 4 * step])
    clock.now += 4 * step  # the four reserved places are used up as time passes: the next is one step out
    assert pacer.plan(0) == pytest.approx(step)


def test_tokens_are_budgeted_as_prompt_plus_max_tokens() -> None:
    clock = Clock()
    pacer = QuotaPacer(tpm=6000, window_s=60, clock=clock)  # 300 at once, then 90 a second
    assert pacer.plan(300) == 0.0
    assert pacer.plan(600) == pytest.approx(600 / 90)  # a request larger than the bucket waits for all of it
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 200}'
    assert request_tokens(body) == 7 + 200  # "hello" is one token, plus the message and reply overheads
    assert request_tokens(b"not json") == 0


def test_the_servers_remaining_counts_and_its_429s_correct_the_plan() -> None:
    clock = Clock()
    pacer = QuotaPacer(rpm=60, tpm=60_000, window_s=60, clock=clock)
    pacer.observe({"x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "50000"})
    assert pacer.plan(0) == pytest.approx(60 / 54)  # the server counted more than cpo did: wait for a refill
    pacer.hold(5.0)
    assert pacer.plan(0) >= 5.0 and pacer.held == 1
    assert pacer.pace == pytest.approx(0.8)  # nothing answered in the window: a fifth less
    clock.now += 3 * 60
    pacer.answered(100)
    assert pacer.pace == pytest.approx(0.8)  # within five windows of a 429: no recovery
    clock.now += 7 * 60  # five windows of cooldown, then five of the ten recovery takes: half way, log scale
    pacer.answered(100)
    assert pacer.pace == pytest.approx(0.8)  # the server's last count said the window was used up: none yet
    pacer.observe({"x-ratelimit-remaining-requests": "40", "x-ratelimit-remaining-tokens": "50000"})
    clock.now += 0.001
    pacer.answered(100)
    assert pacer.pace == pytest.approx(0.8**0.5, rel=1e-3)
    clock.now += 20 * 60
    pacer.answered(100)
    assert pacer.pace == pytest.approx(1.0)
    pacer.observe({"x-ratelimit-remaining-requests": "many"})  # unreadable: ignored, not an error


def test_a_429_lowers_the_quota_to_what_the_server_answered_in_the_window() -> None:
    clock = Clock()
    pacer = QuotaPacer(rpm=600, window_s=60, clock=clock)  # configured ten times too high
    for _ in range(60):
        pacer.plan(0)
        pacer.answered()
        clock.now += 0.5
    pacer.hold(1.0)
    assert pacer.pace == pytest.approx(0.1)  # 60 answered in the last minute: believed 60, not 600


def test_a_wait_past_the_deadline_is_refused_and_reserves_nothing() -> None:
    clock = Clock()
    pacer = QuotaPacer(rpm=6, window_s=60, clock=clock)  # one at once, then 4.7 a minute
    step = 60 / (0.95 * 6 - 1)
    assert pacer.plan(0) == 0.0
    with pytest.raises(QuotaWaitTooLong):
        pacer.plan(0, deadline=clock.now + 5)
    assert pacer.plan(0) == pytest.approx(step)  # the refused request took no place


def test_recovery_does_not_compound_answer_by_answer() -> None:
    clock = Clock()
    pacer = QuotaPacer(rpm=600, window_s=60, clock=clock)
    pacer.hold(1.0)  # nothing answered yet: a fifth less
    clock.now += 5 * 60  # the cooldown
    for _ in range(100):  # a hundred answers over one window: a tenth of a time constant, not all of it
        clock.now += 0.6
        pacer.answered()
    assert pacer.pace == pytest.approx(0.8 ** math.exp(-0.1), rel=1e-3)


def test_requests_queued_in_a_hold_are_spaced_after_it_and_a_cancelled_wait_gives_its_place_back() -> None:
    clock = Clock()
    pacer = QuotaPacer(rpm=600, window_s=60, clock=clock)
    pacer.hold(30.0)
    waits = [pacer.plan(0) for _ in range(3)]
    step = 60 / (0.95 * 480 - 24)  # the quota believed after the hold: a fifth less
    assert waits == pytest.approx([30 + step, 30 + 2 * step, 30 + 3 * step])
    pacer.release(0)  # the last caller was cancelled: the next one takes its place
    assert pacer.plan(0) == pytest.approx(30 + 3 * step)


def test_a_request_larger_than_the_token_quota_is_refused_unsent_with_its_reason() -> None:
    from cpo.net.faults import is_transient, one_line

    pacer = QuotaPacer(tpm=1000, window_s=60, clock=Clock())
    with pytest.raises(QuotaWaitTooLong, match=r"needs 1,200 tokens .*CPO_TPM=1,000") as caught:
        pacer.plan(1200)
    wrapped = openai.APITimeoutError(request=httpx_request())
    wrapped.__cause__ = caught.value
    assert not is_transient(wrapped) and one_line(wrapped).startswith("this request needs 1,200 tokens")


def httpx_request() -> Any:
    import httpx2

    return httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")


def test_odd_remaining_headers_cannot_stall_the_pacer() -> None:
    clock = Clock()
    pacer = QuotaPacer(rpm=60, window_s=60, clock=clock)
    pacer.observe({"x-ratelimit-remaining-requests": "-1e300"})
    assert pacer.plan(0) < 2.0
    pacer.observe({"x-ratelimit-remaining-requests": "-inf"})
    assert pacer.plan(0) < 4.0


def test_a_quota_needs_requests_or_tokens() -> None:
    with pytest.raises(ValueError, match="needs requests or tokens"):
        QuotaPacer()


@pytest.mark.live_server
@pytest.mark.timeout(60)
async def test_paced_calls_meet_a_quota_limited_server_without_429s_near_the_ideal_time(live_server: Any) -> None:
    """40 calls in flight against a server allowing 20 requests in any 2 s: paced, they take close to the evenly
    spaced ideal and draw (almost) no 429s."""
    live_server.quota = Quota(requests=20, window_s=2.0)
    model = build_chat_model(azure_settings(live_server.endpoint, rpm=20, quota_window=2.0, timeout=5))
    heard: list[bool] = []
    stop = pacing.listen(heard.append)
    try:
        started = time.perf_counter()
        answers = await asyncio.gather(*(model.ainvoke(f"hello {i}") for i in range(40)))
        elapsed = time.perf_counter() - started
    finally:
        stop()
    assert len(answers) == 40 and all(a.content for a in answers)
    ideal = 40 / 10  # the quota, evenly: ten a second
    print(f"\n40 calls at 10/s: {elapsed:.2f} s (ideal {ideal:.2f} s), 429s: {live_server.quota.throttled}")
    assert live_server.quota.throttled <= 3  # "a handful": arrival times jitter against a strict window
    assert ideal * 0.9 <= elapsed <= ideal * 1.15
    assert heard[0] is True and heard[-1] is False  # the progress line was told it waited, then that it stopped


@pytest.mark.live_server
@pytest.mark.timeout(60)
def test_without_pacing_the_same_calls_collect_429s(live_server: Any) -> None:
    """The baseline the pacer exists for: the quota is real, and firing at it fails calls."""
    live_server.quota = Quota(requests=5, window_s=1.0)
    model = build_chat_model(azure_settings(live_server.endpoint, timeout=5, max_retries=0))

    async def fire() -> list[Any]:
        return await asyncio.gather(*(model.ainvoke(f"hello {i}") for i in range(20)), return_exceptions=True)

    results = asyncio.run(fire())
    failed = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(failed) == 15 and live_server.quota.throttled == 15


@pytest.mark.live_server
@pytest.mark.timeout(60)
async def test_a_quota_set_too_high_is_corrected_by_the_servers_429s_and_headers(live_server: Any) -> None:
    """cpo told 30 a second, the server allows 5: its remaining counts and retry-after-ms bring the calls into
    line, so every call succeeds within its retries."""
    live_server.quota = Quota(requests=5, window_s=1.0)
    model = build_chat_model(azure_settings(live_server.endpoint, rpm=30, quota_window=1.0, timeout=5))
    answers = await asyncio.gather(*(model.ainvoke(f"hello {i}") for i in range(15)))
    assert len(answers) == 15 and live_server.quota.admitted == 15
    first = live_server.quota.throttled
    assert 5 <= first <= 12  # the first burst was fired at the wrong rate; the 429s slowed the pace
    answers = await asyncio.gather(*(model.ainvoke(f"again {i}") for i in range(15)))
    assert len(answers) == 15 and live_server.quota.admitted == 30
    print(f"\nquota set 6x too high: {first} 429s, then {live_server.quota.throttled - first} for 15 more calls")
    assert live_server.quota.throttled - first <= 3  # learnt: the next 15 calls keep to the real quota


@pytest.mark.live_server
@pytest.mark.timeout(90)
def test_cpo_run_under_a_quota_ends_with_every_email_and_a_handful_of_429s_at_most(
    live_server: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case, scaled down: the sample campaign's 20 emails against a deployment allowing 10 requests
    a second, with CPO_RPM=10 and a one-second window. Before pacing this ended in 429s, spent retries and
    failed emails."""
    from azure_server import email_drafter
    from conftest import TEST_KEY

    from cpo.cli import main

    live_server.quota = Quota(requests=10, window_s=1.0)
    live_server.responder = email_drafter
    for name, value in {
        "AZURE_OPENAI_ENDPOINT": live_server.endpoint,
        "AZURE_OPENAI_DEPLOYMENT_NAME": "gpt-4o-mini",
        "AZURE_OPENAI_API_KEY": TEST_KEY,
        "CPO_RPM": "10",
        "CPO_QUOTA_WINDOW": "1",
    }.items():
        monkeypatch.setenv(name, value)
    started = time.perf_counter()
    assert main(["run", "--concurrency", "16"]) == 0
    elapsed = time.perf_counter() - started
    out, _ = capsys.readouterr()
    assert "valid: 20 of 20" in out
    print(f"\ncpo run, 20 emails at 10 requests/s: {elapsed:.1f} s, 429s: {live_server.quota.throttled}")
    answered = [b for b in live_server.billed if b["status"] == 200]
    assert live_server.quota.throttled <= 3 and live_server.quota.admitted == len(answered) == 20


def test_room_for_several_requests_at_once_is_reported_without_reserving() -> None:
    """For timing a server (`cpo check`): when could n requests all go at once? Never, past the burst."""
    clock = Clock()
    pacer = QuotaPacer(rpm=40, window_s=60, clock=clock)  # a burst of two, then 36 a minute
    assert pacer.room_in(2, 100) == 0.0 and pacer.room_in(3, 100) is None
    pacer.plan(0)
    pacer.plan(0)
    assert pacer.room_in(2, 100) == pytest.approx(2 / (36 / 60))
    assert pacer.room_in(2, 100) == pytest.approx(2 / (36 / 60))  # asking reserved nothing
    clock.now += 2 / (36 / 60)
    assert pacer.room_in(2, 100) == pytest.approx(0.0)
    assert QuotaPacer(rpm=20, window_s=60, clock=clock).room_in(2, 100) is None
    assert QuotaPacer(tpm=10_000, window_s=60, clock=clock).room_in(2, 1_000) is None  # 500 tokens at once
