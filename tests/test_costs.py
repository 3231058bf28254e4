"""CostTracker: tokens and USD per run and per session, equal to what the server billed."""

from __future__ import annotations

import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from azure_server import ok
from conftest import azure_settings, http_requests
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from pydantic import BaseModel

from cpo import BudgetExceeded, CostTracker, PriceBook, Usage, build_chat_model
from cpo.accounting.ledger import Ledger
from cpo.core.usage import TokenCounts

# gpt-4o-mini list price, USD per million tokens (input, cached input, output): the reference the
# tracker's figures are checked against, independent of the price table it uses.
MINI_IN, MINI_CACHED, MINI_OUT = Decimal("0.15"), Decimal("0.075"), Decimal("0.60")
PROMPT = ChatPromptTemplate.from_messages([("system", "You write one short line."), ("human", "{topic}")])
TOPICS = [{"topic": f"A line about {t}."} for t in ("tea", "rain", "maps", "owls", "salt", "jazz")]


def mini_price(billed: list[dict[str, Any]]) -> Decimal:
    total = Decimal(0)
    for b in billed:
        uncached = b["prompt_tokens"] - b["cached_tokens"]
        total += uncached * MINI_IN + b["cached_tokens"] * MINI_CACHED + b["completion_tokens"] * MINI_OUT
    return total / Decimal(1_000_000)


def assert_matches_billed(usage: Usage, billed: list[dict[str, Any]]) -> None:
    assert usage.input_tokens == sum(b["prompt_tokens"] for b in billed)
    assert usage.output_tokens == sum(b["completion_tokens"] for b in billed)
    assert usage.cached_input_tokens == sum(b["cached_tokens"] for b in billed)
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.cost_usd is not None
    assert abs(usage.cost_usd - mini_price(billed)) <= Decimal("1e-9")


def assert_runs_sum_to_session(tracker: CostTracker) -> None:
    total = Usage()
    for run in tracker.runs.values():
        total.merge(run)
    assert total.model_dump(exclude={"latency_s", "by_model"}) == tracker.session.model_dump(
        exclude={"latency_s", "by_model"}
    )


@pytest.mark.vcr
def test_batch_totals_equal_what_the_server_billed(azure_server: Any, cassette_billed: Any) -> None:
    tracker = CostTracker()
    chain = PROMPT | build_chat_model(azure_settings())
    chain.batch(TOPICS, config={"callbacks": [tracker], "max_concurrency": 3})
    billed = cassette_billed()
    assert len(billed) == len(TOPICS)
    assert_matches_billed(tracker.session, billed)
    assert len(tracker.runs) == len(TOPICS)
    assert all(run.calls == 1 for run in tracker.runs.values())
    assert_runs_sum_to_session(tracker)
    assert list(tracker.session.by_model) == ["gpt-4o-mini-2024-07-18"]


@pytest.mark.vcr
async def test_abatch_with_nested_calls_attributes_each_run(azure_server: Any, cassette_billed: Any) -> None:
    """Two model calls inside one chain run count toward that run, under asyncio concurrency."""
    model = build_chat_model(azure_settings())
    first = PROMPT | model

    async def twice(inputs: dict[str, str]) -> str:
        reply = await first.ainvoke(inputs)
        again = await model.ainvoke(f"Shorter: {reply.content}")
        return str(again.content)

    tracker = CostTracker()
    await RunnableLambda(twice).abatch(TOPICS, config={"callbacks": [tracker], "max_concurrency": 4})
    billed = cassette_billed()
    assert len(billed) == 2 * len(TOPICS)
    assert_matches_billed(tracker.session, billed)
    assert sorted(run.calls for run in tracker.runs.values()) == [2] * len(TOPICS)
    assert_runs_sum_to_session(tracker)


@pytest.mark.vcr
def test_faults_in_a_session_bill_only_answered_calls(azure_server: Any, cassette_billed: Any) -> None:
    """Every attempt is a call the tracker sees; 429 and 503 attempts carry no usage and cost nothing."""
    tracker = CostTracker()
    for deployment in ("rate-limited", "flaky-503", "gpt-4o-mini"):
        chain = PROMPT | build_chat_model(azure_settings(deployment=deployment))
        chain.invoke(TOPICS[0], config={"callbacks": [tracker]})
    billed = cassette_billed()
    assert [b["status"] for b in billed] == [429, 200, 503, 503, 200, 200]
    assert_matches_billed(tracker.session, billed)
    assert tracker.session.calls == 6 and tracker.session.failed_calls == 3
    assert tracker.session.unknown_cost_calls == 0  # an HTTP error status is an answer: not billed


@pytest.mark.vcr
def test_cached_tokens_are_priced_at_the_cached_rate(azure_server: Any, cassette_billed: Any) -> None:
    tracker = CostTracker()
    (PROMPT | build_chat_model(azure_settings(deployment="cached"))).invoke(TOPICS[1], config={"callbacks": [tracker]})
    billed = cassette_billed()
    assert billed[0]["cached_tokens"] > 0
    assert tracker.session.cached_input_tokens == billed[0]["cached_tokens"]
    assert_matches_billed(tracker.session, billed)
    uncached_price = Decimal(billed[0]["prompt_tokens"]) * MINI_IN / Decimal(1_000_000)
    assert tracker.session.cost_usd < uncached_price + billed[0]["completion_tokens"] * MINI_OUT / Decimal(1_000_000)


class Line(BaseModel):
    text: str
    mood: str


@pytest.mark.vcr
def test_truncated_structured_output_is_still_billed(azure_server: Any, cassette_billed: Any) -> None:
    azure_server.script(
        "truncated", ok(tool_args={"text": "A long line about tea and rain", "mood": "calm"}, finish_reason="length")
    )
    model = build_chat_model(azure_settings(deployment="truncated"))
    tracker = CostTracker()
    with pytest.raises(openai.LengthFinishReasonError):
        model.with_structured_output(Line, method="json_schema").invoke(
            "Write a line.", config={"callbacks": [tracker]}
        )
    billed = cassette_billed()
    assert billed[0]["completion_tokens"] > 0
    assert tracker.session.failed_calls == 1
    assert_matches_billed(tracker.session, billed)


@pytest.mark.vcr
def test_content_filtered_structured_output_is_still_billed(azure_server: Any, cassette_billed: Any) -> None:
    model = build_chat_model(azure_settings(deployment="content-filtered"))
    tracker = CostTracker()
    with pytest.raises(openai.ContentFilterFinishReasonError):  # cpo attaches the billed usage
        model.with_structured_output(Line, method="json_schema").invoke(
            "Write a line.", config={"callbacks": [tracker]}
        )
    billed = cassette_billed()
    assert tracker.session.failed_calls == 1
    assert tracker.session.input_tokens == billed[0]["prompt_tokens"] > 0


@pytest.mark.vcr
def test_model_is_priced_by_what_answered_not_the_deployment_name(azure_server: Any, cassette_billed: Any) -> None:
    """A deployment called "gpt-4o" that serves gpt-4o-mini is priced as gpt-4o-mini."""
    tracker = CostTracker()
    build_chat_model(azure_settings(deployment="gpt-4o")).invoke("Hi.", config={"callbacks": [tracker]})
    assert list(tracker.session.by_model) == ["gpt-4o-mini-2024-07-18"]
    assert_matches_billed(tracker.session, cassette_billed())


@pytest.mark.vcr
def test_reasoning_tokens_are_counted_and_priced_as_output(azure_server: Any, cassette_billed: Any) -> None:
    tracker = CostTracker()
    build_chat_model(azure_settings(deployment="reasoning")).invoke("Hi.", config={"callbacks": [tracker]})
    billed = cassette_billed()
    assert tracker.session.reasoning_tokens == 7
    assert list(tracker.session.by_model) == ["o3-mini-2025-01-31"]
    o3_mini = (
        billed[0]["prompt_tokens"] * Decimal("1.10") + billed[0]["completion_tokens"] * Decimal("4.40")
    ) / Decimal(1_000_000)
    assert abs(tracker.session.cost_usd - o3_mini) <= Decimal("1e-9")


@pytest.mark.vcr
def test_unknown_model_costs_none_with_one_log_line(azure_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    tracker = CostTracker()
    model = build_chat_model(azure_settings(deployment="unknown-model"))
    with caplog.at_level(logging.WARNING, logger="cpo"):
        model.invoke("One.", config={"callbacks": [tracker]})
        model.invoke("Two.", config={"callbacks": [tracker]})
    unknown = [r for r in caplog.records if "no price known" in r.getMessage()]
    assert len(unknown) == 1
    assert unknown[0].getMessage().startswith("no price known for model 'mystery-model-2031-01-01'")
    assert tracker.session.cost_usd is None
    assert tracker.session.input_tokens > 0
    assert tracker.session.cost_display == "unknown"


@pytest.mark.vcr
def test_budget_guard_stops_before_sending(azure_server: Any, vcr: Any) -> None:
    tracker = CostTracker(max_usd="0.000001")
    model = build_chat_model(azure_settings())
    model.invoke("First call.", config={"callbacks": [tracker]})
    assert tracker.session.cost_usd >= Decimal("0.000001")
    with pytest.raises(BudgetExceeded, match=r"budget of \$0.000001 reached"):
        model.invoke("Second call.", config={"callbacks": [tracker]})
    assert http_requests(azure_server, vcr) == 1


def test_budget_guard_refuses_a_call_whose_input_alone_exceeds_it() -> None:
    tracker = CostTracker(max_usd="0.00001", default_model="gpt-4o-mini")
    model = build_chat_model(azure_settings("http://127.0.0.1:9"))  # never reached
    with pytest.raises(BudgetExceeded, match=r"the next call may cost up to \$0\.00"):
        model.invoke("word " * 200, config={"callbacks": [tracker]})
    assert tracker.session.calls == 0


def test_price_file_overrides_and_maps_deployments(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(
        "deployments:\n  prod-mini: gpt-4o-mini-2024-07-18\n"
        "models:\n  gpt-4o-mini-2024-07-18: {input: 0.165, cached_input: 0.0825, output: 0.66}\n"
    )
    book = PriceBook(path)
    assert book.resolve_model(None, "prod-mini") == "gpt-4o-mini-2024-07-18"
    cost = book.cost("gpt-4o-mini-2024-07-18", TokenCounts(1000, 200, 100))
    assert cost == (800 * Decimal("0.165") + 200 * Decimal("0.0825") + 100 * Decimal("0.66")) / Decimal(1_000_000)


def test_invalid_price_file_names_the_key(tmp_path: Path) -> None:
    from cpo import ConfigError

    path = tmp_path / "prices.yaml"
    path.write_text("models:\n  m: {input: -1, output: 1}\n")
    with pytest.raises(ConfigError, match=r"prices.yaml: models.m.input"):
        PriceBook(path)


def test_offline_model_is_free_not_unknown() -> None:
    assert PriceBook().cost("cpo-offline", TokenCounts(100, 0, 100)) == Decimal(0)


@pytest.mark.vcr
def test_ledger_records_every_call_and_sums_exactly(azure_server: Any, tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    tracker = CostTracker(ledger=ledger)
    chain = (PROMPT | build_chat_model(azure_settings())).with_config(run_name="one-liner")
    chain.batch(TOPICS[:3], config={"callbacks": [tracker]})
    runs = ledger.runs(tracker.session_id)
    assert len(runs) == 3 and {r["name"] for r in runs} == {"one-liner"}
    assert sum(r["input_tokens"] for r in runs) == tracker.session.input_tokens
    (session,) = ledger.sessions()
    assert session["id"] == tracker.session_id
    assert session["cost_usd"] == tracker.session.cost_usd
    assert session["runs"] == 3


def test_summary_is_json_with_exact_costs() -> None:
    tracker = CostTracker()
    usage = Usage()
    usage.add_call("gpt-4o-mini", TokenCounts(10, 0, 5), Decimal("0.0000045"))
    tracker.session = usage
    summary = tracker.summary()
    assert summary["session"]["cost_usd"] == "0.0000045"
    assert summary["session"]["by_model"]["gpt-4o-mini"]["calls"] == 1
    assert '"cost_usd": "0.0000045"' in tracker.summary_json()


def test_to_dataframe_has_one_row_per_run() -> None:
    from cpo import ContentBundle, build_email_chain

    bundle = ContentBundle.load()
    tracker = CostTracker()
    requests = [bundle.request(bundle.segments[0].name, t) for t in ("urgent", "friendly")]
    build_email_chain().batch(requests, config={"callbacks": [tracker]})
    frame = tracker.to_dataframe()
    assert len(frame) == 2
    assert frame["total_tokens"].sum() == tracker.session.total_tokens
    assert frame["cost_usd"].tolist() == [0.0, 0.0]
    assert set(frame["models"]) == {"cpo-offline"}
