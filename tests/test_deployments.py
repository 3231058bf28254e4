"""Several deployments (CPO_DEPLOYMENTS_FILE, `cpo.llm.pool`): the file's errors, work shared by quota, failover
when one deployment keeps failing, and costs exact per deployment.

Live against two of the project's loopback test servers (one per "region"): quotas, outages and timing cannot
be recorded in a cassette. No network, no key: the servers accept the test key.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from azure_server import AzureTestServer, Quota, error, server_error
from conftest import TEST_KEY

from cpo import build_chat_model
from cpo.accounting.ledger import Ledger
from cpo.accounting.pricing import price_book_for
from cpo.accounting.tracker import CostTracker
from cpo.core.errors import ConfigError
from cpo.core.settings import Settings

pytestmark = pytest.mark.live_server

CHEAP = {"input": "0.15", "output": "0.60"}  # a Global deployment of gpt-4o-mini
DEAR = {"input": "0.165", "output": "0.66"}  # a Regional one bills 10% more


def write_file(tmp_path: Path, deployments: list[dict[str, Any]], **top: Any) -> Path:
    path = tmp_path / "deployments.yaml"
    path.write_text(yaml.safe_dump({"deployments": deployments, **top}), encoding="utf-8")
    return path


def pool_settings(path: Path, **extra: Any) -> Settings:
    return Settings(deployments_file=path, azure_api_key=TEST_KEY, timeout=5, **extra)


@pytest.fixture
def second_server() -> Any:
    with AzureTestServer(port=0, api_key=TEST_KEY) as server:
        yield server


def per_million(price: dict[str, str], billed: list[dict[str, Any]]) -> Decimal:
    answered = [b for b in billed if b["status"] == 200]
    tokens_in = sum(int(b["prompt_tokens"]) for b in answered)
    tokens_out = sum(int(b["completion_tokens"]) for b in answered)
    return (tokens_in * Decimal(price["input"]) + tokens_out * Decimal(price["output"])) / Decimal(1_000_000)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("deployments: []", "deployments: List should have at least 1 item"),
        ("deployments:\n - {name: a, endpoint: 'ftp://x', deployment: m}", "deployments.0.endpoint: not an http(s)"),
        ("deployments:\n - {name: a, endpoint: 'https://x', deployment: m, api_key: sk-1}", "keys do not belong"),
        ("deployments:\n - {name: a, endpoint: 'https://x', deployment: m, rpm: 0}", "deployments.0.rpm"),
        (
            "deployments:\n - {name: a, endpoint: 'https://x', deployment: m}\n - {name: a, endpoint: 'https://y', "
            "deployment: m}",
            "two deployments are named 'a'",
        ),
        ("deployments:\n - {name: 'a b', endpoint: 'https://x', deployment: m}", "deployments.0.name"),
        ("deployments: [", "is not valid YAML"),
        (
            "deployments:\n - {name: a, endpoint: 'https://x', deployment: m, price: {input: -1, output: 1}}",
            "deployments.0.price: input: Input should be greater than or equal to 0",
        ),
        ("deployments:\n - {name: a, endpoint: 'https://x', deployment: m, rpm: true}", "rpm: Input should be a valid"),
        (
            "deployments:\n - {name: a, endpoint: 'https://x', deployment: m}\n - {name: A, endpoint: 'https://y', "
            "deployment: m}",
            "two deployments are named 'A' (case aside)",
        ),
        ("- a\n- b", "Input should be a valid dictionary"),
    ],
)
def test_a_bad_deployments_file_is_one_line_naming_the_file_and_the_key(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "deployments.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        Settings(deployments_file=path)
    message = str(caught.value)
    assert expected in message and message.startswith(f"CPO_DEPLOYMENTS_FILE: {path}") and "\n" not in message


def test_the_file_replaces_the_one_deployment_settings_instead_of_silently_ignoring_them(tmp_path: Path) -> None:
    path = write_file(tmp_path, [{"name": "a", "endpoint": "https://x", "deployment": "m"}])
    with pytest.raises(ConfigError, match="both set: list every deployment in the file"):
        Settings(deployments_file=path, azure_endpoint="https://y", azure_deployment="m")
    with pytest.raises(ConfigError, match="give each deployment its rpm and tpm in the file"):
        Settings(deployments_file=path, rpm=60)
    with pytest.raises(ConfigError, match=r"missing\.yaml: No such file or directory"):
        Settings(deployments_file=tmp_path / "missing.yaml")
    named = write_file(tmp_path, [{"name": "a", "endpoint": "https://x", "deployment": "m", "api_key_env": "NO_KEY"}])
    with pytest.raises(ConfigError, match="deployment a: api_key_env names NO_KEY, which is not set"):
        build_chat_model(Settings(deployments_file=named))
    settings = Settings(deployments_file=path, azure_api_key=TEST_KEY)
    assert settings.provider == "azure" and "1 deployments from" in settings.describe()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def outage(status: int = 503) -> Exception:
    import httpx2
    import openai

    request = httpx2.Request("POST", "https://x/openai/deployments/m/chat/completions")
    return openai.APIStatusError("down", response=httpx2.Response(status, request=request), body=None)


def test_failover_takes_a_failing_deployment_out_probes_it_one_attempt_at_a_time_and_backs_off() -> None:
    """On a fake clock: failures shorter than the threshold change nothing; longer, the deployment is out for
    the threshold; then one probe at a time, a failed probe doubling the time out, a success bringing it back."""
    from cpo.core.deployments import Deployment
    from cpo.llm.pool import Member, Router

    clock = Clock()
    east, west = (Member(Deployment(name=n, endpoint="https://x", deployment="m"), None) for n in "ew")  # type: ignore[arg-type]
    router = Router([east, west], failover_after=10.0, clock=clock)

    def attempt_on(member: Member, failure: Exception | None = None) -> None:
        chosen = router.choose(avoid=[west if member is east else east])
        assert chosen is member
        router.ended(chosen, failure)

    attempt_on(east, outage())
    clock.now += 9
    attempt_on(east, outage())  # failing for 9 s: still in rotation
    clock.now += 1.5
    attempt_on(east, outage())  # 10.5 s: out for 10 s
    assert [router.choose() for _ in range(3)] == [west] * 3
    for _ in range(3):
        router.ended(west, None)
    clock.now += 10
    probe = router.choose(avoid=[west])
    assert probe is east and router.choose(avoid=[west]) is west  # one probe at a time
    router.ended(west, None)
    router.ended(east, outage())  # the probe failed: out for 20 s
    clock.now += 19
    assert router.choose(avoid=[west]) is west
    router.ended(west, None)
    clock.now += 1
    attempt_on(east, None)  # back: in rotation again, with no probe limit
    assert east.outages == 0 and router.choose(avoid=[west]) is east and router.choose(avoid=[west]) is east
    router.ended(east, outage(401))  # a refused key: out for good
    assert router.choose(avoid=[west]) is west and east.out_until == float("inf")


async def test_work_is_shared_in_proportion_to_each_deployments_quota_without_429s(
    live_server: Any, second_server: Any, tmp_path: Path
) -> None:
    """Two deployments allowing 20 and 10 requests per 2 s: 60 calls take about what their joint quota allows
    (about 4 s), twice as many go to the larger one, and neither answers a 429."""
    live_server.quota = Quota(requests=20, window_s=2.0)
    second_server.quota = Quota(requests=10, window_s=2.0)
    path = write_file(
        tmp_path,
        [
            {"name": "big", "endpoint": live_server.endpoint, "deployment": "gpt-4o-mini", "rpm": 20},
            {"name": "small", "endpoint": second_server.endpoint, "deployment": "gpt-4o-mini", "rpm": 10},
        ],
    )
    model = build_chat_model(pool_settings(path, quota_window=2.0))
    await model.ainvoke("warm up")  # start-up (imports, the first connection) is not the pacing under test
    started = time.perf_counter()
    answers = await asyncio.gather(*(model.ainvoke(f"hello {i}") for i in range(60)))
    elapsed = time.perf_counter() - started
    big, small = live_server.quota.admitted, second_server.quota.admitted
    print(f"\n60 calls over 20 + 10 per 2 s: {elapsed:.2f} s; big {big}, small {small}")
    assert len(answers) == 60 and live_server.quota.throttled + second_server.quota.throttled <= 3
    assert big + small == 61 and 1.6 <= big / small <= 2.5
    ideal = (61 - 3 - 1.5) / (0.95 * 30 - 4.5) * 2.0  # after the bursts, at the paced joint rate
    assert elapsed <= 1.25 * ideal + 0.5


async def test_a_deployment_that_keeps_failing_is_failed_over_and_costs_stay_exact_per_deployment(
    live_server: Any, second_server: Any, tmp_path: Path
) -> None:
    """One region answers only 503 (a regional outage): every call still succeeds, the outage gets no new work
    once it has failed for longer than the threshold, and each answer is priced at its own deployment's price:
    the tracker's and the ledger's per-deployment costs equal what each server billed times that price."""
    second_server.responder = lambda request: server_error(503, retry_after_ms=2000)
    path = write_file(
        tmp_path,
        [
            {"name": "sweden", "endpoint": live_server.endpoint, "deployment": "gpt-4o-mini", "price": CHEAP},
            {"name": "france", "endpoint": second_server.endpoint, "deployment": "gpt-4o-mini", "price": DEAR},
        ],
        failover_after=1.0,
    )
    settings = pool_settings(path)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    tracker = CostTracker(prices=price_book_for(settings))
    tracker.use_ledger(ledger)
    model = build_chat_model(settings)
    first = await asyncio.gather(*(model.ainvoke(f"a {i}", {"callbacks": [tracker]}) for i in range(8)))
    await asyncio.sleep(1.1)  # past the threshold: the next failure takes the outage out of rotation
    await model.ainvoke("trip", {"callbacks": [tracker]})
    refused_before = len(second_server.requests)
    later = await asyncio.gather(*(model.ainvoke(f"b {i}", {"callbacks": [tracker]}) for i in range(20)))
    assert len(first) == 8 and len(later) == 20
    assert refused_before >= 1 and len(second_server.requests) == refused_before  # no new work for the outage
    usage = tracker.session
    assert usage.by_deployment["sweden"].calls == 29
    assert usage.by_deployment["sweden"].cost_usd == per_million(CHEAP, live_server.billed)
    assert usage.by_deployment["france"].failed_calls == refused_before
    assert usage.by_deployment["france"].cost_usd == 0  # a 503 is not billed
    tracker.close()
    with sqlite3.connect(tmp_path / "ledger.sqlite") as conn:
        rows = conn.execute("SELECT deployment, COUNT(*) FROM calls GROUP BY deployment ORDER BY deployment").fetchall()
    assert rows == [("france", refused_before), ("sweden", 29)]


async def test_each_deployment_is_priced_at_its_own_price(live_server: Any, second_server: Any, tmp_path: Path) -> None:
    """Both deployments answer; each answer costs its deployment's price, not one price for the pool (a
    price-file entry for the Azure deployment name prices the entry without a price of its own)."""
    prices = tmp_path / "prices.yaml"
    prices.write_text(yaml.safe_dump({"deployments": {"gpt-4o-mini-dz": DEAR}}), encoding="utf-8")
    path = write_file(
        tmp_path,
        [
            {"name": "global", "endpoint": live_server.endpoint, "deployment": "gpt-4o-mini", "price": CHEAP},
            {"name": "datazone", "endpoint": second_server.endpoint, "deployment": "gpt-4o-mini-dz"},
        ],
    )
    settings = pool_settings(path, price_file=prices)
    tracker = CostTracker(prices=price_book_for(settings))
    model = build_chat_model(settings)
    await asyncio.gather(*(model.ainvoke(f"hello {i}", {"callbacks": [tracker]}) for i in range(12)))
    by = tracker.session.by_deployment
    assert by["global"].calls + by["datazone"].calls == 12 and by["global"].calls >= 4 and by["datazone"].calls >= 4
    assert by["global"].cost_usd == per_million(CHEAP, live_server.billed)
    assert by["datazone"].cost_usd == per_million(DEAR, second_server.billed)
    assert tracker.session.cost_usd == by["global"].cost_usd + by["datazone"].cost_usd


def test_a_deployment_that_refuses_the_key_is_retried_elsewhere_and_gets_no_more_work(
    live_server: Any, second_server: Any, tmp_path: Path
) -> None:
    second_server.responder = lambda request: error(401)
    path = write_file(
        tmp_path,
        [
            {"name": "good", "endpoint": live_server.endpoint, "deployment": "gpt-4o-mini"},
            {"name": "badkey", "endpoint": second_server.endpoint, "deployment": "gpt-4o-mini"},
        ],
    )
    model = build_chat_model(pool_settings(path))
    answers = [model.invoke(f"hello {i}") for i in range(6)]
    assert len(answers) == 6 and len(second_server.requests) == 1 and len(live_server.requests) == 6


def test_a_transient_failure_is_retried_at_once_on_another_deployment(
    live_server: Any, second_server: Any, tmp_path: Path
) -> None:
    """A 503 asking for 2 s is the failing deployment's wait: the retry goes to the other one without it."""
    live_server.script("gpt-4o-mini", server_error(503, retry_after_ms=2000))  # the first pick, "a", fails
    path = write_file(
        tmp_path,
        [
            {"name": "a", "endpoint": live_server.endpoint, "deployment": "gpt-4o-mini"},
            {"name": "b", "endpoint": second_server.endpoint, "deployment": "gpt-4o-mini"},
        ],
    )
    model = build_chat_model(pool_settings(path))
    started = time.perf_counter()
    model.invoke("hello")
    assert time.perf_counter() - started < 1.5
    assert len(live_server.requests) == 1 and len(second_server.requests) == 1


def use_file(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    for name in ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_DEPLOYMENT_NAME", "CPO_RPM", "CPO_TPM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CPO_DEPLOYMENTS_FILE", str(path))
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", TEST_KEY)


def test_cpo_run_spreads_the_campaign_and_fails_over_with_every_email_and_costs_per_deployment(
    live_server: Any,
    second_server: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The sample campaign over two deployments, one of which is down (503) from the start: every email is
    written, the run says what each deployment did and cost, and costs.json keeps it per deployment."""

    from azure_server import email_drafter

    from cpo.cli import main

    live_server.responder = email_drafter
    second_server.responder = lambda request: server_error(503, retry_after_ms=50)
    use_file(
        monkeypatch,
        write_file(
            tmp_path,
            [
                {"name": "up", "endpoint": live_server.endpoint, "deployment": "gpt-4o-mini", "price": CHEAP},
                {"name": "down", "endpoint": second_server.endpoint, "deployment": "gpt-4o-mini", "price": DEAR},
            ],
            failover_after=0.2,
        ),
    )
    assert main(["run", "--concurrency", "8", "--out", str(tmp_path / "runs")]) == 0
    out, err = capsys.readouterr()
    assert "valid: 20 of 20" in out and "by deployment: " in out
    assert "2 deployments from" in err
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    session = json.loads((run_dir / "costs.json").read_text(encoding="utf-8"))["session"]
    up, down = session["by_deployment"]["up"], session["by_deployment"]["down"]
    assert Decimal(up["cost_usd"]) == per_million(CHEAP, live_server.billed) and up["failed_calls"] == 0
    assert down["calls"] == len(second_server.requests) == down["failed_calls"] and Decimal(down["cost_usd"]) == 0
    assert up["calls"] == len(live_server.requests)  # each email's failed attempt was retried on "up" at once


def test_cpo_check_checks_each_deployment_and_fails_if_one_does(
    live_server: Any,
    second_server: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cpo.cli import main

    second_server.responder = lambda request: error(404)
    use_file(
        monkeypatch,
        write_file(
            tmp_path,
            [
                {"name": "east", "endpoint": live_server.endpoint, "deployment": "gpt-4o-mini"},
                {"name": "west", "endpoint": second_server.endpoint, "deployment": "gpt-4o-mini"},
            ],
        ),
    )
    assert main(["check", "--out", str(tmp_path / "runs")]) == 1
    out = capsys.readouterr().out
    east, west = out.split("deployment west:")
    assert "deployment east:" in east and "✅ east (" in east and "structured output" in east
    assert "❌ west (" in west and "404" in west and "1 of 2 deployments failed the check: west" in west
    second_server.responder = None
    live_server.latency = second_server.latency = 0.2  # so that two at once vs one alone is timed clearly
    assert main(["check", "--out", str(tmp_path / "runs")]) == 0
    assert "all 2 deployments answered" in capsys.readouterr().out
    notes = json.loads((tmp_path / "runs" / "endpoints.json").read_text(encoding="utf-8"))["endpoints"]
    pooled = [v for k, v in notes.items() if " + " in k]
    assert len(pooled) == 1 and pooled[0]["parallel"] is True and pooled[0]["method"] == "json_schema"


def test_the_documented_example_file_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/deployments.example.yaml loads; each deployment gets its own key, endpoint, deployment and price."""
    monkeypatch.setenv("EASTUS_OPENAI_KEY", "eastus-key")
    example = Path(__file__).parent.parent / "docs" / "deployments.example.yaml"
    settings = Settings(deployments_file=example, azure_api_key="default-key")
    assert settings.deployments is not None and settings.deployments.names == ["sweden", "eastus"]
    members = build_chat_model(settings).members  # type: ignore[attr-defined]
    keys = [m.model.openai_api_key.get_secret_value() for m in members]
    assert keys == ["default-key", "eastus-key"]
    assert [m.model.deployment_name for m in members] == ["gpt-4o-mini", "mini-global"]
    prices = price_book_for(settings)
    assert prices.deployment_model("sweden") == prices.deployment_model("eastus") == "gpt-4o-mini-2024-07-18"


def two_deployments(tmp_path: Path, first: Any, second: Any, **entry: Any) -> Settings:
    return pool_settings(
        write_file(
            tmp_path,
            [
                {"name": "a", "endpoint": first.endpoint, "deployment": "gpt-4o-mini", **entry},
                {"name": "b", "endpoint": second.endpoint, "deployment": "gpt-4o-mini", **entry},
            ],
        )
    )


def test_a_refused_key_is_retried_elsewhere_even_while_the_other_deployment_is_failing(
    live_server: Any, second_server: Any, tmp_path: Path
) -> None:
    """Found by an attack: one 429 on the good deployment made the bad key's 401 end the email (and `cpo run`)."""
    live_server.script("gpt-4o-mini", server_error(429, retry_after_ms=100))
    second_server.responder = lambda request: error(401)
    model = build_chat_model(two_deployments(tmp_path, live_server, second_server))
    answers = [model.invoke(f"hello {i}") for i in range(4)]
    assert len(answers) == 4 and len(second_server.requests) <= 1


def test_a_retry_goes_to_a_healthy_deployment_not_to_another_failing_one(
    live_server: Any, second_server: Any, tmp_path: Path
) -> None:
    """Found by an attack: with two of three deployments down, retries bounced between the two that were down."""
    with AzureTestServer(port=0, api_key=TEST_KEY) as third:
        live_server.responder = lambda request: server_error(503, retry_after_ms=10)
        second_server.responder = lambda request: server_error(503, retry_after_ms=10)
        path = write_file(
            tmp_path,
            [
                {"name": n, "endpoint": s.endpoint, "deployment": "gpt-4o-mini"}
                for n, s in (("a", live_server), ("b", second_server), ("c", third))
            ],
            failover_after=60,
        )
        model = build_chat_model(pool_settings(path))

        async def calls() -> list[Any]:
            return await asyncio.gather(*(model.ainvoke(f"hello {i}") for i in range(16)), return_exceptions=True)

        results = asyncio.run(calls())
    assert not [r for r in results if isinstance(r, BaseException)]


def test_another_deployment_takes_the_retry_at_once_whatever_the_failing_one_asks_to_wait(
    live_server: Any, second_server: Any, tmp_path: Path
) -> None:
    """Found by an attack: a 429 asking for 60 s (more than CPO_RETRY_MAX_WAIT) ended the call although the other
    deployment was free; and without a quota, the held deployment kept getting new work."""
    live_server.responder = lambda request: server_error(429, retry_after_ms=60_000)
    model = build_chat_model(two_deployments(tmp_path, live_server, second_server))
    started = time.perf_counter()
    answers = [model.invoke(f"hello {i}") for i in range(5)]
    assert len(answers) == 5 and time.perf_counter() - started < 3
    assert len(live_server.requests) == 1 and len(second_server.requests) == 5  # held: no new work


def test_streaming_goes_through_the_pool(live_server: Any, second_server: Any, tmp_path: Path) -> None:
    """Found by an attack: `stream()` went to the first deployment's client, past the pool and its prices."""
    live_server.responder = lambda request: error(401)
    settings = two_deployments(tmp_path, live_server, second_server, price=DEAR)
    tracker = CostTracker(prices=price_book_for(settings))
    model = build_chat_model(settings)
    model.invoke("first", {"callbacks": [tracker]})  # "a" refuses the key: out of the pool
    chunks = list(model.stream("hello", {"callbacks": [tracker]}))
    assert chunks and set(tracker.session.by_deployment) == {"a", "b"} and tracker.session.by_deployment["b"].calls == 2


def test_one_entrys_name_never_prices_another_entry(tmp_path: Path) -> None:
    """Found by an attack: an entry named like another's Azure deployment lent it its price, by file order."""
    path = write_file(
        tmp_path,
        [
            {"name": "gpt-4o-mini", "endpoint": "https://x", "deployment": "dear", "price": {"input": 9, "output": 9}},
            {"name": "plain", "endpoint": "https://y", "deployment": "gpt-4o-mini"},
        ],
    )
    prices = price_book_for(Settings(deployments_file=path))
    assert prices.deployment_model("plain") is None and "plain" not in prices.user.deployments
