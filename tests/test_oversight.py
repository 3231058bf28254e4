"""Safety screening, the tamper-evident audit and human review: each rule where it could break."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from cpo.campaign.agents.safety import CATEGORIES, LocalScreen, SafetyPolicy, load_policy, screen_variant
from cpo.campaign.audit import FIELDS, row_hash
from cpo.campaign.mail.message import Frame
from cpo.campaign.rundir import AUDIT_FILE
from cpo.cli import main
from cpo.core.errors import InputError
from cpo.core.models import EmailVariant, Snippet
from cpo.email.chain import build_email_chain
from cpo.email.content import ContentBundle
from cpo.llm.offline import OfflineChatModel

FOOTER = "Unsubscribe: {{ unsubscribe_url }}"
FRAME = Frame(footer=FOOTER)


@pytest.fixture(scope="module")
def variant() -> EmailVariant:
    bundle = ContentBundle.load()
    return build_email_chain(OfflineChatModel()).invoke(bundle.request(bundle.segments[0].name, "friendly"))


def with_body(v: EmailVariant, extra: str) -> EmailVariant:
    return v.model_copy(update={"body": f"{v.body}\n\n{extra}"})


class Fixed:
    """A screen that reports the given severities (or raises)."""

    name = "fixed"

    def __init__(self, severities: dict[str, int] | Exception) -> None:
        self.severities = severities

    def analyze(self, text: str) -> dict[str, int]:
        if isinstance(self.severities, Exception):
            raise self.severities
        return self.severities


@pytest.mark.parametrize(("severity", "blocked"), [(3, False), (4, True), (5, True)])
def test_a_severity_at_the_threshold_blocks_and_one_below_passes(
    variant: EmailVariant, severity: int, blocked: bool
) -> None:
    policy = SafetyPolicy(threshold=4)
    decision = screen_variant(variant, frame=FRAME, screen=Fixed({"Violence": severity}), policy=policy)
    assert decision.blocked is blocked
    assert decision.severities == {**dict.fromkeys(CATEGORIES, 0), "Violence": severity}
    if blocked:
        assert decision.reasons == [f"Violence severity {severity} is at or above the threshold 4"]


def test_a_screening_error_blocks_the_variant(variant: EmailVariant) -> None:
    """Fail closed: a screen that cannot answer never lets a variant through."""
    decision = screen_variant(variant, frame=FRAME, screen=Fixed(TimeoutError("read timed out")), policy=SafetyPolicy())
    assert decision.blocked and decision.reasons == ["screening unavailable: read timed out"]


def test_the_subject_is_screened_as_well_as_the_body(variant: EmailVariant) -> None:
    screen = LocalScreen(load_policy())
    bad_subject = variant.model_copy(update={"subject": "A nude offer for you"})
    decision = screen_variant(bad_subject, frame=FRAME, screen=screen, policy=load_policy())
    assert decision.blocked and decision.severities["Sexual"] == 6


def test_local_terms_match_whole_words_only(variant: EmailVariant) -> None:
    policy = load_policy()
    screen = LocalScreen(policy)
    assert screen.analyze("our skill set and killer deals")["Violence"] == 0  # not "kill"
    assert screen.analyze("they will KILL the competition")["Violence"] == 4


def test_compliance_rules_block_unsupported_claims_and_allow_quoted_ones(variant: EmailVariant) -> None:
    policy = load_policy()
    screen = LocalScreen(policy)
    risk = screen_variant(with_body(variant, "Upgrading is completely risk-free."), frame=FRAME, screen=screen,
                          policy=policy)  # fmt: skip
    assert risk.blocked and risk.reasons == ["risk-free claim: 'risk-free'"]
    promise = with_body(variant, "We guarantee the lowest price.")
    assert screen_variant(promise, frame=FRAME, screen=screen, policy=policy).blocked
    backed = [Snippet(id="price-guarantee", title="t", text="Our price guarantee covers 14 days.")]
    assert not screen_variant(promise, frame=FRAME, screen=screen, policy=policy, cited=backed).blocked


def test_a_footer_without_an_unsubscribe_link_blocks(variant: EmailVariant) -> None:
    policy = load_policy()
    frame = Frame(footer="Thanks for reading.")
    decision = screen_variant(variant, frame=frame, screen=LocalScreen(policy), policy=policy)
    assert decision.blocked and decision.reasons == ["the unsubscribe footer has no {{ unsubscribe_url }} link"]


def test_a_bad_policy_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("threshold: 4\ncategories:\n  Spam: {buy: 3}\n", encoding="utf-8")
    with pytest.raises(InputError, match="unknown category 'Spam'"):
        load_policy(path)


# -- the campaign: screening, fallback, audit, review ------------------------------------------------


def run_dir() -> Path:
    (found,) = [p for p in Path("runs").iterdir() if p.is_dir() and not p.name.startswith(".")]
    return found


def audit_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / AUDIT_FILE).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_rows(folder: Path, rows: list[dict[str, str]]) -> None:
    with (folder / AUDIT_FILE).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def verify(capsys: pytest.CaptureFixture[str], folder: Path) -> tuple[int, str]:
    code = main(["audit", "verify", str(folder)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_a_blocked_variant_falls_back_to_control_and_is_audited(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import cpo.campaign.screening

    real = cpo.campaign.screening.screen_variant

    def blocking_urgent(variant: EmailVariant, **kwargs: Any) -> Any:
        if variant.tone == "urgent":
            variant = with_body(variant, "Act now, it is risk-free.")
        return real(variant, **kwargs)

    monkeypatch.setattr(cpo.campaign.screening, "screen_variant", blocking_urgent)
    assert main(["run"]) == 0
    out = capsys.readouterr().out
    folder = run_dir()
    assert "screened: 20 variants (local-policy), 5 blocked" in out
    assert (
        "Regular / urgent: its variant is blocked by screening: risk-free claim: 'risk-free'; those customers get"
        in out
    )
    screening = json.loads((folder / "screening.json").read_text())
    templates = {t["variant_id"]: t for t in json.loads((folder / "templates.json").read_text())}
    with (folder / "assignments.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    controls = {t["segment"]: t["variant_id"] for t in templates.values() if t["arm"] == "control"}
    for row in (r for r in rows if r["arm"] == "urgent"):
        assert row["delivered_variant"] == controls[row["segment"]]  # never the blocked one
    blocked = {v for v, d in screening.items() if d["blocked"]}
    assert len(blocked) == 5 and all(not templates[v]["sendable"] for v in blocked)
    decisions = {r["variant_id"]: r["decision"] for r in audit_rows(folder) if r["backend"] != "export"}
    assert {v for v, d in decisions.items() if d == "block"} == blocked and len(decisions) == 20
    assert verify(capsys, folder)[0] == 0


@pytest.fixture
def audited(capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["run"]) == 0
    capsys.readouterr()
    return run_dir()


def test_audit_verify_passes_an_untouched_run(capsys: pytest.CaptureFixture[str], audited: Path) -> None:
    code, out = verify(capsys, audited)
    # 20 screening rows, then the send list and the assignments bound by their hashes at export
    assert code == 0 and out.startswith("ok: 22 rows, head ") and "matching run.json and the cost ledger" in out
    assert [r["variant_id"] for r in audit_rows(audited)[-2:]] == ["send_list.csv", "assignments.csv"]
    assert main(["review", str(audited), "--approve-rest", "--reviewer", "ana"]) == 2  # nothing to review
    assert capsys.readouterr().err.endswith("was not run with --review: its variants were exported without review\n")


@pytest.mark.parametrize(
    ("index", "field"), [(0, "decision"), (3, "decision"), (-1, "decision"), (-1, "content_sha256"), (-1, "reasons")]
)
def test_an_edited_row_is_detected(capsys: pytest.CaptureFixture[str], audited: Path, index: int, field: str) -> None:
    """Any row, the first, one in the middle and the last (the head the recorded copies point at), any field."""
    rows = audit_rows(audited)
    row = rows[index]
    row[field] = {"decision": "pass" if row["decision"] == "block" else "block", "reasons": "edited"}.get(
        field, "0" * 64
    )
    write_rows(audited, rows)
    code, out = verify(capsys, audited)
    line = (index % len(rows)) + 2  # the header is line 1
    assert code == 1 and f"line {line}: its hash does not match its content (edited)" in out


def test_a_removed_row_is_detected(capsys: pytest.CaptureFixture[str], audited: Path) -> None:
    rows = audit_rows(audited)
    write_rows(audited, rows[:7] + rows[8:])
    code, out = verify(capsys, audited)
    assert code == 1 and "line 9: its previous-row hash does not match (a row was removed" in out
    write_rows(audited, rows[:-1])  # the last row: the chain is intact but shorter than recorded
    code, out = verify(capsys, audited)
    assert code == 1 and "does not match the one recorded in run.json" in out


def test_a_rewritten_file_is_detected_by_the_recorded_heads(capsys: pytest.CaptureFixture[str], audited: Path) -> None:
    """A forger rewrites every row with a fresh, consistent chain: only the recorded heads catch it."""
    rows = audit_rows(audited)
    rows[0]["time_utc"] = "2026-01-01T00:00:00.000+00:00"  # backdated, and every hash after it recomputed
    rows[0]["row_hash"] = row_hash(rows[0])
    for index in range(1, len(rows)):
        rows[index]["prev_hash"] = rows[index - 1]["row_hash"]
        rows[index]["row_hash"] = row_hash(rows[index])
    write_rows(audited, rows)
    code, out = verify(capsys, audited)
    assert code == 1 and "does not match the one recorded in run.json" in out
    record = json.loads((audited / "run.json").read_text())
    record["audit_head"] = rows[-1]["row_hash"]  # the forger edits run.json too: the ledger's copy remains
    (audited / "run.json").write_text(json.dumps(record))
    code, out = verify(capsys, audited)
    assert code == 1 and "recorded in the cost ledger" in out


def test_review_pauses_then_approvals_and_rejections_resume_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--review"]) == 4
    err = capsys.readouterr().err
    folder = run_dir()
    assert f"paused for review: 20 variant(s) await a decision: cpo review {folder}" in err
    assert not (folder / "send_list.csv").exists()

    assert main(["run", "--resume", str(folder)]) == 2  # nothing decided yet
    assert "20 of 20 variants await a review decision" in capsys.readouterr().err

    variants = json.loads((folder / "variants.json").read_text())
    friendly = [v["variant_id"] for v in variants if v["tone"] == "friendly"]
    assert main(["review", str(folder), "--reject", *friendly, "--reviewer", "ana"]) == 2
    assert "a rejection needs a reason" in capsys.readouterr().err
    assert main(["review", str(folder), "--reject", *friendly, "--reviewer", "ana", "--reason", "off-brand"]) == 0
    assert "15 variant(s) still await a decision" in capsys.readouterr().out
    assert main(["review", str(folder), "--approve-rest", "--reviewer", "ana"]) == 0
    capsys.readouterr()

    assert main(["run", "--resume", str(folder)]) == 0
    out = capsys.readouterr().out
    assert sum(line.startswith("rejected in review by ana: off-brand") for line in out.splitlines()) == 5
    assert out.count("its variant is rejected in review by ana: off-brand; those customers get the control") == 5
    with (folder / "assignments.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and not {r["delivered_variant"] for r in rows} & set(friendly)  # rejected: control instead
    decisions = [r for r in audit_rows(folder) if r["backend"] == "review"]
    assert len(decisions) == 20 and {r["reviewer"] for r in decisions} == {"ana"}
    assert sum(r["decision"] == "reject" and r["reasons"] == "off-brand" for r in decisions) == 5
    assert verify(capsys, folder)[0] == 0

    # Resumed again once finished: the reviewers' decisions for that very content are in the chain, so the run
    # goes on through them instead of pausing for a review that was made (twice in a row, the same files)
    sent = (folder / "send_list.csv").read_bytes()
    for _ in range(2):
        assert main(["run", "--resume", str(folder)]) == 0
        assert "paused for review" not in capsys.readouterr().err
        assert (folder / "send_list.csv").read_bytes() == sent
    assert verify(capsys, folder)[0] == 0


def test_a_resumed_run_keeps_its_screening_instead_of_auditing_it_twice(
    capsys: pytest.CaptureFixture[str], audited: Path
) -> None:
    assert main(["run", "--resume", str(audited)]) == 0
    capsys.readouterr()
    assert len(audit_rows(audited)) == 22  # the same variants screened once, the same files bound once
    assert verify(capsys, audited)[0] == 0
