"""Crash-safe exports and one cpo process per run directory, through the real `cpo run`, `--resume` and `review`.

An export is written to a temporary name and renamed into place, so a kill -9 never leaves half a
`send_list.csv` that looks whole; a second process in a run directory stops with one line and pays nothing;
a subject with a line break cannot add a header to a rendered email or crash the run.
"""

from __future__ import annotations

import csv
import email
import json
import os
import signal
import subprocess
import sys
import time
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from azure_server import email_drafter, ok
from test_budget import use_azure
from test_runner import the_run_dir

from cpo import ContentBundle, build_email_chain
from cpo.campaign.agents.export import ASSIGNMENTS_FILE, SEND_LIST_FILE
from cpo.campaign.rundir import locked
from cpo.cli import main
from cpo.core.resources import bundled
from cpo.llm.offline import OfflineChatModel

SAMPLE = bundled("data") / "customers.csv"
HOSTILE = "\r\nBcc: x@evil.example"
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def status(run_dir: Path) -> str:
    return str(json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["status"])


def rows(path: Path, width: int) -> list[list[str]]:
    """A whole CSV export: it ends with a line break and every row has `width` cells."""
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n"), f"{path.name} is cut mid-row"
    parsed = list(csv.reader(text.splitlines()))
    assert parsed and all(len(r) == width for r in parsed), f"{path.name} has a short row"
    return parsed[1:]


def assert_whole_or_absent(run_dir: Path) -> None:
    """send_list.csv is absent, or whole: one row for each assigned customer who gets a variant."""
    if not (run_dir / SEND_LIST_FILE).exists():
        return
    sent = rows(run_dir / SEND_LIST_FILE, 7)  # customer_id, email, arm, variant_id, first_name, segment, source
    assigned = rows(run_dir / ASSIGNMENTS_FILE, 5)
    assert len(sent) == sum(1 for r in assigned if r[4]) > 0


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.tmp"))


def test_a_failed_rename_leaves_no_send_list_and_resume_writes_it_whole(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: send_list.csv was written in place (no rename), so an export cut short left it under its name."""
    real_replace = os.replace

    def disk_full_on_send_list(src: Any, dst: Any) -> None:
        if Path(dst).name == SEND_LIST_FILE:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", disk_full_on_send_list)
    with pytest.raises(OSError, match="No space left"):
        main(["run"])
    run_dir = the_run_dir()
    assert not (run_dir / SEND_LIST_FILE).exists() and leftovers(run_dir) == []
    assert len(rows(run_dir / ASSIGNMENTS_FILE, 5)) > 0  # written (whole) before send_list.csv
    assert status(run_dir) == "failed"

    monkeypatch.setattr(os, "replace", real_replace)
    (run_dir / f".{SEND_LIST_FILE}.1.tmp").write_text("c-1,urgent,half", encoding="utf-8")  # a killed export's
    capsys.readouterr()
    assert main(["run", "--resume", str(run_dir)]) == 0
    assert_whole_or_absent(run_dir)
    assert (run_dir / SEND_LIST_FILE).exists() and leftovers(run_dir) == []
    assert status(run_dir) == "complete"
    assert main(["audit", "verify", str(run_dir)]) == 0


@pytest.mark.waits
def test_kill_9_during_export_never_leaves_a_cut_send_list(tmp_path: Path) -> None:
    """The run is killed as soon as send_list.csv (or its temporary file) appears; whenever the kill lands,
    send_list.csv is absent or whole. Before: it was often cut mid-row with run.json still "running"."""
    subprocess.run(
        [sys.executable, str(SCRIPTS / "make_customers.py"), "--count", "200000", "--out", "big.csv"],
        check=True,
        capture_output=True,
    )
    cli = Path(sys.executable).parent / "cpo"
    proc = subprocess.Popen(
        [str(cli), "run", "--customers", "big.csv"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            found = list(Path("runs").glob(f"*/{SEND_LIST_FILE}")) + list(Path("runs").glob(f"*/.{SEND_LIST_FILE}.*"))
            if found:
                break
            time.sleep(0.001)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    run_dir = the_run_dir()
    assert_whole_or_absent(run_dir)
    if status(run_dir) == "complete":
        assert (run_dir / SEND_LIST_FILE).exists()
    with locked(run_dir):  # the dead process's lock went with it
        pass


@pytest.mark.live_server
def test_a_second_resume_of_a_run_in_use_stops_with_one_line_and_pays_nothing(
    live_server: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: both processes resumed; one crashed on DuckDB's lock and emails were paid twice."""
    live_server.responder = email_drafter
    use_azure(monkeypatch, live_server.endpoint)
    monkeypatch.setenv("CPO_MODEL_NAME", "gpt-4o-mini")
    assert main(["run", "--max-usd", "0.002", "--concurrency", "1"]) == 3  # stopped by the budget: resumable
    run_dir = the_run_dir()
    paid, record = len(live_server.requests), (run_dir / "run.json").read_bytes()
    capsys.readouterr()
    with locked(run_dir):  # another cpo process working in the run
        assert main(["run", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {run_dir} is in use by another cpo process (pid {os.getpid()}); wait for it to finish\n"
    assert len(live_server.requests) == paid and (run_dir / "run.json").read_bytes() == record
    assert main(["run", "--resume", str(run_dir)]) == 0  # once the other process is done, the run goes on
    assert status(run_dir) == "complete" and len(live_server.requests) > paid
    with locked(run_dir):  # and the finished run released the directory
        pass


def test_review_of_a_run_in_use_stops_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--review"]) == 4
    run_dir = the_run_dir()
    capsys.readouterr()
    with locked(run_dir):
        assert main(["review", str(run_dir)]) == 2
        assert main(["review", str(run_dir), "--approve-rest", "--reviewer", "ana"]) == 2
    err = capsys.readouterr().err
    line = f"error: {run_dir} is in use by another cpo process (pid {os.getpid()}); wait for it to finish\n"
    assert err == line * 2
    assert not (run_dir / "review.json").exists()
    assert main(["review", str(run_dir), "--approve-rest", "--reviewer", "ana"]) == 0
    assert (run_dir / "review.json").exists()


def hostile_subjects(subject: str) -> Any:
    """A responder: valid drafts from the offline drafter, each with `subject`."""

    def respond(request: dict[str, Any]) -> Any:
        from langchain_core.messages import convert_to_messages

        from cpo.llm.offline import draft_email, read_brief

        brief = read_brief(convert_to_messages(request.get("messages") or []))
        return None if brief is None else ok(tool_args={**draft_email(brief), "subject": subject})

    return respond


@pytest.mark.live_server
@pytest.mark.parametrize("subject", ["Your plan" + HOSTILE, "Your plan\u2028Bcc: everyone"])
def test_render_with_a_line_break_in_the_subject_adds_no_header_and_finishes(
    live_server: Any, monkeypatch: pytest.MonkeyPatch, subject: str
) -> None:
    """Before: the email library raised on the subject's line break: a traceback and run.json left "running"."""
    live_server.responder = hostile_subjects(subject)
    use_azure(monkeypatch, live_server.endpoint)
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()[:41]
    Path("customers.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    code = main(["run", "--customers", "customers.csv", "--render", "--max-repairs", "0"])
    assert code in (0, 1)  # done, or done with invalid emails: not an exception
    run_dir = the_run_dir()
    assert status(run_dir) != "running"
    variants = json.loads((run_dir / "variants.json").read_text(encoding="utf-8"))
    # A segment whose model control ended invalid gets cpo's own (source: template), with its own subject.
    ours = {v["subject"] for v in variants if v["source"] == "template"}
    for path in (run_dir / "rendered").glob("*.eml"):
        message = email.message_from_bytes(path.read_bytes(), policy=default)
        subject = str(message["Subject"])
        assert message["Bcc"] is None and not set(subject) & set("\r\n\u2028")
        assert subject.startswith("Your plan") or subject in ours
    assert leftovers(run_dir / "rendered") == []


def test_a_rendered_subject_is_one_line_whatever_the_variant_says() -> None:
    """The renderer holds on its own, even given a variant marked valid with a CR/LF in its subject."""
    from cpo.campaign.agents.export import rendered_message, template_of
    from cpo.campaign.campaign_file import load_campaign

    bundle = ContentBundle.load()
    variant = build_email_chain(OfflineChatModel()).invoke(bundle.request(bundle.segments[0].name, "friendly"))
    hostile = variant.model_copy(update={"subject": "Your plan" + HOSTILE + "\u2028\x00\x1b"})
    values = {"first_name": "Al", "unsubscribe_url": "https://example.com/u"}
    campaign = load_campaign(None)
    raw = bytes(rendered_message(template_of(hostile, campaign, {}), campaign, values))
    message = email.message_from_bytes(raw, policy=default)
    assert message["Bcc"] is None
    assert message["Subject"] == "Your plan  Bcc: x@evil.example"
