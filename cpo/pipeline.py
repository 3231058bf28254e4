"""The campaign pipeline: a LangGraph graph that only wires the agents.

    load_segment -> retrieve -> generate (one task per segment x arm, fanned out) -> gather
      -> screen -> review -> assign -> export

Durable: compiled with a checkpointer (AsyncSqliteSaver in the run directory by default), the run id is
the thread id, and resuming a thread re-runs only the tasks that had not finished: emails already
generated are not paid for twice. State stays small: customer rows live in a DuckDB file in the run
directory (`customers.duckdb`), state holds segment summaries, requests and variants. The chain and
the cost tracker are passed in when the graph is built, never created inside a node.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NotRequired, TypedDict

from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send, interrupt

from cpo.agents.assignment import DEFAULT_ARMS, assign_customers
from cpo.agents.campaign import load_campaign
from cpo.agents.content_index import ContentIndex
from cpo.agents.export import RENDER_LIMIT, export_campaign, render_emails, sendable
from cpo.agents.generation import PER_CUSTOMER_LIMIT, email_requests, personal_requests
from cpo.agents.load import LoadedCustomers, load_customers
from cpo.agents.retrieval import SegmentRetrieval, retrieve
from cpo.agents.safety import (
    UNAVAILABLE,
    SafetyPolicy,
    Screen,
    build_screen,
    default_policy_file,
    load_policy,
    screen_variant,
)
from cpo.agents.segmentation import Segment, segment_customers
from cpo.agents.sqlite_index import SqliteFtsIndex
from cpo.audit import AuditLog
from cpo.content import load_snippets
from cpo.costs import trackers_in
from cpo.errors import InputError
from cpo.files import write_atomically
from cpo.guard import Guard, one_line
from cpo.models import EmailRequest, EmailVariant, Snippet

DATABASE = "customers.duckdb"
RETRIEVAL_FILE = "retrieval.json"
SCREENING_FILE = "screening.json"
REVIEW_FILE = "review.json"
EMAILS = "emails"


class Inputs(TypedDict):
    customers: str
    campaign: str | None
    suppress: str | None
    seed: int
    run_dir: str
    render: NotRequired[bool]  # also write one rendered email per customer (small lists only)
    per_customer: NotRequired[bool]  # one email per customer, for its arm's tone (small lists only)
    review: NotRequired[bool]  # pause after screening until a person approves or rejects each variant


def merged(old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any]:
    """Entries keyed by request; `None` clears them (a new pass over a finished thread starts empty)."""
    return {} if new is None else {**(old or {}), **new}


class CampaignState(TypedDict, total=False):
    inputs: Inputs
    counts: dict[str, int]
    segments: list[dict[str, Any]]
    requests: list[dict[str, Any]]
    variants: Annotated[dict[str, dict[str, Any]] | None, merged]  # request key -> EmailVariant
    failures: Annotated[dict[str, str] | None, merged]  # request key -> the error, in one line
    skipped: Annotated[dict[str, str] | None, merged]  # request key -> why it was not generated (budget, Ctrl-C)
    retrieval: dict[str, dict[str, Any]]  # segment -> what retrieval searched, found and chose
    screening: dict[str, dict[str, Any]]  # variant id -> SafetyDecision
    review: dict[str, dict[str, Any]]  # variant id -> {"decision": "approve" | "reject", "reviewer", "reason"}
    assignment: dict[str, Any]
    delivery: dict[str, Any]


# A kept draft whose email stopped for one of these reasons is not final: a resumed run generates it again.
UNFINISHED = frozenset({"budget", "interrupted"})


@dataclass(frozen=True)
class Tools:
    """What the nodes use and must not create: the email chain and the guard that bounds and stops generation.

    The cost tracker comes with the graph's own callbacks (`config["callbacks"]`), so every email's calls
    land on the campaign's root run.
    """

    chain: Runnable[EmailRequest, EmailVariant]
    guard: Guard = field(default_factory=Guard)
    on_excluded: Callable[[list[tuple[str, str]]], None] | None = None  # (customer id, reason) pairs, for the log
    index: ContentIndex | None = None  # approved content to retrieve from; default: embedded SQLite FTS5
    screen: Screen | None = None  # safety severities; default: the local policy
    policy: SafetyPolicy | None = None  # threshold and compliance rules; default: data/safety_policy.yaml
    on_audit: Callable[[str, int], None] | None = None  # (head hash, rows) after each audit append


def request_key(request: EmailRequest) -> str:
    """A request's identity: the same segment summary, offer, tone, snippets and sender give the same key."""
    return hashlib.sha256(request.model_dump_json().encode()).hexdigest()[:20]


def _email_file(run_dir: Path, key: str) -> Path:
    """Where one email is kept the moment it is generated, keyed by its request.

    LangGraph's checkpoint can miss the writes of tasks that finish at the instant another task fails
    (measured: up to 8 of 17 finished emails re-run on resume); this file is written before the task
    returns, so a resumed run finds every email that was paid for and does not pay for it again.
    """
    return run_dir / EMAILS / f"{key}.json"


def _connect(inputs: Inputs) -> Any:
    import duckdb

    return duckdb.connect(str(Path(inputs["run_dir"]) / DATABASE))


def _reopened(con: Any, inputs: Inputs, counts: dict[str, int]) -> LoadedCustomers:
    columns = tuple(r[0] for r in con.execute("DESCRIBE customers").fetchall())
    return LoadedCustomers(
        connection=con,
        path=Path(inputs["customers"]),
        fingerprint="",
        columns=columns,
        total=counts["total"],
        no_consent=counts["no_consent"],
        suppressed=counts["suppressed"],
    )


def _segments(state: CampaignState) -> list[Segment]:
    return [Segment(**s) for s in state.get("segments", [])]


def _campaign(inputs: Inputs, snippets: dict[str, Snippet] | None = None) -> Any:
    return load_campaign(Path(inputs["campaign"]) if inputs["campaign"] else None, snippets)


def ordered_variants(state: Mapping[str, Any]) -> list[EmailVariant]:
    """The generated emails in request order (segment, then arm)."""
    variants = state.get("variants") or {}
    keys = [request_key(EmailRequest.model_validate(r)) for r in state.get("requests", [])]
    return [EmailVariant.model_validate(variants[k]) for k in keys if k in variants]


async def _flush_ledgers(config: RunnableConfig) -> None:
    """Ledger before file: an email is kept only once its calls are committed to the cost ledger."""
    for tracker in trackers_in(config.get("callbacks")):
        if tracker.ledger is not None:
            await tracker.ledger.aflush()


def personal_requests_for(
    loaded: LoadedCustomers,
    segments: list[Segment],
    campaign: Any,
    snippets: Any,
    inputs: Inputs,
    chosen: dict[str, list[str]] | None = None,
) -> list[EmailRequest]:
    """--per-customer: assign first (the tone is the customer's arm), then one request per distinct profile."""
    assign_customers(loaded, seed=inputs["seed"], weights=campaign.allocation or None, holdout=campaign.holdout)
    pairs = personal_requests(loaded, segments, campaign, snippets, chosen)
    con: Any = loaded.connection
    con.execute("CREATE OR REPLACE TABLE personal (customer_id VARCHAR, request_key VARCHAR)")
    if pairs:
        con.executemany("INSERT INTO personal VALUES (?, ?)", [(c, request_key(r)) for c, r in pairs])
    return list({request_key(r): r for _, r in pairs}.values())


def load_and_segment(
    inputs: Inputs, con: Any, on_excluded: Callable[[list[tuple[str, str]]], None] | None = None
) -> tuple[LoadedCustomers, list[Segment]]:
    """Load the customers into `con` and segment them: the run's first stage (and a dry run's)."""
    campaign = _campaign(inputs)
    suppress = Path(inputs["suppress"]) if inputs["suppress"] else None
    loaded = load_customers(Path(inputs["customers"]), suppress=suppress, connection=con)
    if inputs.get("render") and loaded.eligible > RENDER_LIMIT:
        raise InputError(
            f"--render writes a file per customer and {loaded.eligible} customers are more than "
            f"{RENDER_LIMIT}; leave it out (templates.json and send_list.csv hold the same emails)"
        )
    if inputs.get("per_customer") and loaded.eligible > PER_CUSTOMER_LIMIT:
        raise InputError(
            f"--per-customer writes an email per customer and {loaded.eligible} customers are more than "
            f"{PER_CUSTOMER_LIMIT}; leave it out, or pass a smaller list"
        )
    segments = segment_customers(loaded, campaign.rules)
    if on_excluded is not None:
        on_excluded([(str(i), str(r)) for i, r in con.execute("SELECT * FROM excluded").fetchall()])
    return loaded, segments


def plan_emails(
    inputs: Inputs, loaded: LoadedCustomers, segments: list[Segment], index: ContentIndex
) -> tuple[dict[str, SegmentRetrieval], list[EmailRequest]]:
    """Retrieve each segment's approved content and list the emails to write (per segment x arm, or per
    customer), each citing only what its segment's retrieval chose."""
    snippets = load_snippets()
    campaign = _campaign(inputs, snippets)
    found = retrieve(segments, campaign, snippets, index)
    chosen = {name: r.used for name, r in found.items()}
    if inputs.get("per_customer"):
        return found, personal_requests_for(loaded, segments, campaign, snippets, inputs, chosen)
    return found, email_requests(segments, campaign, snippets, DEFAULT_ARMS, chosen)


def plan_campaign(
    inputs: Inputs, con: Any, index: ContentIndex
) -> tuple[LoadedCustomers, list[Segment], dict[str, SegmentRetrieval], list[EmailRequest]]:
    """All of a dry run: load, segment, retrieve and list the emails, as a run's first stages do."""
    loaded, segments = load_and_segment(inputs, con)
    found, requests = plan_emails(inputs, loaded, segments, index)
    return loaded, segments, found, requests


def embedded_index(snippets: list[Snippet] | None = None, path: Path | None = None) -> SqliteFtsIndex:
    """The SQLite FTS5 index of the approved content, (re)built if the content changed."""
    index = SqliteFtsIndex(path or ":memory:")
    index.ensure(snippets if snippets is not None else list(load_snippets().values()))
    return index


def _earlier_screening(run_dir: Path, backend: str) -> dict[str, dict[str, Any]]:
    """Decisions an earlier pass of this run made and audited (a resumed run keeps them: the inputs, the
    policy included, are fingerprinted, and a variant id names its content), by the same backend."""
    path = run_dir / SCREENING_FILE
    if not path.is_file():
        return {}
    found: dict[str, dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    return {v: d for v, d in found.items() if d.get("backend") == backend and not _unavailable(d)}


def _unavailable(decision: Mapping[str, Any]) -> bool:
    return any(str(r).startswith(UNAVAILABLE) for r in decision.get("reasons", []))


def withheld(state: Mapping[str, Any]) -> dict[str, str]:
    """Variants that must not be sent, with why: blocked by screening, or rejected in review."""
    out = {v: "blocked: " + "; ".join(d["reasons"]) for v, d in (state.get("screening") or {}).items() if d["blocked"]}
    for v, d in (state.get("review") or {}).items():
        if d.get("decision") == "reject":
            out[v] = f"rejected by {d.get('reviewer') or 'a reviewer'}: {d.get('reason') or 'no reason given'}"
    return out


def build_pipeline(tools: Tools, checkpointer: Any = None) -> Any:
    """The compiled graph; invoke it with `{"inputs": Inputs}` and `{"configurable": {"thread_id": run_id}}`."""

    def load_segment(state: CampaignState) -> CampaignState:
        inputs = state["inputs"]
        con = _connect(inputs)
        try:
            loaded, segments = load_and_segment(inputs, con, tools.on_excluded)
        finally:
            con.close()
        return {
            "counts": {"total": loaded.total, "no_consent": loaded.no_consent, "suppressed": loaded.suppressed},
            "segments": [s.__dict__ for s in segments],
            "variants": None,
            "failures": None,
            "skipped": None,
        }

    def retrieve_content(state: CampaignState) -> CampaignState:
        inputs = state["inputs"]
        index = tools.index or embedded_index()
        con = _connect(inputs)
        try:
            found, requests = plan_emails(inputs, _reopened(con, inputs, state["counts"]), _segments(state), index)
        finally:
            con.close()
        retrieval = {name: r.to_json() for name, r in found.items()}
        write_atomically(Path(inputs["run_dir"]) / RETRIEVAL_FILE, json.dumps(retrieval, indent=2) + "\n")
        return {"retrieval": retrieval, "requests": [r.model_dump(mode="json") for r in requests]}

    def fan_out(state: CampaignState) -> list[Send]:
        run_dir = state["inputs"]["run_dir"]
        return [Send("generate", {"request": r, "run_dir": run_dir}) for r in state.get("requests", [])]

    async def generate(payload: dict[str, Any], config: RunnableConfig) -> CampaignState:
        request = EmailRequest.model_validate(payload["request"])
        key = request_key(request)
        saved = _email_file(Path(payload["run_dir"]), key)
        if saved.is_file():  # generated before an interruption: not paid for again
            return {"variants": {key: json.loads(saved.read_text(encoding="utf-8"))}}
        guard = tools.guard
        async with guard.slots:
            if not guard.dispatching:
                return {"skipped": {key: guard.stopped_by or "stopped"}}
            try:
                variant = await tools.chain.ainvoke(request, config)
            except Exception as exc:
                if guard.outcome(exc) == "skipped":
                    return {"skipped": {key: guard.stopped_by or "interrupted"}}
                return {"failures": {key: one_line(exc)}}
        data = variant.model_dump(mode="json")
        if UNFINISHED.isdisjoint(variant.validation.codes):
            await _flush_ledgers(config)
            write_atomically(saved, json.dumps(data))
        return {"variants": {key: data}}

    def gather(state: CampaignState) -> CampaignState:
        """Every email task has returned; nothing to change, the route below decides whether to go on."""
        return {}

    def go_on(state: CampaignState) -> str:
        """A stopped run (budget, Ctrl-C, credentials) ends here; `--resume` generates what is missing."""
        return END if state.get("skipped") else "screen"

    def screen(state: CampaignState, config: RunnableConfig) -> CampaignState:
        """Screen every variant as it would be sent; each decision is a row of the audit chain."""
        inputs = state["inputs"]
        campaign = _campaign(inputs)
        policy = tools.policy or load_policy()
        backend = tools.screen or build_screen(policy)
        requests = {request_key(r): r for r in (EmailRequest.model_validate(x) for x in state.get("requests", []))}
        run_id = str(config.get("configurable", {}).get("thread_id") or Path(inputs["run_dir"]).name)
        audit = AuditLog(Path(inputs["run_dir"]), run_id)
        earlier = _earlier_screening(Path(inputs["run_dir"]), backend.name)
        decisions: dict[str, dict[str, Any]] = {}
        for key, data in (state.get("variants") or {}).items():
            variant = EmailVariant.model_validate(data)
            if variant.variant_id in decisions:
                continue
            if variant.variant_id in earlier:  # screened by an earlier pass of this run: already audited
                decisions[variant.variant_id] = earlier[variant.variant_id]
                continue
            cited = list(requests[key].snippets) if key in requests else []
            decision = screen_variant(variant, footer=campaign.unsubscribe, screen=backend, policy=policy, cited=cited)
            decisions[variant.variant_id] = decision.model_dump()
            audit.append(
                variant_id=variant.variant_id,
                backend=decision.backend,
                decision="block" if decision.blocked else "pass",
                content_sha256=decision.content_sha256,
                severities=decision.severities,
                reasons=decision.reasons,
            )
            if tools.on_audit is not None:
                tools.on_audit(audit.head, audit.count)
        write_atomically(Path(inputs["run_dir"]) / SCREENING_FILE, json.dumps(decisions, indent=2) + "\n")
        return {"screening": decisions}

    def review(state: CampaignState) -> CampaignState:
        """With --review, pause for a person: `cpo review` records decisions, `--resume` brings them here."""
        if not state["inputs"].get("review"):
            return {}
        pending = sorted(v for v, d in (state.get("screening") or {}).items() if not d["blocked"])
        decisions = interrupt({"awaiting_review": pending})
        return {"review": {v: decisions[v] for v in pending if v in decisions}}

    def assign(state: CampaignState) -> CampaignState:
        inputs = state["inputs"]
        campaign = _campaign(inputs)
        con = _connect(inputs)
        try:
            result = assign_customers(
                _reopened(con, inputs, state["counts"]),
                seed=inputs["seed"],
                weights=campaign.allocation or None,
                holdout=campaign.holdout,
            )
        finally:
            con.close()
        return {
            "assignment": {
                "total": result.total,
                "per_arm": result.per_arm(),
                "cells": [[s, a, n] for (s, a), n in sorted(result.cells.items())],
                "small_cells": result.small_cells(),
            }
        }

    def export(state: CampaignState) -> CampaignState:
        inputs = state["inputs"]
        con = _connect(inputs)
        variants, campaign, run_dir = ordered_variants(state), _campaign(inputs), Path(inputs["run_dir"])
        held = withheld(state)
        try:
            loaded = _reopened(con, inputs, state["counts"])
            personal = None
            if inputs.get("per_customer"):
                own = {k: EmailVariant.model_validate(v) for k, v in (state.get("variants") or {}).items()}
                personal = {
                    str(customer): own[key].variant_id if key in own and sendable(own[key], held) else ""
                    for customer, key in con.execute("SELECT customer_id, request_key FROM personal").fetchall()
                }
            delivery = export_campaign(
                loaded, _segments(state), variants, campaign, run_dir, DEFAULT_ARMS, personal=personal, withheld=held
            )
            rendered = render_emails(loaded, variants, campaign, run_dir) if inputs.get("render") else None
        finally:
            con.close()
        return {
            "delivery": {
                "substituted": delivery.substituted,
                "unsent": delivery.unsent,
                "rendered": rendered,
                "withheld": held,
            }
        }

    graph = StateGraph(CampaignState)
    graph.add_node("load_segment", load_segment)
    graph.add_node("retrieve", retrieve_content)
    graph.add_node("generate", generate)  # type: ignore[arg-type]  # a Send payload, not the graph state
    graph.add_node("gather", gather)
    graph.add_node("screen", screen)
    graph.add_node("review", review)
    graph.add_node("assign", assign)
    graph.add_node("export", export)
    graph.add_edge(START, "load_segment")
    graph.add_edge("load_segment", "retrieve")
    graph.add_conditional_edges("retrieve", fan_out, ["generate"])
    graph.add_edge("generate", "gather")
    graph.add_conditional_edges("gather", go_on, ["screen", END])
    graph.add_edge("screen", "review")
    graph.add_edge("review", "assign")
    graph.add_edge("assign", "export")
    graph.add_edge("export", END)
    return graph.compile(checkpointer=checkpointer)


RUN_FILE = "run.json"


def input_fingerprint(inputs: Inputs, prompts_dir: Path | None = None, limits: Path | None = None) -> dict[str, str]:
    """sha256 of every input a campaign is built from: customers, campaign, rules, suppression, prompts, content
    (and the limits file, when one is given).

    `--resume` compares it with the run's `run.json` and refuses changed inputs: emails generated from
    the old ones would be mixed with new ones.
    """
    from cpo.content import default_content_dir
    from cpo.prompts import FILES
    from cpo.resources import bundled

    campaign_path = Path(inputs["campaign"]) if inputs["campaign"] else None
    campaign = load_campaign(campaign_path)
    prompts = prompts_dir or bundled("prompts")
    files: dict[str, list[Path]] = {
        "customers": [Path(inputs["customers"])],
        "campaign": [campaign_path or bundled("data") / "campaign.yaml"],
        "rules": [campaign.rules],
        "suppress": [Path(inputs["suppress"])] if inputs["suppress"] else [],
        "prompts": [prompts / name for name in FILES if (prompts / name).is_file()],
        "content": sorted(default_content_dir().glob("*.md")),
        "safety_policy": [default_policy_file()],
    }
    if limits is not None:
        files["limits"] = [limits]
    out = {}
    for name, paths in files.items():
        digest = hashlib.sha256()
        for path in paths:
            digest.update(path.name.encode() + b"\0")
            try:
                with path.open("rb") as handle:
                    while chunk := handle.read(1 << 20):
                        digest.update(chunk)
            except OSError as exc:
                raise InputError(f"cannot read the {name} file {path}: {exc.strerror or exc}") from None
        out[name] = digest.hexdigest()
    out["seed"] = str(inputs["seed"])
    return out


AUDIT_KEYS = ("audit_head", "audit_rows")


def record_run(run_dir: Path, inputs: Inputs, fingerprint: dict[str, str], **extra: Any) -> None:
    """Write run.json: the inputs, their fingerprint and whatever the caller adds (versions, model).

    The audit chain's head, recorded as screening and review append to it, is kept unless given.
    """
    path = run_dir / RUN_FILE
    kept = {}
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        kept = {k: old[k] for k in AUDIT_KEYS if k in old}
    record = {"inputs": inputs, "fingerprint": fingerprint, **kept, **extra}
    write_atomically(path, json.dumps(record, indent=2))


def record_audit_head(run_dir: Path, head: str, rows: int, ledger: Any = None) -> None:
    """Put the audit chain's latest hash into run.json and, when given, the cost ledger: its two copies."""
    path = run_dir / RUN_FILE
    record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    record.update({"audit_head": head, "audit_rows": rows})
    write_atomically(path, json.dumps(record, indent=2))
    if ledger is not None:
        ledger.record_audit_head(str(record.get("run_id") or run_dir.name), head, rows)


def check_resume(run_dir: Path, inputs: Inputs, fingerprint: dict[str, str]) -> None:
    """Refuse to resume a run whose inputs changed, naming the first input that did."""
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise InputError(f"cannot resume {run_dir}: it has no {RUN_FILE} (not a cpo run directory)")
    recorded = json.loads(path.read_text(encoding="utf-8")).get("fingerprint", {})
    changed = [name for name in fingerprint if recorded.get(name) != fingerprint[name]]
    if changed:
        raise InputError(
            f"cannot resume {run_dir}: its {changed[0]} changed since the run started; start a new run instead"
        )
