"""A seeded fault mix for the loopback Azure server, `cpo run` driven through it, and the invariants it must keep.

`FaultMix` answers cpo's email prompts like a good model (`azure_server.email_drafter`) but, for a scripted
share of requests, with a fault: a 429 with retry-after, a 500 or 503, a hang past the client's timeout, a
trickled answer, a connection reset, malformed JSON, a `length` or `content_filter` finish, or Azure's 400
content filter. The fault is drawn from the seed, the request body and how many times that body was seen, so
a run is the same for a seed whatever the order the requests arrive in. `Campaign.run` and `.run_killed` run
the real `cpo run --per-customer` in a subprocess against it (the second killed with SIGKILL mid-way and
resumed); `problems` lists every broken invariant and `figures` what to publish. Shared by
`tests/test_fault_mix.py` and `benchmarks/fault_mix.py`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azure_server import (
    PROMPT_FILTERED_BODY,
    AzureTestServer,
    Reply,
    connection_reset,
    email_drafter,
    error,
    ok,
    prompt_tokens_of,
    rate_limited,
    server_error,
)
from langchain_core.messages import convert_to_messages

from cpo.accounting.ledger import STARTED, UNKNOWN_COST, Ledger
from cpo.core.resources import bundled
from cpo.email.prompts import PROFILE_WORDS
from cpo.llm.offline import read_brief

KEY = "fault-mix-key"
# Out of 100 requests. cpo may send the same body again after a 429, a 5xx, a hang or a reset (transient); the
# other faults are answers (or a refusal) that asking again the same way cannot change: a repair is a new request.
WEIGHTS: dict[str, int] = {
    "ok": 50,
    "trickle": 6,
    "rate_limited": 7,
    "server_500": 4,
    "server_503": 4,
    "hang": 4,
    "reset": 5,
    "malformed_json": 6,
    "finish_length": 5,
    "finish_content_filter": 4,
    "prompt_filtered": 5,
}
KINDS = tuple(WEIGHTS)
FAULTS = tuple(k for k in KINDS if k != "ok")
NOT_RETRIED = frozenset({"malformed_json", "finish_length", "finish_content_filter", "prompt_filtered"})
HANG_S = 30.0  # far past any client timeout used here: the client always gives up first
TRICKLE_S = 0.0001  # about 0.4 s for an email answer, in bytes one at a time: inside the timeout, never one read
RETRY_AFTER_MS = 50


def body_key(request: dict[str, Any]) -> str:
    """The request as sent: a retry sends exactly the same body."""
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


def email_key(request: dict[str, Any]) -> str:
    """The email a request is for: the brief (readers, profile, offer, tone, snippets) every draft, rewrite and fresh
    start of it carries, as cpo's offline drafter reads it."""
    brief = read_brief(convert_to_messages(request.get("messages") or []))
    facts = None if brief is None else [brief.segment, brief.profile, brief.offer, brief.tone, brief.snippets]
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Served:
    """One request the mix answered: in which `cpo run` process (phase), for which body and email, how."""

    phase: int
    body: str
    email: str
    kind: str


class FaultMix:
    """The server's responder: a good model's draft, or the fault the seed draws for this body and attempt."""

    def __init__(self, seed: int, weights: dict[str, int] | None = None) -> None:
        self.seed = seed
        self.weights = weights or WEIGHTS
        self.phase = 1
        self.served: list[Served] = []
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()

    def draw(self, body: str, nth: int) -> str:
        """The kind for the nth arrival of a body: deterministic for the seed."""
        digest = hashlib.sha256(f"{self.seed}:{body}:{nth}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") % sum(self.weights.values())
        for kind, weight in self.weights.items():
            if point < weight:
                return kind
            point -= weight
        raise AssertionError("unreachable")

    def __call__(self, request: dict[str, Any]) -> Reply | None:
        good = email_drafter(request)
        body, email = body_key(request), email_key(request)
        with self._lock:
            self._seen[body] += 1
            kind = "other" if good is None else self.draw(body, self._seen[body])
            self.served.append(Served(self.phase, body, email, kind))
        return None if good is None else fault_reply(kind, good)


def malformed(draft: dict[str, Any] | str | None) -> str:
    """The draft's JSON cut before its closing brace, with a trailing comma: billed, and not readable as JSON."""
    text = draft if isinstance(draft, str) else json.dumps(draft)
    return text.rstrip().removesuffix("}") + ","


def fault_reply(kind: str, good: Reply) -> Reply:
    """The server's answer of a kind, built around the good answer (so what a fault bills is a real draft's)."""
    replies: dict[str, Callable[[], Reply]] = {
        "ok": lambda: good,
        "trickle": lambda: dataclasses.replace(good, trickle=TRICKLE_S),
        "rate_limited": lambda: rate_limited(RETRY_AFTER_MS),
        "server_500": lambda: server_error(500, None),
        "server_503": lambda: server_error(503, RETRY_AFTER_MS),
        "hang": lambda: dataclasses.replace(good, delay=HANG_S),
        "reset": lambda: connection_reset(good),
        "malformed_json": lambda: dataclasses.replace(good, tool_args=malformed(good.tool_args)),
        "finish_length": lambda: dataclasses.replace(good, finish_reason="length"),
        "finish_content_filter": lambda: ok("", finish_reason="content_filter"),
        "prompt_filtered": lambda: error(400, PROMPT_FILTERED_BODY),
    }
    return replies[kind]()


# -- the campaign ------------------------------------------------------------------------------------------------

TIERS = ("Bronze", "Silver", "Gold", "Platinum")
FEATURES = ("purchase_frequency", "avg_order_value", "last_engagement_days", "historical_open_rate",
            "historical_click_rate")  # fmt: skip


def band_values(feature: str) -> list[float]:
    """One value inside each of the feature's word bands (`PROFILE_WORDS`): below, between and above the limits."""
    _, bands, _ = PROFILE_WORDS[feature]
    (low, _), (high, _) = bands
    return [round(low / 2, 3), round((low + high) / 2, 3), round(high * 2, 3)]


def write_customers(path: Path, count: int, seed: int) -> None:
    """`count` consenting customers, no two described to the model in the same words, so no two emails of a
    --per-customer run share a prompt: a request body seen twice is one email's call asked again."""
    profiles = list(itertools.product(TIERS, *(band_values(f) for f in FEATURES)))
    if count > len(profiles):
        raise ValueError(f"at most {len(profiles)} customers with distinct profiles")
    random.Random(seed).shuffle(profiles)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["customer_id", "first_name", "tier", *FEATURES, "email_opt_in", "email"])
        for i, (tier, *values) in enumerate(profiles[:count], 1):
            writer.writerow([f"F{i:05d}", "Sam", tier, *values, "true", f"f{i}@example.com"])


def write_campaign(path: Path) -> None:
    """The sample campaign without its control arm: a control email is generic, the same prompt for every customer
    of a segment, so per customer it would be the one request several emails send."""
    sample = bundled("data")
    text = (sample / "campaign.yaml").read_text(encoding="utf-8")
    arms, rules = "allocation: {control: 1,", "rules: segment_rules.yaml"
    if arms not in text or rules not in text:
        raise ValueError(f"{sample / 'campaign.yaml'} changed: write_campaign cannot drop its control arm")
    text = text.replace(arms, "allocation: {control: 0,").replace(rules, f"rules: {sample / 'segment_rules.yaml'}")
    path.write_text(text, encoding="utf-8")


def cpo_env(work: Path, endpoint: str, timeout_s: float) -> dict[str, str]:
    """The test server as the endpoint, no other credentials, and everything the run writes kept in `work`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_OPENAI_", "OPENAI_", "CPO_"))}
    return env | {
        "AZURE_OPENAI_ENDPOINT": endpoint,
        "AZURE_OPENAI_DEPLOYMENT_NAME": "gpt-4o-mini",
        "AZURE_OPENAI_API_KEY": KEY,
        "CPO_LLM_TIMEOUT": str(timeout_s),
        "CPO_ID_KEY_FILE": str(work / "id-key"),
        "PYTHONUNBUFFERED": "1",
    }


@dataclass
class Process:
    """One `cpo run` process and what the server, the ledger and the run's log got while it ran."""

    code: int  # its exit code (-9 when killed)
    killed: bool
    served: list[Served]
    billed: list[dict[str, Any]]
    requests: int
    rows: list[dict[str, Any]]  # its calls in the ledger (a killed one's calls in flight filed as started)


@dataclass
class Outcome:
    """What one scenario left behind: the run directory and each process's share of the evidence."""

    work: Path
    customers: int
    concurrency: int
    processes: list[Process] = field(default_factory=list)
    wall_s: float = 0.0
    kept_at_kill: list[dict[str, Any]] | None = None  # the emails kept on disk when the run was killed
    output: str = ""  # what the last `cpo run` printed

    @property
    def run_dir(self) -> Path:
        (found,) = [p for p in (self.work / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")]
        return found

    def read(self, name: str) -> Any:
        return json.loads((self.run_dir / name).read_text(encoding="utf-8"))

    @property
    def served(self) -> list[Served]:
        return [s for p in self.processes for s in p.served]


class Campaign:
    """A fault-mixed test server and a customer file in `work`; `run` and `run_killed` drive `cpo run` through it."""

    def __init__(self, work: Path, customers: int, *, seed: int = 1, timeout_s: float = 2.0, concurrency: int = 16):
        self.work, self.customers, self.concurrency, self.timeout_s = work, customers, concurrency, timeout_s
        self.mix = FaultMix(seed)
        self.server = AzureTestServer(port=0, api_key=KEY, responder=self.mix)
        self.server.bill_abandoned = True
        self.file, self.config = work / "customers.csv", work / "campaign.yaml"
        self.ledger, self.printed = work / "runs" / "ledger.sqlite", work / "cpo-run.txt"
        write_customers(self.file, customers, seed)
        write_campaign(self.config)
        self._marks = (0, 0, 0, 0)  # served, billed, requests, last ledger row id: before this process

    def __enter__(self) -> Campaign:
        # The server's first answer loads the token encodings and the drafter: not inside a request's timeout.
        email_drafter({"messages": []})
        prompt_tokens_of({"messages": [{"role": "user", "content": "warm up"}]})
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def run(self) -> Outcome:
        """One uninterrupted `cpo run`."""
        outcome = Outcome(self.work, self.customers, self.concurrency)
        started = time.perf_counter()
        proc = self._start(*self._first_args())
        proc.wait(timeout=600)
        outcome.output = self.printed.read_text(encoding="utf-8", errors="replace")
        outcome.wall_s = time.perf_counter() - started
        outcome.processes.append(self._ended(proc.returncode, killed=False))
        return outcome

    def run_killed(self, kill_share: float = 0.4) -> Outcome:
        """`cpo run` killed with SIGKILL once `kill_share` of its emails are kept, then `cpo run --resume`."""
        outcome = Outcome(self.work, self.customers, self.concurrency)
        started = time.perf_counter()
        proc = self._start(*self._first_args())
        kept = self.work / "runs"
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if len(list(kept.glob("*/emails/*.json"))) >= kill_share * self.customers:
                break
            time.sleep(0.01)
        proc.kill()
        proc.wait(timeout=30)
        outcome.kept_at_kill = [json.loads(p.read_text(encoding="utf-8")) for p in kept.glob("*/emails/*.json")]
        Ledger(self.ledger, readonly=True).close()  # files the killed process's calls in flight, as started
        outcome.processes.append(self._ended(proc.returncode, killed=True))
        self.mix.phase = 2
        proc = self._start("--resume", str(outcome.run_dir))
        proc.wait(timeout=600)
        outcome.output = self.printed.read_text(encoding="utf-8", errors="replace")
        outcome.wall_s = time.perf_counter() - started
        outcome.processes.append(self._ended(proc.returncode, killed=False))
        return outcome

    def _start(self, *args: str) -> subprocess.Popen[bytes]:
        """`cpo run`, printing into a file: a pipe nobody reads while the run is watched could fill and stall it."""
        cli = Path(sys.executable).parent / "cpo"
        with self.printed.open("wb") as out:
            return subprocess.Popen(
                [str(cli), "run", *args],
                env=cpo_env(self.work, self.server.endpoint, self.timeout_s),
                cwd=self.work,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def _first_args(self) -> list[str]:
        return ["--per-customer", "--customers", str(self.file), "--config", str(self.config),
                "--out", str(self.work / "runs"), "--concurrency", str(self.concurrency)]  # fmt: skip

    def _ended(self, code: int, *, killed: bool) -> Process:
        """The process's share of the evidence, once the server is done with its requests."""
        deadline = time.monotonic() + 10  # a hang notices its client left within 50 ms
        while self.server.in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
        served, billed, requests = list(self.mix.served), [dict(b) for b in self.server.billed], self.server.requests
        rows = ledger_rows(self.ledger)
        s, b, q, r = self._marks
        self._marks = (len(served), len(billed), len(requests), max((x["id"] for x in rows), default=0))
        return Process(
            code=code,
            killed=killed,
            served=served[s:],
            billed=billed[b:],
            requests=len(requests) - q,
            rows=[x for x in rows if x["id"] > r],
        )


def ledger_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM calls ORDER BY id")]


# -- the invariants -----------------------------------------------------------------------------------------------


def _tokens(entries: list[dict[str, Any]], names: tuple[str, str]) -> int:
    return sum(int(e[names[0]] or 0) + int(e[names[1]] or 0) for e in entries)


@dataclass(frozen=True)
class Accounts:
    """One process's bill from the server set against its ledger rows."""

    billed: list[dict[str, Any]]  # every answer the server charged for, abandoned ones too
    abandoned: list[dict[str, Any]]  # charged, but the client hung up or the connection was reset
    unknown: list[dict[str, Any]]  # ledger rows of unknown cost
    started: list[dict[str, Any]]  # of those, the calls a killed process had in flight
    tracked: list[dict[str, Any]]  # ledger rows with tokens
    unbilled: Counter[tuple[int, int]]  # tracked (input, output) tokens that no delivered answer was billed for
    lost: Counter[tuple[int, int]]  # delivered answers billed that the ledger has no row with tokens for

    @classmethod
    def of(cls, process: Process) -> Accounts:
        billed = [b for b in process.billed if b["status"] == 200]
        abandoned = [b for b in billed if b.get("abandoned")]
        unknown = [r for r in process.rows if str(r["status"]).startswith(UNKNOWN_COST)]
        known = [r for r in process.rows if not str(r["status"]).startswith(UNKNOWN_COST)]
        tracked = [r for r in known if r["input_tokens"] + r["output_tokens"] > 0]
        delivered = Counter((b["prompt_tokens"], b["completion_tokens"]) for b in billed if not b.get("abandoned"))
        recorded = Counter((r["input_tokens"], r["output_tokens"]) for r in tracked)
        started = [r for r in unknown if r["status"] == STARTED]
        return cls(billed, abandoned, unknown, started, tracked, recorded - delivered, delivered - recorded)

    @property
    def lost_tokens(self) -> int:
        return sum(i + o for i, o in self.lost.elements())


def problems(outcome: Outcome) -> list[str]:
    """Every invariant the scenario broke, one line each; empty when all hold."""
    out = _email_problems(outcome)
    for n, process in enumerate(outcome.processes, 1):
        name = f"process {n}{' (killed)' if process.killed else ''}"
        out += [f"{name}: {p}" for p in [*_call_problems(process, outcome.concurrency), *_retry_problems(process)]]
    if outcome.kept_at_kill is not None:
        out += _resume_problems(outcome)
    return out


def _email_problems(outcome: Outcome) -> list[str]:
    """Every email produced or recorded as failed with its reason; none lost, none left unrun."""
    costs, variants = outcome.read("costs.json"), outcome.read("variants.json")
    errors: list[str] = costs["errors"]
    requested = costs["emails"]["requested"]
    out = []
    if outcome.processes[-1].code not in (0, 1):
        out.append(f"cpo run ended with exit code {outcome.processes[-1].code}: {outcome.output.strip()[-300:]}")
    if requested != outcome.customers:
        out.append(f"{requested} emails requested for {outcome.customers} customers")
    if len(variants) + len(errors) != requested:
        out.append(f"emails lost: {len(variants)} produced + {len(errors)} failed != {requested} requested")
    unexplained = [e for e in errors if not e.partition(": ")[2].strip()]
    if unexplained:
        out.append(f"{len(unexplained)} failed emails without a reason, e.g. {unexplained[0]!r}")
    asked = len({s.email for s in outcome.served})
    if asked != requested:
        out.append(f"the server was asked for {asked} distinct emails, the run requested {requested}")
    if costs.get("stopped_by"):
        out.append(f"the run stopped early: {costs['stopped_by']}")
    if any(s.kind == "other" for s in outcome.served):
        out.append("the server got requests that are not cpo email prompts")
    return out


def _call_problems(process: Process, concurrency: int) -> list[str]:
    """Every request in the ledger; what the server billed is what the ledger tracked, plus one call of unknown cost
    per abandoned answer. A killed process's calls in flight are filed as started: they account for the answers
    abandoned or delivered as it died, at most one per email in flight."""
    a = Accounts.of(process)
    out = []
    unsent = len(process.rows) - process.requests  # started calls whose request never left before the kill
    if unsent < 0 or unsent > (concurrency if process.killed else 0):
        out.append(f"{len(process.rows)} calls in the ledger for {process.requests} requests the server got")
    if a.unbilled:
        out.append(f"{a.unbilled.total()} calls tracked with tokens that no answer was billed for")
    if any(r["input_tokens"] or r["output_tokens"] for r in a.unknown):
        out.append("a call of unknown cost carries tokens")
    ended_unknown = len(a.unknown) - len(a.started)
    in_flight = len(a.abandoned) - ended_unknown + a.lost.total()  # billed answers only a started row can stand for
    if not process.killed and (a.started or a.lost or ended_unknown != len(a.abandoned)):
        out.append(
            f"{len(a.unknown)} calls of unknown cost, {len(a.abandoned)} answers abandoned, "
            f"{a.lost.total()} delivered but not tracked"
        )
    if process.killed and not (ended_unknown <= len(a.abandoned) and in_flight <= len(a.started) <= concurrency):
        out.append(
            f"{len(a.started)} calls in flight at the kill for {in_flight} answers billed but not tracked "
            f"({len(a.unknown) - len(a.started)} other calls of unknown cost, {len(a.abandoned)} abandoned)"
        )
    kinds = Counter(s.kind for s in process.served)
    if not process.killed and len(a.abandoned) != kinds["hang"] + kinds["reset"]:
        out.append(f"{len(a.abandoned)} answers abandoned, but {kinds['hang'] + kinds['reset']} hangs and resets")
    return out


def _retry_problems(process: Process) -> list[str]:
    """No body sent again after an answer that asking again the same way cannot change."""
    out = []
    final: dict[str, str] = {}
    for s in process.served:
        if s.body in final:
            out.append(f"a request was sent again after {final[s.body]} (then: {s.kind})")
        if s.kind in NOT_RETRIED:
            final[s.body] = s.kind
    return out


def _resume_problems(outcome: Outcome) -> list[str]:
    """The resumed run asks again only for emails not kept before the kill, and reuses every kept one as it was.

    A good answer makes a valid email, so an email the killed process got one for was either kept, or was being kept
    as it died (at most one per email in flight) and is asked again: asking again for more of those than were not
    kept means asking again for a kept email, paying twice."""
    assert outcome.kept_at_kill is not None
    first, resumed = outcome.processes
    costs, variants = outcome.read("costs.json"), outcome.read("variants.json")
    requested, kept = costs["emails"]["requested"], len(outcome.kept_at_kill)
    kept_valid = sum(e["validation"]["valid"] for e in outcome.kept_at_kill)
    answered = {s.email for s in first.served if s.kind in ("ok", "trickle")}
    asked_again = {s.email for s in resumed.served}
    out = []
    if not 0 < kept < requested:
        out.append(f"the kill came with {kept} of {requested} emails kept: not mid-way")
    if len(asked_again) > requested - kept:
        out.append(f"the resumed run asked for {len(asked_again)} emails, but only {requested - kept} were not kept")
    being_kept = len(answered) - kept_valid  # answered well but not kept: the process died keeping them
    if not 0 <= being_kept <= outcome.concurrency or len(answered & asked_again) != being_kept:
        out.append(
            f"the resumed run asked again for {len(answered & asked_again)} emails answered well before the kill, "
            f"of which {kept_valid} of {len(answered)} were kept"
        )
    final = {v["run_id"] for v in variants}
    remade = [e for e in outcome.kept_at_kill if e["run_id"] not in final]
    if remade:
        out.append(f"{len(remade)} emails kept before the kill were made again")
    return out


# -- the figures ------------------------------------------------------------------------------------------------


def figures(outcome: Outcome) -> list[str]:
    """What the README publishes, as lines."""
    costs, variants = outcome.read("costs.json"), outcome.read("variants.json")
    kinds = Counter(s.kind for s in outcome.served)
    valid = sum(v["validation"]["valid"] for v in variants)
    requests = sum(p.requests for p in outcome.processes)
    lines = [
        f"customers: {outcome.customers} (one email each); cpo run exit code "
        + ", then ".join(str(p.code) for p in outcome.processes)
        + f"; wall time {outcome.wall_s:.1f} s",
        f"requests: {requests} ({kinds['ok']} answered well, {sum(kinds[k] for k in FAULTS)} faults)",
        "faults: " + ", ".join(f"{k} {kinds[k]}" for k in FAULTS),
        f"emails: {costs['emails']['requested']} requested, {len(variants)} produced ({valid} valid, "
        f"{len(variants) - valid} invalid with their reasons), {len(costs['errors'])} failed with their reasons",
    ]
    said = [e.partition(": ")[2].partition(": ")[0] for e in costs["errors"]]
    reasons = Counter("cannot reach the endpoint" if r.startswith("cannot reach") else r for r in said)
    if reasons:
        lines.append("failed by reason: " + ", ".join(f"{k} {v}" for k, v in reasons.most_common()))
    for n, process in enumerate(outcome.processes, 1):
        a = Accounts.of(process)
        billed = _tokens(a.billed, ("prompt_tokens", "completion_tokens"))
        tracked = _tokens(a.tracked, ("input_tokens", "output_tokens"))
        abandoned = _tokens(a.abandoned, ("prompt_tokens", "completion_tokens"))
        statuses = Counter(str(r["status"]).removeprefix(f"{UNKNOWN_COST}:") for r in a.unknown)
        name = f"process {n} (killed)" if process.killed else f"process {n}" if len(outcome.processes) > 1 else "run"
        lines.append(
            f"{name}: {process.requests} requests; tokens billed {billed:,} = tracked {tracked:,} + {abandoned:,} in "
            f"{len(a.abandoned)} abandoned answers"
            + (f" + {a.lost_tokens:,} in {a.lost.total()} answers delivered as it died" if a.lost else "")
            + f"; calls of unknown cost {len(a.unknown)} ("
            + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
            + ")"
        )
    if outcome.kept_at_kill is not None:
        asked = len({s.email for s in outcome.processes[1].served})
        lines.append(
            f"killed with {len(outcome.kept_at_kill)} emails kept; the resumed run asked for {asked} emails, "
            "none of those kept"
        )
    return lines
