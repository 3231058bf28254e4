"""Run directories written before the layered packages resume with today's code without paying twice.

`tests/fixtures/legacy-runs.tgz` holds three run directories written by cpo 0.2.0 at commit 867571d (see
`tests/fixtures/README.md`): a finished run, a run paused for review and a run killed with SIGKILL mid-way.
Their inputs were given as relative paths, so each is resumed from the directory it was unpacked into;
the working directory recorded in its run.json is set to that directory, as if it had started there.

`--resume` refuses a run whose prompts changed (emails from two prompt versions would be mixed), and the
shipped prompts changed since 0.2.0, so each run is resumed as if it had been started with
`--prompts tests/fixtures/prompts-0.2.0` (the prompt files of that commit): the case of a user whose run
used their own prompt folder. A segment that mixes tiers makes a different request today (no tier in its
profile: the old one called every reader by the most common tier), so its emails are written again; every
other kept email is found by its request key and not paid for twice.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from cpo.campaign.kept import KeptEmails, request_key
from cpo.campaign.planning import plan_campaign
from cpo.campaign.rundir import RUN_FILE, input_fingerprint
from cpo.cli import main

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def legacy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    with tarfile.open(FIXTURES / "legacy-runs.tgz") as tar:
        tar.extractall(tmp_path, filter="data")
    monkeypatch.setenv("CPO_ID_KEY_FILE", str(tmp_path / "id-key"))
    return tmp_path


def run_dir_of(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The one run in `root/runs`, resumable from `root` (its working directory)."""
    (run,) = [p for p in (root / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")]
    monkeypatch.chdir(root)
    record = json.loads((run / RUN_FILE).read_text(encoding="utf-8"))
    record["cwd"] = str(root)
    record["options"]["prompts"] = str(FIXTURES / "prompts-0.2.0")
    # The 0.2.0 sample campaign has no call to action and no postal address, which a campaign file now must
    # have; its offers, snippets, sender and rules are today's. Each run is resumed as if started with today's
    # sample campaign (a run whose campaign file changed is refused, as `test_runner` checks).
    record["fingerprint"]["campaign"] = input_fingerprint(record["inputs"] | {"campaign": None})["campaign"]
    (run / RUN_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
    monkeypatch.chdir(root)
    return run.relative_to(root)


def mixed_segments(run: Path) -> set[str]:
    """The run's segments whose customers hold more than one tier (from the run's own customer database)."""
    import duckdb

    con = duckdb.connect(str(run / "customers.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT segment FROM customers GROUP BY segment HAVING count(DISTINCT tier) > 1")
        return {str(r[0]) for r in rows.fetchall()}
    finally:
        con.close()


def rewritten_after_resume(run: Path) -> tuple[int, set[str]]:
    """Resume the run; (emails written again, their segments). Asserts the old kept files are untouched."""
    before = KeptEmails(run).all()
    assert main(["run", "--resume", str(run)]) == 0
    after = KeptEmails(run).all()
    assert {k: after[k] for k in before} == before
    new = set(after) - set(before)
    return len(new), {after[k]["segment"] for k in new}


def session_calls(run: Path) -> int:
    """Model calls this process made (the resumed run's costs.json counts only its own session)."""
    costs: dict[str, Any] = json.loads((run / "costs.json").read_text(encoding="utf-8"))
    return int(costs["session"]["calls"])


def test_a_finished_run_resumes_with_no_model_call(
    legacy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = run_dir_of(legacy / "done", monkeypatch)
    kept = KeptEmails(run).all()
    assert len(kept) == 20
    mixed = mixed_segments(run)
    assert 0 < len(mixed) < 5  # the fixture has both kinds of segment
    written, segments = rewritten_after_resume(run)
    assert segments == mixed and written == 4 * len(mixed)
    assert session_calls(run) == written  # every other email was found by its request key: not paid twice
    assert f"this run: {written} calls" in capsys.readouterr().out
    variants = json.loads((run / "variants.json").read_text(encoding="utf-8"))
    reused = {v["variant_id"] for v in kept.values() if v["segment"] not in mixed}
    # Kept emails are checked again by today's rules: a control they now refuse (the old offline drafter said
    # the offer twice) is replaced for sending by cpo's own, free (source: template).
    ours = [v for v in variants if v["source"] == "template"]
    assert all(v["tone"] == "control" and v["usage"]["calls"] == 0 for v in ours)
    assert len(variants) == 20 + len(ours) and reused <= {v["variant_id"] for v in variants}
    assert main(["audit", "verify", str(run)]) == 0  # no screening decision was audited twice


def test_a_run_paused_for_review_goes_on_with_no_model_call(
    legacy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = run_dir_of(legacy / "paused", monkeypatch)
    # Screened before emails had a preheader, a call to action and a postal address: what a reviewer would see
    # now is not what was screened, so review waits for the resumed run to screen them as they are now sent.
    assert main(["review", str(run), "--approve-rest", "--reviewer", "Ana"]) != 0
    assert "screens it again" in capsys.readouterr().err
    paused = main(["run", "--resume", str(run)])  # screens again (no model call), and pauses for review again
    assert "await a decision: cpo review" in capsys.readouterr().err and session_calls(run) == 0
    assert paused == main(["run", "--review"])  # the exit code of any run paused for review
    assert main(["review", str(run), "--approve-rest", "--reviewer", "Ana"]) == 0
    assert main(["run", "--resume", str(run)]) == 0  # from the old checkpoint, through the review node
    assert session_calls(run) == 0
    sent = (run / "send_list.csv").read_text(encoding="utf-8").splitlines()
    assert len(sent) == 1 + 39  # the header and every customer with consent
    assert main(["audit", "verify", str(run)]) == 0


def test_a_killed_run_generates_only_the_emails_it_had_not_kept(
    legacy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It goes on from its checkpoint, whose requests the old code made: each kept email is used again (and
    checked by today's rules, so one that calls a mixed segment's readers by one tier is not sendable), and
    the missing ones are written from today's request (no tier in a mixed segment's prompt)."""
    run = run_dir_of(legacy / "killed", monkeypatch)
    kept = KeptEmails(run).all()
    assert 0 < len(kept) < 20
    mixed = mixed_segments(run)
    written, segments = rewritten_after_resume(run)
    assert session_calls(run) == written == 20 - len(kept)  # the offline model is called once per missing email
    assert segments & mixed  # some of the missing ones are for a mixed segment
    variants = {v["variant_id"]: v for v in json.loads((run / "variants.json").read_text(encoding="utf-8"))}
    assert len(variants) == 20 and {v["variant_id"] for v in kept.values()} <= set(variants)
    templates = json.loads((run / "templates.json").read_text(encoding="utf-8"))
    for template in templates:
        codes = {i["code"] for i in variants[template["variant_id"]]["validation"]["issues"]}
        if template["segment"] in mixed:
            said = template["subject"] + template["body"]
            names = [t for t in ("Bronze", "Silver", "Gold", "Platinum") if f"{t} member" in said]
            assert ("wrong_audience" in codes) == bool(names), (template["variant_id"], names)
            assert not (names and template["sendable"])
    old_mixed = [v["variant_id"] for v in kept.values() if v["segment"] in mixed and v["tone"] != "control"]
    assert old_mixed and all("wrong_audience" in str(variants[v]["validation"]) for v in old_mixed)


def test_request_keys_are_those_of_the_code_before_the_move(tmp_path: Path) -> None:
    """The sample campaign's requests hash as they did, per segment x arm and per customer, but for the segments
    that mix tiers (issue 18: their profile no longer names the most common tier)."""
    import duckdb

    from cpo.campaign.backends import embedded_index
    from cpo.core.resources import bundled

    recorded = json.loads((FIXTURES / "request_keys.json").read_text(encoding="utf-8"))
    # The code before the move dealt arms by hash, so customers have the arms (and per-customer requests the
    # tones) they had then in hash mode; balanced blocks deal them otherwise.
    sample = (bundled("data") / "campaign.yaml").read_text(encoding="utf-8")
    hashed = tmp_path / "campaign.yaml"
    hashed.write_text(
        sample.replace("rules: segment_rules.yaml", f"rules: {bundled('data') / 'segment_rules.yaml'}")
        + "assignment: hash\n",
        encoding="utf-8",
    )
    for per_customer, name in ((False, "segments"), (True, "per_customer")):
        inputs: Any = {
            "customers": str(bundled("data") / "customers.csv"),
            "campaign": str(hashed),
            "suppress": None,
            "seed": 2027,
            "run_dir": str(tmp_path),
            "per_customer": per_customer,
        }
        con = duckdb.connect()
        try:
            _, segments, _, requests = plan_campaign(inputs, con, embedded_index())
        finally:
            con.close()
        mixed = {s.name for s in segments if len(s.tiers) > 1}
        assert [[r.segment.name, r.tone] for r in requests] == [row[:2] for row in recorded[name]]
        same = [request_key(r) == row[2] for r, row in zip(requests, recorded[name], strict=True)]
        # A segment that mixes tiers lost the tier from its profile: a different request, on purpose.
        expected = [per_customer or r.segment.name not in mixed for r in requests]
        assert same == expected
        assert per_customer or (mixed and not all(same))


def test_a_campaigns_own_vocabulary_is_part_of_the_request_key(tmp_path: Path) -> None:
    """Only the default vocabulary is left out of the hash: other tiers make a different email."""
    from cpo.core.models import Vocabulary
    from cpo.email.content import ContentBundle

    request = ContentBundle.load().request("High-Value Recent", "friendly")
    other = request.model_copy(update={"vocabulary": Vocabulary(tiers=("Basic", "Pro"))})
    assert request_key(other) != request_key(request)
    assert request_key(request.model_copy(update={"vocabulary": Vocabulary()})) == request_key(request)
