"""Run directories written before the layered packages resume with today's code without paying twice.

`tests/fixtures/legacy-runs.tgz` holds three run directories written by cpo 0.2.0 at commit 867571d (see
`tests/fixtures/README.md`): a finished run, a run paused for review and a run killed with SIGKILL mid-way.
Their inputs were given as relative paths, so each is resumed from the directory it was unpacked into;
the working directory recorded in its run.json is set to that directory, as if it had started there.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from cpo.campaign.kept import KeptEmails, request_key
from cpo.campaign.planning import plan_campaign
from cpo.campaign.rundir import RUN_FILE
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
    (run,) = [p for p in (root / "runs").iterdir() if p.is_dir()]
    record = json.loads((run / RUN_FILE).read_text(encoding="utf-8"))
    record["cwd"] = str(root)
    (run / RUN_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
    monkeypatch.chdir(root)
    return run.relative_to(root)


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
    assert main(["run", "--resume", str(run)]) == 0
    assert session_calls(run) == 0  # every email was found by its request key: nothing paid for again
    assert "this run: 0 calls" in capsys.readouterr().out
    variants = json.loads((run / "variants.json").read_text(encoding="utf-8"))
    assert sorted(v["variant_id"] for v in variants) == sorted(v["variant_id"] for v in kept.values())
    assert main(["audit", "verify", str(run)]) == 0  # no screening decision was audited twice


def test_a_run_paused_for_review_goes_on_with_no_model_call(
    legacy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = run_dir_of(legacy / "paused", monkeypatch)
    assert main(["review", str(run), "--approve-rest", "--reviewer", "Ana"]) == 0
    assert main(["run", "--resume", str(run)]) == 0  # from the old checkpoint, through the review node
    assert session_calls(run) == 0
    sent = (run / "send_list.csv").read_text(encoding="utf-8").splitlines()
    assert len(sent) == 1 + 39  # the header and every customer with consent
    assert main(["audit", "verify", str(run)]) == 0


def test_a_killed_run_generates_only_the_emails_it_had_not_kept(
    legacy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = run_dir_of(legacy / "killed", monkeypatch)
    kept = KeptEmails(run).all()
    assert 0 < len(kept) < 20
    assert main(["run", "--resume", str(run)]) == 0
    assert session_calls(run) == 20 - len(kept)  # the offline model is called once per missing email
    variants = {v["variant_id"] for v in json.loads((run / "variants.json").read_text(encoding="utf-8"))}
    assert len(variants) == 20 and {v["variant_id"] for v in kept.values()} <= variants


def test_request_keys_are_those_of_the_code_before_the_move(tmp_path: Path) -> None:
    """The sample campaign's requests hash as they did, per segment x arm and per customer."""
    import duckdb

    from cpo.campaign.backends import embedded_index
    from cpo.core.resources import bundled

    recorded = json.loads((FIXTURES / "request_keys.json").read_text(encoding="utf-8"))
    for per_customer, name in ((False, "segments"), (True, "per_customer")):
        inputs: Any = {
            "customers": str(bundled("data") / "customers.csv"),
            "campaign": None,
            "suppress": None,
            "seed": 2027,
            "run_dir": str(tmp_path),
            "per_customer": per_customer,
        }
        con = duckdb.connect()
        try:
            _, _, _, requests = plan_campaign(inputs, con, embedded_index())
        finally:
            con.close()
        assert [[r.segment.name, r.tone, request_key(r)] for r in requests] == recorded[name]


def test_a_campaigns_own_vocabulary_is_part_of_the_request_key(tmp_path: Path) -> None:
    """Only the default vocabulary is left out of the hash: other tiers make a different email."""
    from cpo.core.models import Vocabulary
    from cpo.email.content import ContentBundle

    request = ContentBundle.load().request("High-Value Recent", "friendly")
    other = request.model_copy(update={"vocabulary": Vocabulary(tiers=("Basic", "Pro"))})
    assert request_key(other) != request_key(request)
    assert request_key(request.model_copy(update={"vocabulary": Vocabulary()})) == request_key(request)
