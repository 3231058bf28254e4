"""`cpo run` as a campaign: resume after kill -9, Ctrl-C and the budget; refusals; the log; dry runs; exclusions.

The kill and Ctrl-C tests run the real command in a subprocess against the live loopback Azure-protocol
server (signals and timing cannot be recorded in a cassette); the server's own billing is the evidence.
"""

from __future__ import annotations

import csv
import json
import signal
import sqlite3
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from azure_server import flawed_drafter
from test_runner import azure_env, start_run, the_run_dir

from cpo.accounting.ledger import STARTED, Ledger
from cpo.cli import main
from cpo.core.resources import bundled

EMAILS = 20
SAMPLE = bundled("data") / "customers.csv"


def ledger_rows() -> list[dict[str, Any]]:
    with sqlite3.connect("runs/ledger.sqlite") as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM calls ORDER BY id")]


def kept_emails(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The emails a run kept as they finished, by their email run id."""
    emails = (json.loads(p.read_text(encoding="utf-8")) for p in (run_dir / "emails").glob("*.json"))
    return {e["run_id"]: e for e in emails}


def journal_starts() -> list[Any]:
    """The calls in flight of the running `cpo run`, read from its ledger's start journal on disk."""
    from cpo.accounting.start_journal import starts_on_disk

    return starts_on_disk(Path("runs/ledger.sqlite"))


def tokens(rows: list[dict[str, Any]], keys: tuple[str, str]) -> int:
    return sum(r[keys[0]] + r[keys[1]] for r in rows)


@pytest.mark.live_server
@pytest.mark.waits
def test_kill_9_mid_repair_then_resume_pays_again_only_for_emails_in_flight(live_server: Any) -> None:
    """Every first draft is flawed, so each email is a draft and a repair; the run is killed with emails mid-repair."""

    def slow_repairs(request: dict[str, Any]) -> Any:
        reply = flawed_drafter(request)
        return replace(reply, delay=0.6) if reply is not None and reply.content else reply

    live_server.responder = slow_repairs
    live_server.latency = 0.1
    proc = start_run(live_server.endpoint, "--concurrency", "4")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.02)
        run_dirs = [p for p in Path("runs").glob("2*") if p.is_dir()]
        if not run_dirs or not Path("runs/ledger.sqlite").exists() or len(kept_emails(run_dirs[0])) < 6:
            continue
        paid = Counter(r["email_id"] for r in ledger_rows())
        if any(paid[r.email_id] == 1 for r in journal_starts()):
            break  # an email's draft is paid and its repair (0.7 s) is in flight
    proc.kill()
    proc.communicate(timeout=10)
    Ledger("runs/ledger.sqlite", readonly=True).close()  # opening it files the killed process's calls in flight
    run_dir = the_run_dir()
    kept = kept_emails(run_dir)
    first_billed = list(live_server.billed)
    first_rows = ledger_rows()
    in_flight_rows = [r for r in first_rows if r["email_id"] not in kept]
    assert 6 <= len(kept) < EMAILS and in_flight_rows  # killed with emails mid-repair
    assert all(e["attempts"] == 2 and e["validation"]["valid"] for e in kept.values())  # each one was repaired

    requests_before = len(live_server.requests)
    done = start_run(live_server.endpoint, "--resume", str(run_dir))
    out, err = done.communicate(timeout=120)
    assert done.returncode == 0, err
    assert "resuming" in err and "20 of 20" in out
    variants = json.loads((run_dir / "variants.json").read_text())
    assert len(variants) == EMAILS and all(v["validation"]["valid"] for v in variants)
    assert (run_dir / "send_list.csv").is_file()

    # Nothing kept before the kill was asked for again: the resumed run sent exactly the calls of the others.
    assert len(live_server.requests) - requests_before == 2 * (EMAILS - len(kept))
    # Every call the server billed is in the ledger with its cost, except answers that reached the process as
    # it died (at most one per email in flight): those are in it as started (possibly billed). One cost session.
    rows = ledger_rows()
    assert len({r["session_id"] for r in rows}) == 1
    ended, first_ended = ([r for r in found if r["status"] != STARTED] for found in (rows, first_rows))
    lost = len(live_server.billed) - len(ended)
    assert 0 <= lost <= 4 and len(first_billed) - len(first_ended) == lost
    assert len(first_rows) - len(first_ended) >= lost
    server_tokens = tokens(live_server.billed, ("prompt_tokens", "completion_tokens"))
    ledger_tokens = tokens(rows, ("input_tokens", "output_tokens"))
    assert server_tokens - ledger_tokens == tokens(
        first_billed[len(first_billed) - lost :], ("prompt_tokens", "completion_tokens")
    ) or (lost == 0 and server_tokens == ledger_tokens)
    # What was paid twice is exactly the calls of the emails in flight at the kill, and nothing else.
    final_tokens = sum(v["usage"]["input_tokens"] + v["usage"]["output_tokens"] for v in variants)
    assert ledger_tokens == final_tokens + tokens(in_flight_rows, ("input_tokens", "output_tokens"))
    assert len([r for r in in_flight_rows if r["status"] == STARTED]) <= 4  # one call in flight per email
    assert len([r for r in in_flight_rows if r["status"] != STARTED]) <= 4


@pytest.mark.live_server
@pytest.mark.waits
def test_ctrl_c_then_resume_completes_the_campaign(live_server: Any) -> None:
    live_server.responder = flawed_drafter
    live_server.latency = 0.2
    proc = start_run(live_server.endpoint, "--concurrency", "2")
    deadline = time.monotonic() + 30
    while len(live_server.billed) < 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130
    run_dir = the_run_dir()
    assert f"go on with: cpo run --resume {run_dir}" in err
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    assert not (run_dir / "send_list.csv").exists()  # an unfinished campaign is not exported
    kept = len(kept_emails(run_dir))

    requests_before = len(live_server.requests)
    done = start_run(live_server.endpoint, "--resume", str(run_dir))
    _, err = done.communicate(timeout=120)
    assert done.returncode == 0, err
    assert len(live_server.requests) - requests_before == 2 * (EMAILS - kept)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    assert (run_dir / "send_list.csv").is_file()


@pytest.mark.live_server
@pytest.mark.waits
def test_the_budget_stops_the_run_and_resume_continues_under_the_same_cap(
    live_server: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    live_server.responder = flawed_drafter
    for name, value in azure_env(live_server.endpoint).items():
        monkeypatch.setenv(name, value)
    code = main(["run", "--max-usd", "0.004", "--concurrency", "2"])
    out, err = capsys.readouterr()
    assert code == 3, err
    run_dir = the_run_dir()
    assert "budget reached" in err and f"cpo run --resume {run_dir}" in err
    spent = sum(float(r["cost_usd"] or 0) for r in ledger_rows())
    assert 0 < spent <= 0.004

    code = main(["run", "--resume", str(run_dir), "--max-usd", "0.004"])  # the same cap: nothing more fits
    out, err = capsys.readouterr()
    assert code == 3 and "session before this resume" in out
    assert sum(float(r["cost_usd"] or 0) for r in ledger_rows()) <= 0.004

    code = main(["run", "--resume", str(run_dir), "--max-usd", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert len(json.loads((run_dir / "variants.json").read_text())) == EMAILS


def test_resume_refuses_changed_inputs_and_changed_options(capsys: pytest.CaptureFixture[str]) -> None:
    customers = Path("customers.csv")
    customers.write_bytes(SAMPLE.read_bytes())
    assert main(["run", "--customers", str(customers)]) == 0
    run_dir = the_run_dir()
    capsys.readouterr()
    with customers.open("a", encoding="utf-8") as handle:
        handle.write("C999999,Zed,30,Austin,Gold,9,100,5,0.3,0.05,true\n")
    assert main(["run", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"error: cannot resume {run_dir}: its customers changed since the run started; start a new run instead\n"
    )
    assert main(["run", "--resume", str(run_dir), "--seed", "5"]) == 2
    assert capsys.readouterr().err.startswith("error: --resume goes on with the options in")
    assert main(["run", "--resume", str(run_dir), "--review"]) == 2  # review is decided when a run starts
    assert capsys.readouterr().err.endswith("; leave out --review\n")


def test_a_run_json_edited_by_hand_is_one_line_when_resuming(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == 0
    run_dir = the_run_dir()
    record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    capsys.readouterr()
    for broken, message in (
        ({k: v for k, v in record.items() if k != "inputs"}, "run.json has no inputs (was it edited by hand?)"),
        ({**record, "inputs": {"seed": 1}}, "run.json has no inputs.customers (was it edited by hand?)"),
        ({**record, "session_id": ""}, "run.json has no session_id (was it edited by hand?)"),
        ([record], "run.json is not a JSON object"),
    ):
        (run_dir / "run.json").write_text(json.dumps(broken), encoding="utf-8")
        assert main(["run", "--resume", str(run_dir)]) == 2
        assert capsys.readouterr().err == f"error: cannot resume {run_dir}: {message}\n"
    (run_dir / "run.json").write_text("{not json", encoding="utf-8")
    assert main(["run", "--resume", str(run_dir)]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot resume {run_dir}: run.json is unreadable (")


def test_a_bad_customer_file_leaves_no_run_behind(capsys: pytest.CaptureFixture[str]) -> None:
    Path("customers.csv").write_text(
        "customer_id,tier,purchase_frequency,avg_order_value,last_engagement_days\nC1,Gold,often,10,3\n",
        encoding="utf-8",
    )
    code = main(["run", "--customers", "customers.csv"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: customer file customers.csv: line 2: purchase_frequency") and err.count("\n") == 1
    assert not [
        p for p in Path("runs").iterdir() if p.is_dir() and not p.name.startswith(".")
    ]  # no half-made run directory


def test_suppressed_and_unconsenting_customers_are_left_out_and_counted(capsys: pytest.CaptureFixture[str]) -> None:
    Path("suppress.txt").write_text("C000001\nC000002\n", encoding="utf-8")
    assert main(["run", "--suppress", "suppress.txt"]) == 0
    out = capsys.readouterr().out
    assert "250 in the file, 9 without consent, 2 suppressed, 239 in the campaign" in out
    run_dir = the_run_dir()
    with (run_dir / "assignments.csv").open(encoding="utf-8") as handle:
        assigned = {row["customer_id"] for row in csv.DictReader(handle)}
    assert len(assigned) == 239 and not {"C000001", "C000002"} & assigned


def test_the_log_names_customers_only_by_keyed_hash(capsys: pytest.CaptureFixture[str]) -> None:
    from cpo.core.privacy import IdHasher

    Path("suppress.txt").write_text("C000001\n", encoding="utf-8")
    assert main(["run", "--suppress", "suppress.txt"]) == 0
    capsys.readouterr()
    text = (the_run_dir() / "log.jsonl").read_text(encoding="utf-8")
    events = [json.loads(line) for line in text.splitlines()]
    excluded = [e for e in events if e["event"] == "excluded"]
    assert len(excluded) == 10 and {e["reason"] for e in excluded} == {"no consent", "suppressed"}
    hashed = IdHasher.for_installation()("C000001")
    assert {"customer": hashed, "reason": "suppressed"}.items() <= next(
        e for e in excluded if e["reason"] == "suppressed"
    ).items()
    ids = {row["customer_id"] for row in csv.DictReader(SAMPLE.open(encoding="utf-8"))}
    assert not any(i in text for i in ids)  # no raw id anywhere in the log
    assert [e["event"] for e in events if e["event"] in ("run", "stage", "finished")][:2] == ["run", "stage"]
    assert sum(e["event"] == "email" for e in events) == EMAILS


def test_dry_run_checks_the_inputs_estimates_and_writes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "emails: 20 first drafts" in out and "cost of the first drafts: $0 to $0 (cpo-offline)" in out
    assert "Business Bulk Buyer" in out and "nothing was written" in out
    assert not Path("runs").exists()


def test_the_run_records_what_it_was_made_from(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--seed", "11"]) == 0
    capsys.readouterr()
    record = json.loads((the_run_dir() / "run.json").read_text())
    assert record["inputs"]["seed"] == 11 and record["fingerprint"]["seed"] == "11"
    assert set(record["fingerprint"]) >= {"customers", "campaign", "rules", "prompts", "content"}
    stages = {"load_segment", "retrieve", "generate", "screen", "review", "assign", "export"}
    assert set(record["stage_seconds"]) == stages
    assert record["status"] == "complete" and record["exit_code"] == 0
    assert set(record["prompt_versions"]) == {"urgent", "informational", "friendly", "control"}
    assert record["versions"]["langgraph"] and record["checkpointer"] == "sqlite"


def test_render_fills_merge_fields_escaped_for_each_customer(capsys: pytest.CaptureFixture[str]) -> None:
    import email
    from email.policy import default

    rows = SAMPLE.read_text(encoding="utf-8").splitlines()
    header, first, second = rows[0], rows[1].split(","), rows[2].split(",")
    first[1], second[1] = "<b>Al</b> & co", '"Bo\r\nBcc: victim@example.com"'
    Path("customers.csv").write_text("\n".join([header, ",".join(first), ",".join(second)]) + "\n", encoding="utf-8")
    assert main(["run", "--customers", "customers.csv", "--render"]) == 0
    assert "rendered/ (2 emails)" in capsys.readouterr().out
    folder = the_run_dir() / "rendered"
    one = email.message_from_bytes((folder / f"{first[0]}.eml").read_bytes(), policy=default)
    text = one.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    page = one.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert text.startswith("Hi <b>Al</b> & co,") and "{{" not in text
    assert "Hi &lt;b&gt;Al&lt;/b&gt; &amp; co," in page and "<b>Al" not in page
    assert "Unsubscribe: https://example.com/unsubscribe" in text
    two = email.message_from_bytes((folder / f"{second[0]}.eml").read_bytes(), policy=default)
    assert two["Bcc"] is None  # a line break in a merge value cannot add a header or a line
    assert two.get_body(("plain",)).get_content().startswith("Hi Bo  Bcc: victim@example.com,")  # type: ignore[union-attr]


def test_render_refuses_a_list_too_long_to_write_a_file_per_customer(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cpo.campaign.planning.RENDER_LIMIT", 100)
    assert main(["run", "--render"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --render writes a file per customer and 241 customers are more than 100;")
    assert err.count("\n") == 1 and not [p for p in Path("runs").iterdir() if p.is_dir() and not p.name.startswith(".")]


def test_per_customer_writes_each_customer_an_email_from_their_own_figures(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cpo.campaign.agents.segmentation import PROMPT_FEATURES

    rows = SAMPLE.read_text(encoding="utf-8").splitlines()
    Path("vip.csv").write_text("\n".join(rows[:31]) + "\n", encoding="utf-8")  # 30 customers
    assert main(["run", "--customers", "vip.csv", "--per-customer", "--dry-run"]) == 0
    assert "emails: 30 first drafts" in capsys.readouterr().out  # one email per customer
    assert main(["run", "--customers", "vip.csv", "--per-customer"]) == 0
    capsys.readouterr()
    run_dir = the_run_dir()
    variants = json.loads((run_dir / "variants.json").read_text())
    with (run_dir / "send_list.csv").open(encoding="utf-8") as handle:
        sent = list(csv.DictReader(handle))
    with (run_dir / "assignments.csv").open(encoding="utf-8") as handle:
        arms = {row["customer_id"]: row["arm"] for row in csv.DictReader(handle)}
    assert len(sent) == 30 and len(variants) == 30
    by_id = {v["variant_id"]: v for v in variants}
    assert all(by_id[row["variant_id"]]["tone"] == arms[row["customer_id"]] for row in sent)  # the arm's tone

    from cpo.campaign.agents.load import load_customers
    from cpo.campaign.agents.segmentation import segment_customers
    from cpo.campaign.campaign_file import load_campaign
    from cpo.campaign.planning import personal_requests_for
    from cpo.email.content import load_snippets

    loaded = load_customers(Path("vip.csv"))
    segments = segment_customers(loaded)
    inputs = {"customers": "vip.csv", "campaign": None, "suppress": None, "seed": 2027, "run_dir": "."}
    requests = personal_requests_for(loaded, segments, load_campaign(), load_snippets(), inputs)  # type: ignore[arg-type]
    names = {row.split(",")[1] for row in rows[1:31]}
    for request in requests:  # only whitelisted figures reach a prompt: never a name or a location
        assert set(request.segment.features) <= {"tier", *PROMPT_FEATURES}
        assert not any(name in request.model_dump_json() for name in names)
    assert len({json.dumps(r.segment.features, sort_keys=True) for r in requests}) > 20  # their own figures


def test_per_customer_refuses_a_long_list_before_paying(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cpo.campaign.planning.PER_CUSTOMER_LIMIT", 100)
    assert main(["run", "--per-customer"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --per-customer writes an email per customer and 241 customers are more than 100")


def test_a_run_with_relative_paths_is_resumed_from_where_it_started(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    Path("customers.csv").write_bytes(SAMPLE.read_bytes())
    assert main(["run", "--customers", "customers.csv"]) == 0
    run_dir = the_run_dir().resolve()
    capsys.readouterr()
    Path("elsewhere").mkdir()
    monkeypatch.chdir("elsewhere")
    assert main(["run", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "with a relative customers path; resume it from there: cd " in err and err.count("\n") == 1
