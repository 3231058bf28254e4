"""`cpo run` against an endpoint answering with every fault Azure gives, mixed and seeded (`fault_injection`).

Over 500 requests: every email is produced or failed with its reason; what the server billed is what the ledger
tracked plus one call of unknown cost per answer the client abandoned (hangs, resets); no request is sent again
after an answer asking again cannot change; a run killed mid-way resumes without asking again for a kept email.
The same scenario at full size is `python benchmarks/fault_mix.py`. First, the server's faults themselves.
"""

from __future__ import annotations

import http.client
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from azure_server import AzureTestServer, connection_reset, email_drafter, hang, ok, trickling
from conftest import TEST_KEY
from fault_injection import FAULTS, KINDS, WEIGHTS, Campaign, FaultMix, fault_reply, figures, malformed, problems
from langchain_core.messages import AIMessage, convert_to_openai_messages

from cpo.email.content import ContentBundle
from cpo.email.prompts import PromptSet
from cpo.email.replies import read_draft
from cpo.email.validation import ValidationLimits

pytestmark = pytest.mark.live_server

SEED = 1
CUSTOMERS = 360  # 574 requests with seed 1
KILLED_CUSTOMERS = 150


def post(server: AzureTestServer, timeout: float, *, read_body: bool = True) -> bytes:
    """One chat request straight over HTTP, as a client that gives up after `timeout` seconds per read (or, without
    `read_body`, hangs up once the headers came)."""
    url = urlsplit(server.endpoint)
    conn = http.client.HTTPConnection(str(url.hostname), url.port, timeout=timeout)
    try:
        body = json.dumps({"messages": [{"role": "user", "content": "Say hello"}]})
        conn.request(
            "POST",
            "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21",
            body=body,
            headers={"api-key": TEST_KEY, "content-type": "application/json"},
        )
        response = conn.getresponse()
        if read_body:
            return response.read()
        response.close()
        return b""
    finally:
        conn.close()


def settled(server: AzureTestServer) -> list[dict[str, Any]]:
    """What the server billed, once it is done with every request (a hang notices its client left within 50 ms)."""
    deadline = time.monotonic() + 5
    while server.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    return list(server.billed)


# -- the faults the server adds -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bill_abandoned", [False, True])
def test_a_reset_drops_the_connection_and_is_billed_only_when_abandoned_answers_are(
    live_server: AzureTestServer, bill_abandoned: bool
) -> None:
    live_server.bill_abandoned = bill_abandoned
    live_server.script("gpt-4o-mini", connection_reset())
    with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected)):
        post(live_server, timeout=5)
    billed = settled(live_server)
    if bill_abandoned:
        (entry,) = billed
        assert entry["abandoned"] is True and entry["status"] == 200 and entry["prompt_tokens"] > 0
    else:
        assert billed == []


@pytest.mark.parametrize("bill_abandoned", [False, True])
def test_an_answer_the_client_hung_up_on_is_billed_only_when_abandoned_answers_are(
    live_server: AzureTestServer, bill_abandoned: bool
) -> None:
    live_server.bill_abandoned = bill_abandoned
    live_server.script("gpt-4o-mini", hang(5))
    with pytest.raises(TimeoutError):
        post(live_server, timeout=0.3)
    billed = settled(live_server)
    assert [b.get("abandoned") for b in billed] == ([True] if bill_abandoned else [])
    if bill_abandoned:
        assert billed[0]["completion_tokens"] > 0  # what the model generated for nobody


@pytest.mark.parametrize("bill_abandoned", [False, True])
def test_a_trickled_answer_cut_off_is_marked_abandoned_only_when_asked(
    live_server: AzureTestServer, bill_abandoned: bool
) -> None:
    live_server.bill_abandoned = bill_abandoned
    live_server.script("gpt-4o-mini", trickling(0.05), ok("whole"))
    post(live_server, timeout=5, read_body=False)  # gives up on a trickle that every read keeps alive
    assert b"whole" in post(live_server, timeout=5)
    cut, whole = settled(live_server)
    assert cut.get("abandoned") is (True if bill_abandoned else None)
    assert "abandoned" not in whole


def test_the_mix_is_the_same_for_a_seed_draws_anew_per_arrival_and_covers_every_kind() -> None:
    mix, again, other = FaultMix(SEED), FaultMix(SEED), FaultMix(SEED + 1)
    bodies = [f"body-{i}" for i in range(4000)]
    drawn = [mix.draw(b, 1) for b in bodies]
    assert drawn == [again.draw(b, 1) for b in bodies]
    assert drawn != [other.draw(b, 1) for b in bodies]
    assert [mix.draw(b, 2) for b in bodies] != drawn  # a retry of the same body gets its own draw
    counts = Counter(drawn)
    total = sum(WEIGHTS.values())
    for kind in KINDS:
        assert abs(counts[kind] / len(bodies) - WEIGHTS[kind] / total) < 0.02, kind


def test_each_fault_answers_around_the_good_draft_and_malformed_json_is_not_readable() -> None:
    request = ContentBundle.load().request("High-Value Recent", "friendly")
    messages = PromptSet.load().render(request, ValidationLimits(), "compact")
    good = email_drafter({"messages": convert_to_openai_messages(messages)})
    assert good is not None and isinstance(good.tool_args, dict)
    replies = {kind: fault_reply(kind, good) for kind in ("ok", *FAULTS)}
    assert replies["ok"] is good and replies["hang"].delay > 10 and replies["reset"].reset
    assert replies["trickle"].trickle and replies["finish_length"].finish_reason == "length"
    statuses = [replies[k].status for k in ("rate_limited", "server_500", "server_503", "prompt_filtered")]
    assert statuses == [429, 500, 503, 400]
    assert replies["malformed_json"].tool_args == malformed(good.tool_args)
    assert read_draft(AIMessage(malformed(good.tool_args)))[0] is None  # so it is repaired, not taken
    assert read_draft(AIMessage(json.dumps(good.tool_args)))[0] is not None


# -- cpo run through the mix --------------------------------------------------------------------------------------


@pytest.mark.waits
def test_500_faulty_requests_lose_no_email_no_token_and_retry_nothing_final(tmp_path: Path) -> None:
    with Campaign(tmp_path, CUSTOMERS, seed=SEED) as campaign:
        outcome = campaign.run()

    assert problems(outcome) == []
    (process,) = outcome.processes
    kinds = Counter(s.kind for s in outcome.served)
    assert process.requests == len(outcome.served) >= 500
    assert all(kinds[kind] >= 15 for kind in FAULTS), kinds
    costs = outcome.read("costs.json")
    assert costs["errors"] and len(costs["errors"]) < CUSTOMERS // 5  # filtered drafts fail; the rest are written
    assert process.code == 1  # failed emails make the exit code 1, and nothing else stopped the run
    lines = figures(outcome)
    assert lines[1].startswith(f"requests: {process.requests} (") and "hang" in lines[2]


@pytest.mark.waits
def test_a_faulty_run_killed_mid_way_resumes_without_asking_again_for_a_kept_email(tmp_path: Path) -> None:
    with Campaign(tmp_path, KILLED_CUSTOMERS, seed=SEED) as campaign:
        outcome = campaign.run_killed(kill_share=0.4)

    assert problems(outcome) == []
    killed, resumed = outcome.processes
    assert killed.killed and killed.code == -9 and resumed.code in (0, 1)
    assert outcome.kept_at_kill is not None and len(outcome.kept_at_kill) >= 0.4 * KILLED_CUSTOMERS
    asked_before = {s.email for s in killed.served}
    asked_after = {s.email for s in resumed.served}
    assert asked_after and len(asked_after) <= KILLED_CUSTOMERS - len(outcome.kept_at_kill)
    assert len(asked_before | asked_after) == KILLED_CUSTOMERS
