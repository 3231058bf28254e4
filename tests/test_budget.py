"""`max_usd` is a hard cap: each call reserves its worst case before it is sent, also under concurrency."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from azure_server import email_drafter, ok
from conftest import TEST_KEY, azure_settings

from cpo import BudgetExceeded, ContentBundle, CostTracker, build_chat_model, build_email_chain
from cpo.accounting.ledger import Ledger
from cpo.cli import main
from cpo.core.models import TONES

pytestmark = pytest.mark.live_server
BUNDLE = ContentBundle.load()
EMAILS = len(BUNDLE.segments) * len(TONES)


def use_azure(monkeypatch: pytest.MonkeyPatch, endpoint: str, deployment: str = "gpt-4o-mini") -> None:
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", endpoint)
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT_NAME", deployment)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", TEST_KEY)


def test_the_cap_holds_with_16_calls_in_flight(live_server: Any) -> None:
    """The issue's reproduction: every call bills 100,000 input + 10,000 output tokens of gpt-4o-mini ($0.021),
    the cap is $0.03, 16 calls go through batch(max_concurrency=16). Before: all 16 ran, $0.336."""
    live_server.latency = 0.2
    live_server.script("gpt-4o-mini", *[ok("fine", completion_tokens=10_000) for _ in range(16)])
    prompt = "hello " * 100_000  # billed by the server at its own count: the same as cpo's local count
    model = build_chat_model(azure_settings(live_server.endpoint, model_name="gpt-4o-mini")).bind(max_tokens=10_000)
    tracker = CostTracker(max_usd="0.03")
    results = model.batch([prompt] * 16, config={"callbacks": [tracker], "max_concurrency": 16}, return_exceptions=True)
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert len(live_server.requests) == 1 and len(refused) == 15
    assert tracker.session.cost_usd is not None and tracker.session.cost_usd <= Decimal("0.03")
    assert abs(tracker.session.cost_usd - Decimal("0.021")) < Decimal("0.0001")
    assert "the next call may cost up to $0.021" in str(refused[0])


@pytest.mark.parametrize("mode", ["threads", "asyncio"])
async def test_a_call_that_would_fit_waits_for_calls_in_flight_instead_of_being_refused(
    live_server: Any, mode: str
) -> None:
    """Each call reserves ~$0.00615 (1,000 input + max_tokens 10,000) but bills ~$0.0002: with a $0.013 cap
    at most two fit in flight, yet all 16 run, because later calls wait for room rather than being refused."""
    live_server.latency = 0.1
    live_server.script("gpt-4o-mini", *[ok("fine", completion_tokens=100) for _ in range(16)])
    model = build_chat_model(azure_settings(live_server.endpoint, model_name="gpt-4o-mini")).bind(max_tokens=10_000)
    tracker = CostTracker(max_usd="0.013")
    config = {"callbacks": [tracker], "max_concurrency": 16}
    prompts = ["word " * 1000] * 16
    if mode == "threads":
        results = model.batch(prompts, config=config, return_exceptions=True)  # type: ignore[arg-type]
    else:
        results = await model.abatch(prompts, config=config, return_exceptions=True)  # type: ignore[arg-type]
    assert [type(r).__name__ for r in results] == ["AIMessage"] * 16
    assert live_server.max_in_flight == 2
    assert tracker.session.cost_usd is not None and tracker.session.cost_usd <= Decimal("0.013")


def test_a_repair_refused_by_the_budget_keeps_the_paid_draft(live_server: Any) -> None:
    request = BUNDLE.request("High-Value Recent", "urgent")
    from test_email_chain import good_draft

    flawed = {**good_draft(request), "citations": ["press-kit-2026"]}
    live_server.script("gpt-4o-mini", ok(tool_args=flawed, completion_tokens=900), ok(tool_args=good_draft(request)))
    settings = azure_settings(live_server.endpoint, model_name="gpt-4o-mini")
    tracker = CostTracker(max_usd="0.001")
    variant = build_email_chain(build_chat_model(settings), settings=settings).invoke(
        request, config={"callbacks": [tracker]}
    )
    assert len(live_server.requests) == 1  # the repair was refused before it was sent
    assert not variant.valid and variant.attempts == 1 and variant.usage.calls == 1
    assert variant.subject == flawed["subject"]  # the paid draft is kept
    codes = [i.code for i in variant.validation.issues]
    assert "unknown_citation" in codes and codes[-1] == "budget"
    assert variant.validation.issues[-1].message.startswith("repair not made: budget of $0.001 reached")


@pytest.mark.parametrize("concurrency", ["1", "4", "16"])
def test_cpo_run_never_passes_max_usd_and_exits_3(
    live_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    concurrency: str,
) -> None:
    """Before: --max-usd 0.001 spent $0.00118 at concurrency 1, $0.00189 at 4, $0.00371 at 16."""
    live_server.responder = email_drafter
    live_server.latency = 0.05
    use_azure(monkeypatch, live_server.endpoint)
    monkeypatch.setenv("CPO_MODEL_NAME", "gpt-4o-mini")
    code = main(["run", "--max-usd", "0.002", "--concurrency", concurrency])
    err = capsys.readouterr().err
    assert code == 3
    (run_dir,) = [p for p in Path("runs").iterdir() if p.is_dir() and not p.name.startswith(".")]
    costs = json.loads((run_dir / "costs.json").read_text())
    spent = Decimal(costs["session"]["cost_usd"])
    assert 0 < spent <= Decimal("0.002")
    produced = json.loads((run_dir / "variants.json").read_text())
    assert 0 < len(produced) < EMAILS and costs["stopped_by"] == "budget"
    (session,) = Ledger(Path("runs/ledger.sqlite"), readonly=True).sessions()
    assert session["cost_usd"] == spent
    assert err.count("budget reached:") == 1 and "Error in CostTracker" not in err
    assert f"budget reached: {len(produced)} of {EMAILS} emails" in err


def test_a_budget_for_a_model_with_no_price_is_an_error_at_start(
    live_server: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", f"{live_server.endpoint}/v1")
    monkeypatch.setenv("CPO_MODEL_NAME", "llama-3.1-8b")
    code = main(["run", "--max-usd", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == (
        "error: a budget of $1 needs a price for model 'llama-3.1-8b', and none is known: "
        "add it to a price file (CPO_PRICE_FILE), or run without --max-usd"
    )
    assert not Path("runs").exists() and live_server.requests == []
    prices = tmp_path / "prices.yaml"
    prices.write_text("models:\n  llama-3.1-8b: {input: 0.05, output: 0.10}\n")
    monkeypatch.setenv("CPO_PRICE_FILE", str(prices))
    live_server.responder = lambda request: ok(content=email_drafter(request).content, model="llama-3.1-8b")  # type: ignore[union-attr]
    code = main(["run", "--max-usd", "1", "--concurrency", "8"])
    out = capsys.readouterr().out
    # Priced and run to the end; this echoing server's drafts are invalid, so each segment is sent cpo's own
    # control (source: template, no call): exit 0.
    assert code == 0
    session = next(line for line in out.splitlines() if line.startswith("session: "))
    assert session.startswith("session: 60 calls (0 failed)") and "unknown" not in session


def test_when_only_the_reply_names_the_model_its_missing_price_stops_the_run(
    live_server: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Azure without CPO_MODEL_NAME: the first call runs alone to learn the model; it has no price, so stop."""
    live_server.responder = lambda request: ok(
        content=email_drafter(request).content,  # type: ignore[union-attr]
        model="mystery-model-2031-01-01",
    )
    use_azure(monkeypatch, live_server.endpoint)
    code = main(["run", "--max-usd", "1", "--concurrency", "8"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(live_server.requests) == 1  # the probe ran alone; nothing else was sent
    assert "needs a price for model 'mystery-model-2031-01-01'" in err
    (run_dir,) = [p for p in Path("runs").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(json.loads((run_dir / "variants.json").read_text())) == 1  # the paid email is kept


def test_a_repair_that_cannot_be_priced_keeps_the_paid_draft(live_server: Any) -> None:
    """The first reply names a model with no price: the budget cannot hold, so the repair is not sent."""
    request = BUNDLE.request("High-Value Recent", "urgent")
    from test_email_chain import good_draft

    flawed = {**good_draft(request), "citations": ["press-kit-2026"]}
    live_server.script("gpt-4o-mini", ok(tool_args=flawed, model="mystery-model-2031-01-01"))
    settings = azure_settings(live_server.endpoint)
    tracker = CostTracker(max_usd="1")
    variant = build_email_chain(build_chat_model(settings), settings=settings).invoke(
        request, config={"callbacks": [tracker]}
    )
    assert len(live_server.requests) == 1 and variant.usage.calls == 1
    assert not variant.valid and variant.validation.issues[-1].code == "budget"
    assert "needs a price for model 'mystery-model-2031-01-01'" in variant.validation.issues[-1].message


def test_calls_that_waited_behind_the_probe_are_priced_once_it_answers(
    live_server: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Azure without CPO_MODEL_NAME: the first call runs alone, then the rest run 4 at a time, not one by one."""
    live_server.responder = email_drafter
    live_server.latency = 0.2
    use_azure(monkeypatch, live_server.endpoint)
    assert main(["run", "--max-usd", "1", "--concurrency", "4"]) == 0
    assert live_server.max_in_flight == 4
    arrivals = sorted(r["_received_at"] for r in live_server.requests)
    assert arrivals[1] - arrivals[0] >= 0.2  # the probe ran alone
