"""Accounting that never breaks a paid call, attributes through tools, retrievers and graphs, and prices
by the price file's deployment entry, else the model that answered, never by the deployment name."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, TypedDict

import pytest
from azure_server import ok
from conftest import azure_settings
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_core.tools import tool

from cpo import ContentBundle, CostTracker, LedgerError, PriceBook, Settings, build_chat_model, build_email_chain
from cpo.accounting.ledger import SCHEMA_VERSION, CallRow, Ledger
from cpo.core.usage import TokenCounts
from cpo.llm.offline import OfflineChatModel

BUNDLE = ContentBundle.load()
MINI_IN, MINI_OUT = Decimal("0.15"), Decimal("0.60")


def mini(input_tokens: int, output_tokens: int) -> Decimal:
    return (input_tokens * MINI_IN + output_tokens * MINI_OUT) / Decimal(1_000_000)


# -- attribution ------------------------------------------------------------------------------------------


def test_a_model_call_inside_a_tool_lands_on_the_outer_run() -> None:
    """Before: the tool's model call became its own unnamed run, so one invocation showed as two runs."""
    model = OfflineChatModel()

    @tool
    def write_line(topic: str) -> str:
        """Write one line about a topic."""
        return str(model.invoke(f"A line about {topic}.").content)

    def agent(topic: str, config: RunnableConfig) -> str:
        first = model.invoke(f"Plan a line about {topic}.", config)
        return write_line.invoke({"topic": str(first.content)[:20]}, config)

    tracker = CostTracker()
    RunnableLambda(agent).with_config(run_name="agent").invoke("tea", config={"callbacks": [tracker]})
    assert list(tracker.run_names.values()) == ["agent"]
    assert tracker.runs.keys() == tracker.run_names.keys()  # the cost is on the agent's run, not the tool's
    (run,) = tracker.runs.values()
    assert run.calls == 2 and run.total_tokens == tracker.session.total_tokens


class _Drafts(BaseRetriever):
    """A retriever that asks a model to rewrite the query first (as query-rewriting retrievers do)."""

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        rewritten = OfflineChatModel().invoke(f"Rewrite: {query}", config={"callbacks": run_manager.get_child()})
        return [Document(page_content=str(rewritten.content))]


def test_a_model_call_inside_a_retriever_lands_on_the_outer_run() -> None:
    tracker = CostTracker()
    chain = RunnableLambda(lambda q, config: _Drafts().invoke(q, config)).with_config(run_name="lookup")
    chain.invoke("upgrade perks", config={"callbacks": [tracker]})
    assert list(tracker.run_names.values()) == ["lookup"]
    assert tracker.runs.keys() == tracker.run_names.keys()  # the cost is on the outer run, not the retriever's
    (run,) = tracker.runs.values()
    assert run.calls == 1


def test_email_chains_inside_a_langgraph_graph_land_on_the_graph_run() -> None:
    from langgraph.graph import END, START, StateGraph

    class State(TypedDict):
        segment: str
        subjects: list[str]

    chain = build_email_chain()

    def generate(state: State, config: RunnableConfig) -> dict[str, Any]:
        requests = [BUNDLE.request(state["segment"], tone) for tone in ("urgent", "friendly")]
        variants = chain.batch(requests, config)
        return {"subjects": [v.subject for v in variants]}

    def review(state: State, config: RunnableConfig) -> dict[str, Any]:
        again = chain.invoke(BUNDLE.request(state["segment"], "control"), config)
        return {"subjects": [*state["subjects"], again.subject]}

    graph = StateGraph(State)
    graph.add_node("generate", generate)
    graph.add_node("review", review)
    graph.add_edge(START, "generate")
    graph.add_edge("generate", "review")
    graph.add_edge("review", END)
    tracker = CostTracker()
    out = (
        graph.compile()
        .with_config(run_name="campaign")
        .invoke({"segment": "High-Value Recent", "subjects": []}, config={"callbacks": [tracker]})
    )
    assert len(out["subjects"]) == 3
    assert list(tracker.run_names.values()) == ["campaign"]
    assert tracker.runs.keys() == tracker.run_names.keys()
    (run,) = tracker.runs.values()
    assert run.calls == 3 and run.total_tokens == tracker.session.total_tokens


# -- a ledger that fails never breaks a paid call ----------------------------------------------------------


def locked(path: Path) -> sqlite3.Connection:
    """Another process's write transaction holding the ledger."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN EXCLUSIVE")
    return conn


@pytest.mark.live_server
def test_a_ledger_write_that_fails_keeps_the_paid_answer(
    live_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the failure raised out of on_llm_end after the provider billed; the answer was thrown away."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path, busy_timeout_s=0.1)
    holder = locked(path)
    request = BUNDLE.request("High-Value Recent", "friendly")
    from test_email_chain import good_draft

    live_server.script("gpt-4o-mini", ok(tool_args=good_draft(request)), ok(tool_args=good_draft(request)))
    settings = azure_settings(live_server.endpoint, offline_fallback=True)
    chain = build_email_chain(build_chat_model(settings), settings=settings)
    tracker = CostTracker(ledger=ledger)
    with caplog.at_level(logging.ERROR, logger="cpo"):
        first = chain.invoke(request, config={"callbacks": [tracker]})
        ledger.flush()
        second = chain.invoke(request, config={"callbacks": [tracker]})
        ledger.flush()
    holder.close()
    for variant in (first, second):
        assert variant.valid and variant.source == "azure" and not variant.fallback_used
    assert tracker.session.calls == 2 and tracker.session.cost_usd is not None and tracker.session.cost_usd > 0
    assert ledger.lost_rows == 2 and ledger.errors >= 2  # both calls' rows (and the session's) failed
    assert len([r for r in caplog.records if "write failed" in r.getMessage()]) == 1  # logged once
    assert tracker.summary()["accounting_errors"] == ledger.errors


def test_ledger_writes_do_not_stall_calls_in_flight(tmp_path: Path) -> None:
    """The ledger is locked for 1.5 s; 16 calls still finish at once and their rows land afterwards."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    holder = locked(path)
    threading.Timer(1.5, holder.close).start()
    tracker = CostTracker(ledger=ledger)
    chain = build_email_chain()
    requests = [BUNDLE.request(s.name, "urgent") for s in BUNDLE.segments] * 3
    started = time.perf_counter()
    chain.batch(requests, config={"callbacks": [tracker], "max_concurrency": 16})
    assert time.perf_counter() - started < 1.0
    assert ledger.flush(timeout=10)
    assert sum(r["calls"] for r in ledger.runs(tracker.session_id)) == len(requests)
    assert ledger.errors == 0


def test_a_tracker_failure_is_counted_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    tracker = CostTracker()
    with caplog.at_level(logging.ERROR, logger="cpo"):
        tracker.on_llm_end(None, run_id=__import__("uuid").uuid4())  # type: ignore[arg-type]
        tracker.on_chain_start(None, {}, run_id=None, parent_run_id=None)  # type: ignore[arg-type]
    assert tracker.accounting_errors == 0  # unknown runs are ignored, nothing failed
    tracker._calls[__import__("uuid").UUID(int=1)] = object()  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR, logger="cpo"):
        tracker.on_llm_end(None, run_id=__import__("uuid").UUID(int=1))  # type: ignore[arg-type]
    assert tracker.accounting_errors == 1
    assert "cost tracking failed in on_llm_end" in caplog.text


# -- ledger schema, location and errors ---------------------------------------------------------------------

V1_SCHEMA = """
CREATE TABLE calls (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, session_id TEXT NOT NULL, run_id TEXT NOT NULL,
 run_name TEXT, model TEXT NOT NULL, input_tokens INTEGER NOT NULL, cached_input_tokens INTEGER NOT NULL,
 output_tokens INTEGER NOT NULL, reasoning_tokens INTEGER NOT NULL, cost_usd TEXT, latency_s REAL NOT NULL,
 status TEXT NOT NULL, estimated INTEGER NOT NULL DEFAULT 0);
INSERT INTO calls VALUES (1, '2026-11-20T10:00:00.000+00:00', 's-old', 'r1', 'Gold/urgent', 'gpt-4o-mini', 100, 0,
 50, 0, '0.000045', 0.5, 'ok', 0);
"""


def v1_ledger(path: Path) -> Path:
    with sqlite3.connect(path) as conn:
        conn.executescript(V1_SCHEMA)
    return path


def test_a_v1_ledger_is_read_as_is_and_migrated_when_written(tmp_path: Path) -> None:
    path = v1_ledger(tmp_path / "ledger.sqlite")
    reader = Ledger(path, readonly=True)
    assert reader.version == 1 and reader.sessions()[0]["cost_usd"] == Decimal("0.000045")
    reader.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0  # reading changed nothing
    writer = Ledger(path)
    assert writer.version == SCHEMA_VERSION
    writer.append(CallRow("s-new", "r2", "x", "gpt-4o-mini", TokenCounts(10, 0, 5), Decimal("0.0000045"), 0.1, "ok"))
    writer.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    reader = Ledger(path, readonly=True)
    assert {s["id"]: s["cost_usd"] for s in reader.sessions()} == {
        "s-old": Decimal("0.000045"),
        "s-new": Decimal("0.0000045"),
    }


def test_a_ledger_from_a_newer_cpo_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    Ledger(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    for readonly in (True, False):
        with pytest.raises(LedgerError, match=r"has schema 99, written by a newer cpo"):
            Ledger(path, readonly=readonly)


def test_a_read_only_ledger_cannot_be_written(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    Ledger(path).close()
    with pytest.raises(LedgerError, match="opened read-only"):
        Ledger(path, readonly=True).append(CallRow("s", "r", None, "m", TokenCounts(), Decimal(0), 0.0, "ok"))


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: p.write_text("this is not sqlite " * 100), "cannot be used: file is not a database"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
    ids=["corrupt", "directory"],
)
def test_an_unusable_ledger_is_one_line(tmp_path: Path, setup: Any, message: str) -> None:
    path = tmp_path / "ledger.sqlite"
    setup(path)
    with pytest.raises(LedgerError) as caught:
        Ledger(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_python_api_writes_no_ledger_unless_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Before: the README's API example silently created ./runs/ledger.sqlite."""
    tracker = CostTracker.from_settings(Settings())
    build_email_chain().invoke(BUNDLE.request("New Customer", "friendly"), config={"callbacks": [tracker]})
    assert tracker.ledger is None and not Path("runs").exists()
    monkeypatch.setenv("CPO_LEDGER", str(tmp_path / "mine.sqlite"))
    asked = CostTracker.from_settings(Settings())
    assert asked.ledger is not None and asked.ledger.path == tmp_path / "mine.sqlite"
    asked.close()


def test_the_ledger_reports_a_session_with_an_unpriced_call_as_unknown(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    priced = CallRow("s", "r1", None, "gpt-4o-mini", TokenCounts(100, 0, 10), Decimal("0.000021"), 0.1, "ok")
    unpriced = CallRow("s", "r2", None, "llama-local", TokenCounts(100, 0, 10), None, 0.1, "ok")
    unknown = CallRow("s", "r3", None, "gpt-4o-mini", TokenCounts(), None, 0.1, "unknown-cost:APITimeoutError")
    for row in (priced, unpriced, unknown):
        ledger.append(row)
    (session,) = ledger.sessions()
    assert session["cost_usd"] is None and session["unpriced_calls"] == 1 and session["unknown_cost_calls"] == 1
    runs = {r["id"]: r for r in ledger.runs("s")}
    assert runs["r1"]["cost_usd"] == Decimal("0.000021")
    assert runs["r3"]["cost_usd"] == Decimal(0) and runs["r3"]["unknown_cost_calls"] == 1  # a number, and a count
    ledger.close()


# -- pricing ------------------------------------------------------------------------------------------------


def price_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    return path


@pytest.mark.live_server
def test_the_price_files_deployment_mapping_prices_a_reply_that_names_no_model(
    live_server: Any, tmp_path: Path
) -> None:
    """Before: `deployments:` was documented but never consulted."""
    live_server.script("prod-mini", ok("hi", omit_model=True))
    prices = PriceBook(price_file(tmp_path, "deployments:\n  prod-mini: gpt-4o-mini-2024-07-18\n"))
    tracker = CostTracker(prices=prices)
    build_chat_model(azure_settings(live_server.endpoint, "prod-mini")).invoke("Hi.", config={"callbacks": [tracker]})
    billed = live_server.billed[0]
    assert list(tracker.session.by_model) == ["gpt-4o-mini-2024-07-18"]
    assert tracker.session.cost_usd == mini(billed["prompt_tokens"], billed["completion_tokens"])


@pytest.mark.live_server
def test_per_deployment_prices_win_over_the_models_list_price(live_server: Any, tmp_path: Path) -> None:
    """A Data Zone deployment of gpt-4o-mini bills 10% more than Global: price by the deployment."""
    live_server.script("dz-mini", ok("hi"))
    prices = PriceBook(
        price_file(
            tmp_path,
            "deployments:\n"
            "  dz-mini: {model: gpt-4o-mini-2024-07-18, input: 0.165, cached_input: 0.083, output: 0.66}\n",
        )
    )
    tracker = CostTracker(prices=prices)
    build_chat_model(azure_settings(live_server.endpoint, "dz-mini")).invoke("Hi.", config={"callbacks": [tracker]})
    billed = live_server.billed[0]
    expected = (billed["prompt_tokens"] * Decimal("0.165") + billed["completion_tokens"] * Decimal("0.66")) / Decimal(
        1_000_000
    )
    assert tracker.session.cost_usd == expected


@pytest.mark.live_server
def test_an_azure_deployment_name_is_never_priced_as_a_model(live_server: Any) -> None:
    """A deployment called "gpt-4o" whose reply names no model and carries no usage: unknown, not gpt-4o's price."""
    live_server.script("gpt-4o", ok("hi", omit_model=True, omit_usage=True))
    tracker = CostTracker()
    build_chat_model(azure_settings(live_server.endpoint, "gpt-4o")).invoke("Hi.", config={"callbacks": [tracker]})
    assert tracker.session.cost_usd is None
    assert list(tracker.session.by_model) == ["<unreported>"]
    assert tracker.model_hint({"_type": "azure-openai-chat", "azure_deployment": "gpt-4o", "model": None}) is None


@pytest.mark.live_server
def test_a_reply_without_usage_is_counted_locally_output_included(live_server: Any) -> None:
    text = "A reply of a known length, counted with tiktoken because the server sent no usage."
    live_server.script("local", ok(text, omit_usage=True))
    tracker = CostTracker()
    reply = build_chat_model(azure_settings(live_server.endpoint, "local")).invoke(
        "Hi.", config={"callbacks": [tracker]}
    )
    session = tracker.session
    assert reply.content == text and session.estimated_calls == 1
    from cpo.net.tokens import count_text_tokens, count_tokens

    assert session.output_tokens == count_text_tokens(text) > 10
    assert session.input_tokens == count_tokens([("human", "Hi.")])
    assert session.cost_usd == mini(session.input_tokens, session.output_tokens)
