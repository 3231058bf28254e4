"""Each node of the campaign graph (`cpo.campaign.nodes`), called on its own: no graph, except for `review`.

The graph only wires these functions, so a wrong count, a file not written or an email paid for twice is
a node's fault, and is caught here one node at a time. The state is built by the real nodes (load_segment,
retrieve_content, generate with the offline chain) once per module; each test works on a copy of that run
directory, because the nodes after load_segment reopen its DuckDB file. `review` needs LangGraph's
`interrupt`, so it runs in a one-node graph with an in-memory checkpointer.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import csv
import json
import shutil
import sqlite3
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import duckdb
import pytest
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command

from cpo.accounting.ledger import CallRow, Ledger
from cpo.accounting.tracker import CostTracker
from cpo.campaign import nodes, stages
from cpo.campaign.agents.assignment import DEFAULT_ARMS, SMALL_CELL
from cpo.campaign.agents.safety import CATEGORIES, load_policy
from cpo.campaign.audit import read_rows, verify
from cpo.campaign.guard import Guard
from cpo.campaign.kept import KeptEmails, request_key
from cpo.campaign.nodes import Tools
from cpo.campaign.rundir import AUDIT_FILE, DATABASE, RETRIEVAL_FILE, SCREENING_FILE
from cpo.campaign.state import CampaignState, Inputs
from cpo.core.errors import BudgetExceeded
from cpo.core.models import EmailRequest, EmailVariant, ValidationIssue
from cpo.core.resources import bundled
from cpo.core.usage import TokenCounts
from cpo.email.chain import build_email_chain
from cpo.llm.offline import OfflineChatModel

CUSTOMERS = bundled("data") / "customers.csv"
TOTAL, NO_CONSENT, ELIGIBLE = 250, 9, 241
SEGMENTS = ("Business Bulk Buyer", "High-Value Recent", "Lapsed", "New Customer", "Regular")
EMAILS = len(SEGMENTS) * len(DEFAULT_ARMS)  # 20
POSTAL = "Northwind Supply, 100 Example Street, Springfield, IL 62701, USA"  # the sample campaign's
CONFIG: RunnableConfig = {"callbacks": []}
Run = tuple[Path, Any]  # a run directory and the graph's state for it (a CampaignState)


def inputs_for(run_dir: Path, **extra: Any) -> Inputs:
    inputs = {"customers": str(CUSTOMERS), "campaign": None, "suppress": None, "seed": 7, "run_dir": str(run_dir)}
    return cast(Inputs, {**inputs, **extra})


def key_of(request: dict[str, Any]) -> str:
    return request_key(EmailRequest.model_validate(request))


def offline_tools(**extra: Any) -> Tools:
    return Tools(chain=build_email_chain(OfflineChatModel()), **extra)


def as_chain(answer: Callable[[EmailRequest], Awaitable[EmailVariant]]) -> Runnable[EmailRequest, EmailVariant]:
    """An email chain made of one async function (generate only calls `ainvoke`)."""

    def sync(_: EmailRequest) -> EmailVariant:
        raise AssertionError("generate must call the chain asynchronously")

    return RunnableLambda(sync, afunc=answer)


def scripted(*outcomes: EmailVariant | Exception) -> tuple[Runnable[EmailRequest, EmailVariant], list[EmailRequest]]:
    """A chain that returns (or raises) the given outcomes in turn, and the requests it was called with."""
    calls: list[EmailRequest] = []

    async def answer(request: EmailRequest) -> EmailVariant:
        calls.append(request)
        outcome = outcomes[len(calls) - 1]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return as_chain(answer), calls


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def variant_of(state: dict[str, Any], segment: str, tone: str) -> dict[str, Any]:
    return next(v for v in state["variants"].values() if v["segment"] == segment and v["tone"] == tone)


def one_row_per_customer(run_dir: Path, table: str) -> tuple[int, int]:
    con = duckdb.connect(str(run_dir / DATABASE), read_only=True)
    try:
        found = con.execute(f"SELECT count(*), count(DISTINCT customer_id) FROM {table}").fetchone()
    finally:
        con.close()
    assert found is not None
    return int(found[0]), int(found[1])


@pytest.fixture(autouse=True)
def local_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded index and the local safety policy, whatever the developer's environment says."""
    monkeypatch.delenv("AZURE_CONTENT_SAFETY_ENDPOINT", raising=False)
    monkeypatch.delenv("AZURE_SEARCH_ENDPOINT", raising=False)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A run directory and its state after load_segment, retrieve_content and all 20 generate tasks (offline)."""
    run_dir = tmp_path_factory.mktemp("prepared")
    tools = offline_tools(guard=Guard(concurrency=1))  # the chain's first call warms up; four at once are slower
    state: Any = {"inputs": inputs_for(run_dir)}
    state.update(nodes.load_segment(state, tools))
    state.update(nodes.retrieve_content(state, tools))

    async def generate_all() -> list[CampaignState]:
        return list(await asyncio.gather(*(nodes.generate(s.arg, CONFIG, tools) for s in nodes.fan_out(state))))

    state["variants"] = {k: v for update in asyncio.run(generate_all()) for k, v in (update["variants"] or {}).items()}
    assert len(state["variants"]) == EMAILS, "every email of the sample campaign is generated offline"
    return run_dir, state


@pytest.fixture
def run(prepared: Run, tmp_path: Path) -> Run:
    """A copy of the prepared run directory, with a state of its own pointing at it."""
    source, state = prepared
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    state = copy.deepcopy(state)
    state["inputs"]["run_dir"] = str(run_dir)
    return run_dir, state


@pytest.fixture
def assigned(run: Run) -> Run:
    """The copied run after screen and assign (export reads the `assignments` table, and sends only what was
    screened as it is sent)."""
    run_dir, state = run
    state.update(nodes.screen(state, CONFIG, offline_tools()))
    state.update(nodes.assign(state))
    return run_dir, state


# load_segment


def test_load_segment_counts_the_excluded_and_summarises_five_segments(tmp_path: Path) -> None:
    excluded: list[list[tuple[str, str]]] = []
    stale = {"variants": {"old": {}}, "failures": {"old": "x"}, "skipped": {"old": "budget"}}
    state: Any = {"inputs": inputs_for(tmp_path), **stale}

    update = nodes.load_segment(state, offline_tools(on_excluded=excluded.append))

    assert update["counts"] == {
        "total": TOTAL,
        "no_consent": NO_CONSENT,
        "no_consent_recorded": 0,
        "suppressed": 0,
        "suppress_unmatched": 0,
        "eligible": TOTAL - NO_CONSENT,
    }
    assert sorted(s["name"] for s in update["segments"]) == list(SEGMENTS)
    assert sum(s["size"] for s in update["segments"]) == ELIGIBLE
    assert sum(s["share"] for s in update["segments"]) == pytest.approx(1.0)
    assert update["variants"] is None and update["failures"] is None and update["skipped"] is None  # a new pass
    assert len(excluded) == 1 and len(excluded[0]) == NO_CONSENT
    assert {reason for _, reason in excluded[0]} == {"no consent"}
    assert one_row_per_customer(tmp_path, "customers") == (ELIGIBLE, ELIGIBLE)


def test_load_segment_leaves_out_the_suppressed_customers(tmp_path: Path) -> None:
    suppress = tmp_path / "suppress.csv"
    suppress.write_text("customer_id\nC000001\nC000002\nC000003\n", encoding="utf-8")
    excluded: list[tuple[str, str]] = []
    (tmp_path / "run").mkdir()
    state: Any = {"inputs": inputs_for(tmp_path / "run", suppress=str(suppress))}

    update = nodes.load_segment(state, offline_tools(on_excluded=excluded.extend))

    assert update["counts"] == {
        "total": TOTAL,
        "no_consent": NO_CONSENT,
        "suppressed": 3,
        "no_consent_recorded": 0,
        "suppress_unmatched": 0,
        "eligible": TOTAL - NO_CONSENT - 3,
    }
    assert sum(s["size"] for s in update["segments"]) == ELIGIBLE - 3
    assert sorted(i for i, reason in excluded if reason == "suppressed") == ["C000001", "C000002", "C000003"]


# retrieve_content


def test_retrieve_content_plans_one_request_per_segment_and_arm(run: Run) -> None:
    run_dir, state = run
    (run_dir / RETRIEVAL_FILE).unlink()

    update = nodes.retrieve_content(state, offline_tools())

    requests = [EmailRequest.model_validate(r) for r in update["requests"]]
    assert len(requests) == EMAILS
    assert {(r.segment.name, r.tone) for r in requests} == {(s, a) for s in SEGMENTS for a in DEFAULT_ARMS}
    assert len({request_key(r) for r in requests}) == EMAILS
    assert sorted(update["retrieval"]) == list(SEGMENTS)
    for r in requests:  # every email cites only what its segment's retrieval chose
        assert {s.id for s in r.snippets} <= set(update["retrieval"][r.segment.name]["used"])
    assert json.loads((run_dir / RETRIEVAL_FILE).read_text(encoding="utf-8")) == update["retrieval"]


def test_retrieve_content_searches_the_index_it_is_given(run: Run) -> None:
    from cpo.campaign.backends import embedded_index

    class CountingIndex:
        name = "counting-index"

        def __init__(self) -> None:
            self.inner, self.queries = embedded_index(), 0

        def build(self, snippets: Any) -> None:
            self.inner.build(snippets)

        def search(self, query: str, *, audience: str | None, top: int) -> Any:
            self.queries += 1
            return self.inner.search(query, audience=audience, top=top)

    index = CountingIndex()
    update = nodes.retrieve_content(run[1], offline_tools(index=index))

    assert index.queries >= len(SEGMENTS)
    assert {r["backend"] for r in update["retrieval"].values()} == {"counting-index"}


# fan_out


def test_fan_out_sends_one_generate_task_per_request_with_the_run_dir(run: Run) -> None:
    run_dir, state = run

    sends = nodes.fan_out(state)

    assert [s.node for s in sends] == [stages.GENERATE] * EMAILS
    assert [s.arg for s in sends] == [{"request": r, "run_dir": str(run_dir)} for r in state["requests"]]


def test_fan_out_sends_nothing_without_requests(tmp_path: Path) -> None:
    assert nodes.fan_out({"inputs": inputs_for(tmp_path)}) == []


# generate


async def test_generate_returns_a_kept_email_without_calling_the_chain(run: Run) -> None:
    run_dir, state = run
    request = state["requests"][0]
    chain, calls = scripted()

    update = await nodes.generate({"request": request, "run_dir": str(run_dir)}, CONFIG, Tools(chain=chain))

    assert calls == []
    assert update == {"variants": {key_of(request): state["variants"][key_of(request)]}}


async def test_generate_checks_a_kept_email_by_the_chains_own_limits(run: Run, tmp_path: Path) -> None:
    """A kept email is checked again by the rules its chain validates with (`--limits`), not the defaults."""
    from cpo.email.validation import ValidationLimits

    _, state = run
    request = state["requests"][0]
    kept = dict(state["variants"][key_of(request)])
    words = len(kept["body"].split())
    KeptEmails(tmp_path).keep(key_of(request), kept)
    payload = {"request": request, "run_dir": str(tmp_path)}

    strict = build_email_chain(OfflineChatModel(), limits=ValidationLimits(body_min_words=1, body_max_words=words - 20))
    update = await nodes.generate(payload, CONFIG, Tools(chain=strict))
    checked = EmailVariant.model_validate(update["variants"][key_of(request)])
    assert not checked.valid and {"body_length", "kept_recheck"} <= checked.validation.codes
    assert checked.variant_id == kept["variant_id"] and checked.body == kept["body"]  # marked, not rewritten

    update = await nodes.generate(payload, CONFIG, offline_tools())
    assert update == {"variants": {key_of(request): kept}}  # passes today's default rules: returned as kept


async def test_generate_keeps_a_new_email_on_disk_and_returns_it(run: Run, tmp_path: Path) -> None:
    _, state = run
    request = state["requests"][5]
    variant = EmailVariant.model_validate(state["variants"][key_of(request)])
    chain, calls = scripted(variant)
    fresh = tmp_path / "fresh"

    update = await nodes.generate({"request": request, "run_dir": str(fresh)}, CONFIG, Tools(chain=chain))

    assert [request_key(c) for c in calls] == [key_of(request)]
    assert update == {"variants": {key_of(request): variant.model_dump(mode="json")}}
    assert KeptEmails(fresh).all() == update["variants"]


async def test_generate_skips_the_email_once_the_guard_has_halted(run: Run, tmp_path: Path) -> None:
    _, state = run
    request = state["requests"][0]
    chain, calls = scripted()
    guard = Guard()
    guard.halt("budget")

    update = await nodes.generate({"request": request, "run_dir": str(tmp_path)}, CONFIG, Tools(chain, guard))

    assert update == {"skipped": {key_of(request): "budget"}}
    assert calls == [] and not KeptEmails(tmp_path).exists()


async def test_generate_turns_a_chain_error_into_a_one_line_failure(run: Run, tmp_path: Path) -> None:
    _, state = run
    request = state["requests"][0]
    chain, _ = scripted(ValueError("the model answered nonsense\nTraceback: ..."))
    guard = Guard()

    update = await nodes.generate({"request": request, "run_dir": str(tmp_path)}, CONFIG, Tools(chain, guard))

    assert update == {"failures": {key_of(request): "the model answered nonsense"}}
    assert guard.dispatching  # one bad email does not stop the others
    assert not KeptEmails(tmp_path).exists()


async def test_generate_skips_on_a_budget_refusal_and_halts_the_guard(run: Run, tmp_path: Path) -> None:
    _, state = run
    first, second = state["requests"][:2]
    chain, calls = scripted(BudgetExceeded(Decimal("0.99"), Decimal("1")))
    tools = Tools(chain, Guard())

    refused = await nodes.generate({"request": first, "run_dir": str(tmp_path)}, CONFIG, tools)
    after = await nodes.generate({"request": second, "run_dir": str(tmp_path)}, CONFIG, tools)

    assert refused == {"skipped": {key_of(first): "budget"}}
    assert after == {"skipped": {key_of(second): "budget"}}
    assert tools.guard.stopped_by == "budget" and len(calls) == 1  # the next email never reached the chain
    assert not KeptEmails(tmp_path).exists()


@pytest.mark.parametrize(("code", "kept"), [("budget", False), ("interrupted", False), ("subject_length", True)])
async def test_generate_does_not_keep_an_email_stopped_by_the_budget_or_ctrl_c(
    run: Run, tmp_path: Path, code: str, kept: bool
) -> None:
    _, state = run
    request = state["requests"][0]
    variant = EmailVariant.model_validate(state["variants"][key_of(request)])
    issue = ValidationIssue(code=code, message=f"stopped: {code}")
    unfinished = variant.model_copy(
        update={"validation": variant.validation.model_copy(update={"valid": False, "issues": [issue]})}
    )
    chain, _ = scripted(unfinished)

    update = await nodes.generate({"request": request, "run_dir": str(tmp_path)}, CONFIG, Tools(chain=chain))

    assert update == {"variants": {key_of(request): unfinished.model_dump(mode="json")}}
    assert KeptEmails(tmp_path).path(key_of(request)).is_file() is kept  # an invalid but final email is kept


async def test_generate_commits_the_ledger_before_keeping_the_email(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class SlowLedger(Ledger):
        """Commits each batch 50 ms late, so an email kept without a flush would find its call missing."""

        def _write(self, conn: Any, rows: Any) -> None:
            time.sleep(0.05)
            super()._write(conn, rows)

    _, state = run
    request = state["requests"][0]
    variant = EmailVariant.model_validate(state["variants"][key_of(request)])
    ledger = SlowLedger(tmp_path / "ledger.sqlite")

    def committed_calls() -> int:
        with contextlib.closing(sqlite3.connect(ledger.path)) as reader:
            return int(reader.execute("SELECT count(*) FROM calls").fetchone()[0])

    tracker = CostTracker(ledger=ledger)
    committed_when_kept: list[int] = []

    async def paid_call(_: EmailRequest) -> EmailVariant:
        ledger.append(CallRow(tracker.session_id, "run", None, "m", TokenCounts(10, 0, 5), Decimal("0.01"), 0.1, "ok"))
        return variant

    real_keep = KeptEmails.keep

    def keep(self: KeptEmails, key: str, data: dict[str, Any]) -> None:
        committed_when_kept.append(committed_calls())
        real_keep(self, key, data)

    monkeypatch.setattr(KeptEmails, "keep", keep)
    chain = as_chain(paid_call)
    try:
        await nodes.generate({"request": request, "run_dir": str(tmp_path)}, {"callbacks": [tracker]}, Tools(chain))
    finally:
        ledger.close()

    assert committed_when_kept == [1]
    assert KeptEmails(tmp_path).path(key_of(request)).is_file()


async def test_no_email_file_appears_while_its_cost_is_not_committed(run: Run, tmp_path: Path) -> None:
    """Ledger before file, without timing: the ledger's writer is held on an event; while it is, the paid email
    must not be on disk (a resumed run would reuse it without its cost in the ledger); once released, it is."""
    import threading

    release = threading.Event()

    class HeldLedger(Ledger):
        def _write(self, conn: Any, rows: Any) -> None:
            release.wait(10)
            super()._write(conn, rows)

    _, state = run
    request = state["requests"][0]
    variant = EmailVariant.model_validate(state["variants"][key_of(request)])
    ledger = HeldLedger(tmp_path / "ledger.sqlite")
    tracker = CostTracker(ledger=ledger)
    answered = asyncio.Event()

    async def paid_call(_: EmailRequest) -> EmailVariant:
        ledger.append(CallRow(tracker.session_id, "run", None, "m", TokenCounts(10, 0, 5), Decimal("0.01"), 0.1, "ok"))
        answered.set()
        return variant

    kept = KeptEmails(tmp_path).path(key_of(request))
    task = asyncio.ensure_future(
        nodes.generate(
            {"request": request, "run_dir": str(tmp_path)}, {"callbacks": [tracker]}, Tools(as_chain(paid_call))
        )
    )
    try:
        await asyncio.wait_for(answered.wait(), 5)
        for _ in range(20):  # 0.2 s of the node's own time: plenty to write a file it should not write
            await asyncio.sleep(0.01)
            assert not kept.exists(), "the email was kept before its cost reached the ledger"
        assert not task.done()  # it is waiting for the ledger
        release.set()
        await asyncio.wait_for(task, 5)
    finally:
        release.set()
        ledger.close()
    assert kept.is_file()
    with contextlib.closing(sqlite3.connect(tmp_path / "ledger.sqlite")) as reader:
        assert reader.execute("SELECT count(*) FROM calls").fetchone()[0] == 1


async def test_generate_holds_no_more_emails_in_flight_than_the_guard_allows(run: Run, tmp_path: Path) -> None:
    _, state = run
    by_key = {k: EmailVariant.model_validate(v) for k, v in state["variants"].items()}
    in_flight, peak = 0, 0

    async def slow(request: EmailRequest) -> EmailVariant:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return by_key[request_key(request)]

    tools = Tools(chain=as_chain(slow), guard=Guard(concurrency=2))
    payloads = [{"request": r, "run_dir": str(tmp_path)} for r in state["requests"][:6]]

    updates = await asyncio.gather(*(nodes.generate(p, CONFIG, tools) for p in payloads))

    assert peak == 2
    assert all("variants" in u for u in updates) and len(KeptEmails(tmp_path).all()) == 6


# gather, go_on


def test_gather_changes_nothing(run: Run) -> None:
    assert nodes.gather(run[1]) == {}


@pytest.mark.parametrize(
    ("skipped", "next_node"),
    [(None, stages.TEMPLATE), ({}, stages.TEMPLATE), ({"abc": "budget"}, END), ({"abc": "interrupted"}, END)],
)
def test_go_on_ends_a_stopped_run_and_goes_on_with_a_finished_one(
    skipped: dict[str, str] | None, next_node: str
) -> None:
    assert nodes.go_on({"skipped": skipped}) == next_node


# screen


def test_screen_decides_every_variant_and_audits_each_once(run: Run) -> None:
    run_dir, state = run
    heads: list[tuple[str, int]] = []
    tools = offline_tools(on_audit=lambda head, rows: heads.append((head, rows)))

    update = nodes.screen(state, {"configurable": {"thread_id": "run-42"}}, tools)

    decisions = update["screening"]
    assert set(decisions) == {v["variant_id"] for v in state["variants"].values()}
    assert not any(d["blocked"] for d in decisions.values())
    assert {d["backend"] for d in decisions.values()} == {"local-policy"}
    assert json.loads((run_dir / SCREENING_FILE).read_text(encoding="utf-8")) == decisions
    rows = read_rows(run_dir / AUDIT_FILE)
    assert [r["variant_id"] for r in rows] == list(decisions)
    assert {(r["run_id"], r["decision"]) for r in rows} == {("run-42", "pass")}
    assert [n for _, n in heads] == list(range(1, EMAILS + 1))
    assert verify(run_dir / AUDIT_FILE, "run-42", {"on_audit": heads[-1][0]}).ok


def test_screen_names_the_run_after_its_directory_without_a_thread_id(run: Run) -> None:
    run_dir, state = run

    nodes.screen(state, CONFIG, offline_tools())

    assert {r["run_id"] for r in read_rows(run_dir / AUDIT_FILE)} == {run_dir.name}


def test_screen_again_keeps_the_earlier_decisions_and_audits_nothing_new(run: Run) -> None:
    run_dir, state = run
    first = nodes.screen(state, CONFIG, offline_tools())
    audited = (run_dir / AUDIT_FILE).read_text(encoding="utf-8")
    heads: list[tuple[str, int]] = []

    again = nodes.screen(state, CONFIG, offline_tools(on_audit=lambda h, n: heads.append((h, n))))

    assert again == first
    assert (run_dir / AUDIT_FILE).read_text(encoding="utf-8") == audited
    assert heads == []


class FlakyScreen:
    """A safety backend that raises while `down`, else rates every text 0 (or `severity` for one text)."""

    name = "flaky"

    def __init__(self, down: bool = False, flagged: str = "", severity: int = 0) -> None:
        self.down, self.flagged, self.severity, self.calls = down, flagged, severity, 0

    def analyze(self, text: str) -> dict[str, int]:
        self.calls += 1
        if self.down:
            raise ConnectionError("content safety endpoint down")
        violence = self.severity if self.flagged and self.flagged in text else 0
        return {**dict.fromkeys(CATEGORIES, 0), "Violence": violence}


def test_screen_fails_closed_and_screens_unavailable_decisions_again(run: Run) -> None:
    run_dir, state = run
    backend = FlakyScreen(down=True)

    closed = nodes.screen(state, CONFIG, offline_tools(screen=backend))["screening"]

    assert len(closed) == EMAILS
    assert all(d["blocked"] for d in closed.values())
    assert {tuple(d["reasons"]) for d in closed.values()} == {("screening unavailable: content safety endpoint down",)}
    assert [r["decision"] for r in read_rows(run_dir / AUDIT_FILE)] == ["block"] * EMAILS

    backend.down = False
    reopened = nodes.screen(state, CONFIG, offline_tools(screen=backend))["screening"]

    assert backend.calls == 2 * EMAILS
    assert not any(d["blocked"] for d in reopened.values())
    assert [r["decision"] for r in read_rows(run_dir / AUDIT_FILE)] == ["block"] * EMAILS + ["pass"] * EMAILS


@pytest.mark.parametrize(("threshold", "blocked"), [(4, True), (7, False)])
def test_screen_blocks_a_severity_at_the_policy_threshold(run: Run, threshold: int, blocked: bool) -> None:
    _, state = run
    target = variant_of(state, "Lapsed", "urgent")
    policy = load_policy().model_copy(update={"threshold": threshold})
    words = target["body"].rsplit("\n\n", 1)[0]  # up to the sign-off: as sent, the call to action follows
    assert [v["body"] for v in state["variants"].values()].count(target["body"]) == 1
    assert sum(v["body"].startswith(words) for v in state["variants"].values()) == 1
    backend = FlakyScreen(flagged=words, severity=6)

    decisions = nodes.screen(state, CONFIG, offline_tools(screen=backend, policy=policy))["screening"]

    assert [v for v, d in decisions.items() if d["blocked"]] == ([target["variant_id"]] if blocked else [])
    if blocked:
        assert decisions[target["variant_id"]]["reasons"] == ["Violence severity 6 is at or above the threshold 4"]


# review (through a one-node graph: it interrupts)


def review_graph() -> Any:
    graph = StateGraph(CampaignState)
    graph.add_node(stages.REVIEW, nodes.review)
    graph.add_edge(START, stages.REVIEW)
    graph.add_edge(stages.REVIEW, END)
    return graph.compile(checkpointer=InMemorySaver())


def screened(**blocked: bool) -> dict[str, dict[str, Any]]:
    return {v: {"blocked": b, "reasons": ["Hate severity 5"] if b else []} for v, b in blocked.items()}


def test_review_pauses_and_returns_the_decisions_of_the_pending_variants_only(tmp_path: Path) -> None:
    graph = review_graph()
    config = {"configurable": {"thread_id": "review-1"}}
    state = {"inputs": inputs_for(tmp_path, review=True), "screening": screened(c=False, a=False, b=True)}

    paused = graph.invoke(state, config)

    assert [i.value for i in paused["__interrupt__"]] == [{"awaiting_review": ["a", "c"]}]
    assert graph.get_state(config).next == (stages.REVIEW,)

    approve = {"decision": "approve", "reviewer": "ana", "reason": ""}
    reject = {"decision": "reject", "reviewer": "ana", "reason": "off brand"}
    decisions = {"a": approve, "b": approve, "c": reject, "unknown": approve}
    done = graph.invoke(Command(resume=decisions), config)

    assert done["review"] == {"a": approve, "c": reject}  # not the blocked "b", nor a variant it never showed
    assert graph.get_state(config).next == ()


def test_review_without_the_review_option_returns_nothing_and_does_not_pause(tmp_path: Path) -> None:
    graph = review_graph()
    config = {"configurable": {"thread_id": "review-2"}}

    done = graph.invoke({"inputs": inputs_for(tmp_path), "screening": screened(a=False)}, config)

    assert "__interrupt__" not in done and "review" not in done
    assert graph.get_state(config).next == ()


# assign


def test_assign_puts_every_eligible_customer_in_exactly_one_arm(run: Run) -> None:
    run_dir, state = run

    assignment = nodes.assign(state)["assignment"]

    assert assignment["total"] == ELIGIBLE
    assert list(assignment["per_arm"]) == list(DEFAULT_ARMS)
    assert sum(assignment["per_arm"].values()) == ELIGIBLE
    cells = {(s, a): n for s, a, n in assignment["cells"]}
    assert sum(cells.values()) == ELIGIBLE
    sizes = {s["name"]: s["size"] for s in state["segments"]}
    for segment, size in sizes.items():
        assert sum(n for (s, _), n in cells.items() if s == segment) == size
    assert assignment["small_cells"] == [(s, a, n) for s, a, n in assignment["cells"] if n < SMALL_CELL]
    assert one_row_per_customer(run_dir, "assignments") == (ELIGIBLE, ELIGIBLE)


def test_assign_is_deterministic_for_a_seed(run: Run) -> None:
    _, state = run

    first, again = nodes.assign(state), nodes.assign(state)
    state["inputs"]["seed"] = 8
    other = nodes.assign(state)

    assert first == again
    assert other["assignment"]["total"] == ELIGIBLE and other["assignment"]["cells"] != first["assignment"]["cells"]


def test_assign_holds_out_the_campaign_files_share(run: Run, tmp_path: Path) -> None:
    _, state = run
    default = bundled("data") / "campaign.yaml"
    text = default.read_text(encoding="utf-8").replace("holdout: 0.0", "holdout: 0.3")
    text = text.replace("rules: segment_rules.yaml", f"rules: {bundled('data') / 'segment_rules.yaml'}")
    assert "holdout: 0.3" in text
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(text, encoding="utf-8")
    state["inputs"]["campaign"] = str(campaign)

    per_arm = nodes.assign(state)["assignment"]["per_arm"]

    assert list(per_arm) == ["holdout", *DEFAULT_ARMS]
    assert sum(per_arm.values()) == ELIGIBLE
    assert 0.15 * ELIGIBLE < per_arm["holdout"] < 0.45 * ELIGIBLE


# export


def test_export_writes_the_four_files_an_email_platform_imports(assigned: Run) -> None:
    run_dir, state = assigned

    update = nodes.export(state, CONFIG, offline_tools())

    assert update == {
        "delivery": {
            "substituted": [],
            "unsent": [],
            "unsent_customers": {},
            "address_dropped": {},
            "rendered": None,
            "withheld": {},
        }
    }
    templates = json.loads((run_dir / "templates.json").read_text(encoding="utf-8"))
    ordered = [state["variants"][key_of(r)]["variant_id"] for r in state["requests"]]
    assert [t["variant_id"] for t in templates] == ordered  # request order: segment, then arm
    assert all(t["sendable"] and t["withheld"] is None for t in templates)
    assert all(t["body"].endswith("Unsubscribe: {{ unsubscribe_url }}\n" + POSTAL) for t in templates)
    assert [r["segment"] for r in csv_rows(run_dir / "segments.csv")] == [s["name"] for s in state["segments"]]
    assignments = csv_rows(run_dir / "assignments.csv")
    assert len(assignments) == ELIGIBLE and all(r["delivered_variant"] in ordered for r in assignments)
    own = {(v["segment"], v["tone"]): v["variant_id"] for v in state["variants"].values()}
    assert all(r["delivered_variant"] == own[(r["segment"], r["arm"])] for r in assignments)  # each arm its own email
    send_list = csv_rows(run_dir / "send_list.csv")
    assert [(r["customer_id"], r["variant_id"]) for r in send_list] == [
        (r["customer_id"], r["delivered_variant"]) for r in assignments
    ]


@pytest.mark.parametrize("how", ["blocked by screening", "rejected in review"])
def test_export_withholds_a_variant_and_sends_its_segments_control_instead(assigned: Run, how: str) -> None:
    run_dir, state = assigned
    bad = variant_of(state, "Regular", "urgent")["variant_id"]
    control = variant_of(state, "Regular", "control")["variant_id"]
    if how == "blocked by screening":
        state["screening"][bad].update({"blocked": True, "reasons": ["Violence severity 6"]})
        reason = "blocked by screening: Violence severity 6"
    else:
        state["review"] = {bad: {"decision": "reject", "reviewer": "ana", "reason": "off brand"}}
        reason = "rejected in review by ana: off brand"
    cells = {(s, a): n for s, a, n in state["assignment"]["cells"]}

    delivery = nodes.export(state, CONFIG, offline_tools())["delivery"]

    assert delivery["substituted"] == [("Regular", "urgent")] and delivery["unsent"] == []
    assert delivery["withheld"] == {bad: reason}
    template = next(t for t in json.loads((run_dir / "templates.json").read_text()) if t["variant_id"] == bad)
    assert template["sendable"] is False and template["withheld"] == reason
    urgent = [r for r in csv_rows(run_dir / "assignments.csv") if (r["segment"], r["arm"]) == ("Regular", "urgent")]
    assert len(urgent) == cells[("Regular", "urgent")]
    assert {r["delivered_variant"] for r in urgent} == {control}
    send_list = csv_rows(run_dir / "send_list.csv")
    assert len(send_list) == ELIGIBLE and bad not in {r["variant_id"] for r in send_list}


def test_export_sends_nothing_to_a_control_arm_whose_control_is_blocked(assigned: Run) -> None:
    run_dir, state = assigned
    control = variant_of(state, "Regular", "control")["variant_id"]
    state["screening"][control].update({"blocked": True, "reasons": ["Hate severity 5"]})
    cells = {(s, a): n for s, a, n in state["assignment"]["cells"]}

    delivery = nodes.export(state, CONFIG, offline_tools())["delivery"]

    assert delivery["unsent"] == ["Regular"] and delivery["substituted"] == []
    send_list = csv_rows(run_dir / "send_list.csv")
    assert len(send_list) == ELIGIBLE - cells[("Regular", "control")]
    assert control not in {r["variant_id"] for r in send_list}


def test_the_graph_wires_every_node_tested_here() -> None:
    """A node added to the graph without a test here shows up as a name this list lacks."""
    from cpo.campaign.graph import build_pipeline

    tested = {
        stages.LOAD_SEGMENT,
        stages.RETRIEVE,
        stages.GENERATE,
        stages.GATHER,
        stages.TEMPLATE,  # tests/test_template_control.py
        stages.SCREEN,
        stages.REVIEW,
        stages.ASSIGN,
        stages.EXPORT,
    }
    assert set(build_pipeline(offline_tools()).nodes) - {"__start__"} == tested
