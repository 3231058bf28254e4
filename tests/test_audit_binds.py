"""The audit binds what is sent: review decisions come from the chain, not from `review.json`; a kept email
edited on disk is not sent on the strength of its old screening; `cpo audit verify` recomputes the hash of
every sendable template and fails on any it did not pass; a missing anchor is a failure, not a skip.
Each goes through the real `cpo run`, `cpo review` and `cpo audit verify` (offline drafter).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from test_oversight import audit_rows, run_dir, write_rows

from cpo.campaign.audit import row_hash
from cpo.cli import main


def templates(folder: Path) -> dict[str, dict[str, Any]]:
    return {t["variant_id"]: t for t in json.loads((folder / "templates.json").read_text(encoding="utf-8"))}


def sent_ids(folder: Path) -> set[str]:
    with (folder / "send_list.csv").open(encoding="utf-8", newline="") as handle:
        return {row["variant_id"] for row in csv.DictReader(handle)}


def mark_every_template_sendable(folder: Path) -> None:
    """The forger's edit: every variant in templates.json marked sendable, rejected ones included."""
    exported = json.loads((folder / "templates.json").read_text(encoding="utf-8"))
    for t in exported:
        t["sendable"] = True
    (folder / "templates.json").write_text(json.dumps(exported), encoding="utf-8")


def verify(capsys: pytest.CaptureFixture[str], folder: Path) -> tuple[int, str]:
    code = main(["audit", "verify", str(folder)])
    out, err = capsys.readouterr()
    return code, out + err


@pytest.fixture
def reviewed(capsys: pytest.CaptureFixture[str]) -> tuple[Path, str]:
    """A run paused for review, one friendly variant rejected, the rest approved: (run dir, the rejected id)."""
    assert main(["run", "--review"]) == 4
    folder = run_dir()
    variants = json.loads((folder / "variants.json").read_text(encoding="utf-8"))
    rejected = next(v["variant_id"] for v in variants if v["tone"] == "friendly")
    assert main(["review", str(folder), "--reject", rejected, "--reviewer", "ana", "--reason", "off brand"]) == 0
    assert main(["review", str(folder), "--approve-rest", "--reviewer", "ana"]) == 0
    capsys.readouterr()
    return folder, rejected


def test_an_approval_written_into_review_json_by_hand_does_not_send_a_rejected_variant(
    capsys: pytest.CaptureFixture[str], reviewed: tuple[Path, str]
) -> None:
    folder, rejected = reviewed
    view = json.loads((folder / "review.json").read_text(encoding="utf-8"))
    view[rejected]["decision"] = "approve"
    (folder / "review.json").write_text(json.dumps(view), encoding="utf-8")

    assert main(["run", "--resume", str(folder)]) == 0
    capsys.readouterr()
    assert templates(folder)[rejected]["sendable"] is False and rejected not in sent_ids(folder)
    assert verify(capsys, folder)[0] == 0


def test_a_review_json_written_without_cpo_review_decides_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--review"]) == 4
    folder = run_dir()
    variants = json.loads((folder / "variants.json").read_text(encoding="utf-8"))
    forged = {v["variant_id"]: {"decision": "approve", "reviewer": "nobody", "reason": ""} for v in variants}
    (folder / "review.json").write_text(json.dumps(forged), encoding="utf-8")
    capsys.readouterr()
    assert main(["run", "--resume", str(folder)]) == 2
    assert "variants await a review decision" in capsys.readouterr().err
    assert not (folder / "send_list.csv").exists()


def test_a_kept_email_edited_on_disk_is_not_sent_on_its_old_screening(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == 0
    folder = run_dir()
    kept = sorted((folder / "emails").glob("*.json"))[0]
    email = json.loads(kept.read_text(encoding="utf-8"))
    email["body"] += "\n\nWe will crush the competition, and it is all yours."
    kept.write_text(json.dumps(email), encoding="utf-8")
    capsys.readouterr()

    main(["run", "--resume", str(folder)])
    capsys.readouterr()
    edited = email["variant_id"]
    assert templates(folder)[edited]["sendable"] is False and edited not in sent_ids(folder)
    rows = [r for r in audit_rows(folder) if r["variant_id"] == edited]
    assert rows[-1]["decision"] == "block" and "changed after it was screened" in rows[-1]["reasons"]
    assert verify(capsys, folder)[0] == 0  # the chain holds, and nothing sendable differs from what it passed


def test_verify_fails_on_a_template_edited_after_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == 0
    folder = run_dir()
    capsys.readouterr()
    exported = json.loads((folder / "templates.json").read_text(encoding="utf-8"))
    exported[3]["body"] = exported[3]["body"].replace("Northwind", "Northwind (see evil.example/login)", 1)
    (folder / "templates.json").write_text(json.dumps(exported), encoding="utf-8")
    code, text = verify(capsys, folder)
    assert code == 1
    assert f"variant {exported[3]['variant_id']}: templates.json is not the content the audit screened" in text


def test_verify_fails_on_a_template_marked_sendable_that_review_rejected(
    capsys: pytest.CaptureFixture[str], reviewed: tuple[Path, str]
) -> None:
    folder, rejected = reviewed
    assert main(["run", "--resume", str(folder)]) == 0
    capsys.readouterr()
    mark_every_template_sendable(folder)
    code, text = verify(capsys, folder)
    assert code == 1 and f"variant {rejected} is sendable in templates.json but the audit has no approval" in text


def test_a_ledger_pointer_removed_from_run_json_does_not_skip_the_ledger(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == 0
    folder = run_dir()
    capsys.readouterr()
    rows = audit_rows(folder)[:-1]  # the forger drops the last row and makes run.json agree
    write_rows(folder, rows)
    record = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    record["audit_head"], record["ledger"] = rows[-1]["row_hash"], None
    (folder / "run.json").write_text(json.dumps(record), encoding="utf-8")
    code, text = verify(capsys, folder)
    assert code == 1 and "recorded in the cost ledger" in text


def test_a_missing_ledger_is_a_failure_not_a_skip(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == 0
    folder = run_dir()
    capsys.readouterr()
    Path("runs/ledger.sqlite").unlink()
    code, text = verify(capsys, folder)
    assert code == 1 and "(missing)" in text and "an anchor is missing" in text
    assert row_hash(audit_rows(folder)[0]) == audit_rows(folder)[0]["row_hash"]  # the file itself is intact


def test_a_reviewed_run_stays_reviewed_when_run_json_says_otherwise(
    capsys: pytest.CaptureFixture[str], reviewed: tuple[Path, str]
) -> None:
    folder, rejected = reviewed
    assert main(["run", "--resume", str(folder)]) == 0
    capsys.readouterr()
    record = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    record["inputs"]["review"] = False
    (folder / "run.json").write_text(json.dumps(record), encoding="utf-8")
    mark_every_template_sendable(folder)
    code, text = verify(capsys, folder)
    assert code == 1 and f"variant {rejected} is sendable in templates.json but the audit has no approval" in text


def test_a_kept_email_edited_with_its_screening_entry_deleted_is_still_not_sent(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The earlier decision is taken from the chain, not screening.json; model text is screened for links too."""
    assert main(["run"]) == 0
    folder = run_dir()
    kept = sorted((folder / "emails").glob("*.json"))[0]
    email = json.loads(kept.read_text(encoding="utf-8"))
    email["body"] += "\n\nVerify your account at https://evil.example/login today."
    kept.write_text(json.dumps(email), encoding="utf-8")
    screening = json.loads((folder / "screening.json").read_text(encoding="utf-8"))
    del screening[email["variant_id"]]
    (folder / "screening.json").write_text(json.dumps(screening), encoding="utf-8")
    capsys.readouterr()

    main(["run", "--resume", str(folder)])
    capsys.readouterr()
    edited = email["variant_id"]
    assert templates(folder)[edited]["sendable"] is False and edited not in sent_ids(folder)
    last = [r for r in audit_rows(folder) if r["variant_id"] == edited][-1]
    assert (
        last["decision"] == "block" and "changed after it was screened" in last["reasons"] and "link" in last["reasons"]
    )


def test_a_reviewer_cannot_approve_content_other_than_what_was_screened(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "--review"]) == 4
    folder = run_dir()
    variants = json.loads((folder / "variants.json").read_text(encoding="utf-8"))
    variants[0]["body"] += "\n\nA friendlier closing line."  # what the reviewer would be shown
    (folder / "variants.json").write_text(json.dumps(variants), encoding="utf-8")
    capsys.readouterr()
    assert main(["review", str(folder), "--approve", variants[0]["variant_id"], "--reviewer", "ana"]) == 2
    assert "what cpo review shows is not what was screened" in capsys.readouterr().err


def test_a_ledger_pointer_moved_to_another_ledger_does_not_escape_the_one_beside_the_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cpo.accounting.ledger import Ledger

    assert main(["run"]) == 0
    folder = run_dir()
    capsys.readouterr()
    Ledger(Path("other.sqlite")).close()
    rows = audit_rows(folder)[:-1]
    write_rows(folder, rows)
    record = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    del record["audit_head"]
    record["ledger"] = str(Path("other.sqlite").resolve())
    (folder / "run.json").write_text(json.dumps(record), encoding="utf-8")
    code, text = verify(capsys, folder)
    assert code == 1 and "beside the run" in text

    Path("runs/ledger.sqlite").unlink()  # no anchor left at all: a failure too
    code, text = verify(capsys, folder)
    assert code == 1 and "no anchor" in text


def test_verify_fails_on_a_send_list_that_delivers_a_rejected_variant(
    capsys: pytest.CaptureFixture[str], reviewed: tuple[Path, str]
) -> None:
    folder, rejected = reviewed
    assert main(["run", "--resume", str(folder)]) == 0
    capsys.readouterr()
    assert verify(capsys, folder)[0] == 0
    lines = (folder / "send_list.csv").read_text(encoding="utf-8").splitlines()
    header, first = lines[0].split(","), lines[1].split(",")
    first[header.index("variant_id")] = rejected
    lines[1] = ",".join(first)
    (folder / "send_list.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, text = verify(capsys, folder)
    assert code == 1 and f"send_list.csv line 2 delivers variant {rejected}, which is not sendable" in text


def rendered_run(capsys: pytest.CaptureFixture[str], *extra: str) -> Path:
    """A run of the sample's first 40 customers with `--render` (one `.eml` preview per sent customer)."""
    from cpo.core.resources import bundled

    lines = (bundled("data") / "customers.csv").read_text(encoding="utf-8").splitlines()[:41]
    Path("customers.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    code = main(["run", "--customers", "customers.csv", "--render", *extra])
    assert code in (0, 4), capsys.readouterr().err
    capsys.readouterr()
    return run_dir()


def edit_preview(path: Path, edit: Any) -> None:
    """Rewrite a preview as an editor would: parsed, changed by `edit(message)`, written back."""
    import email
    from email.policy import SMTP

    message = email.message_from_bytes(path.read_bytes(), policy=SMTP)
    edit(message)
    path.write_bytes(bytes(message))


def preview_text(path: Path) -> str:
    """A preview's text parts, decoded (quoted-printable wraps long lines)."""
    import email
    from email.policy import default

    message = email.message_from_bytes(path.read_bytes(), policy=default)
    return "\n".join(str(part.get_content()) for part in message.walk() if part.get_content_maintype() == "text")


def test_an_untouched_rendered_run_verifies_its_previews(capsys: pytest.CaptureFixture[str]) -> None:
    folder = rendered_run(capsys)
    previews = len(list((folder / "rendered").glob("*.eml")))
    assert previews == len(sent_ids_rows(folder)) > 0
    code, text = verify(capsys, folder)
    assert code == 0 and f"and the {previews} rendered previews are what they say" in text


def sent_ids_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "send_list.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_verify_fails_on_a_preview_whose_body_was_edited_by_hand(capsys: pytest.CaptureFixture[str]) -> None:
    folder = rendered_run(capsys)
    preview = sorted((folder / "rendered").glob("*.eml"))[0]

    def add_claim(message: Any) -> None:
        text = message.get_body(("plain",))
        text.set_content(text.get_content().replace("\n\n", "\n\nYou also get a $500 credit.\n\n", 1))

    edit_preview(preview, add_claim)
    code, text = verify(capsys, folder)
    assert code == 1
    assert f"rendered/{preview.name} is not what --render writes" in text
    assert text.count("\n") == 1  # one line, naming the file


def test_verify_fails_on_a_preview_whose_subject_was_edited_by_hand(capsys: pytest.CaptureFixture[str]) -> None:
    folder = rendered_run(capsys)
    preview = sorted((folder / "rendered").glob("*.eml"))[-1]
    edit_preview(preview, lambda m: m.replace_header("Subject", "Your account is locked: act now"))
    code, text = verify(capsys, folder)
    assert code == 1 and f"rendered/{preview.name} is not what --render writes" in text


def test_verify_fails_on_a_preview_of_a_variant_that_is_not_sendable(capsys: pytest.CaptureFixture[str]) -> None:
    folder = rendered_run(capsys, "--review")
    variants = json.loads((folder / "variants.json").read_text(encoding="utf-8"))
    rejected = next(v["variant_id"] for v in variants if v["tone"] == "friendly")
    assert main(["review", str(folder), "--reject", rejected, "--reviewer", "ana", "--reason", "off brand"]) == 0
    assert main(["review", str(folder), "--approve-rest", "--reviewer", "ana"]) == 0
    assert main(["run", "--resume", str(folder)]) in (0, 1)
    capsys.readouterr()
    assert verify(capsys, folder)[0] == 0
    preview = sorted((folder / "rendered").glob("*.eml"))[0]
    edit_preview(preview, lambda m: m.replace_header("X-Cpo-Variant", rejected))
    code, text = verify(capsys, folder)
    assert code == 1 and f"rendered/{preview.name} is a preview of variant {rejected}, which is not sendable" in text


def test_verify_fails_on_a_preview_for_a_customer_who_is_not_sent(capsys: pytest.CaptureFixture[str]) -> None:
    folder = rendered_run(capsys)
    preview = sorted((folder / "rendered").glob("*.eml"))[0]
    (folder / "rendered" / "NOBODY-1.eml").write_bytes(preview.read_bytes())
    code, text = verify(capsys, folder)
    assert code == 1 and "rendered/NOBODY-1.eml is not the preview of any customer on the send list" in text


def test_a_resumed_rendered_run_leaves_no_preview_of_an_email_it_no_longer_sends(
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = rendered_run(capsys)
    before = {p.name for p in (folder / "rendered").glob("*.eml")}
    for kept in (folder / "emails").glob("*.json"):  # every control email edited: their customers get nothing
        email = json.loads(kept.read_text(encoding="utf-8"))
        if email["tone"] == "control":
            email["body"] += "\n\nWe will crush the competition, and it is all yours."
            kept.write_text(json.dumps(email), encoding="utf-8")
    main(["run", "--resume", str(folder)])
    capsys.readouterr()
    after = {p.name for p in (folder / "rendered").glob("*.eml")}
    assert after <= before and len(after) == len(sent_ids_rows(folder))
    # The edited controls are not sent (their customers get cpo's own control instead): no preview shows them.
    shown = [preview_text(p) for p in (folder / "rendered").glob("*.eml")]
    assert shown and not [t for t in shown if "crush the competition" in t]
    variants = json.loads((folder / "variants.json").read_text(encoding="utf-8"))
    assert any(v["source"] == "template" for v in variants)
    assert verify(capsys, folder)[0] == 0


def kept_email_renamed_with(folder: Path, edit: Any) -> tuple[str, str]:
    """The forger's edit of a kept email that escapes "changed after it was screened": the text changed by
    `edit(body)` under a new variant id the audit has never seen. Returns (old id, new id)."""
    kept = sorted((folder / "emails").glob("*.json"))[0]
    email = json.loads(kept.read_text(encoding="utf-8"))
    old = email["variant_id"]
    email["body"], email["variant_id"] = edit(email["body"]), old[:-8] + "0badc0de"
    kept.write_text(json.dumps(email), encoding="utf-8")
    return old, email["variant_id"]


def session_calls(folder: Path) -> int:
    return int(json.loads((folder / "costs.json").read_text(encoding="utf-8"))["session"]["calls"])


def test_a_kept_email_edited_to_an_ungrounded_credit_is_not_sent_after_resume(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run"]) == 0
    folder = run_dir()
    _, forged = kept_email_renamed_with(
        folder, lambda body: body.replace("\n\n", "\n\nYou also get a $500 credit.\n\n", 1)
    )
    capsys.readouterr()

    main(["run", "--resume", str(folder)])
    capsys.readouterr()
    assert session_calls(folder) == 0  # re-checked, not paid for again
    assert templates(folder)[forged]["sendable"] is False and forged not in sent_ids(folder)
    variant = next(v for v in json.loads((folder / "variants.json").read_text(encoding="utf-8"))
                   if v["variant_id"] == forged)  # fmt: skip
    codes = {i["code"] for i in variant["validation"]["issues"]}
    assert not variant["validation"]["valid"] and "ungrounded_claim" in codes
    assert any("500" in i["message"] for i in variant["validation"]["issues"])
    assert verify(capsys, folder)[0] == 0


def test_a_kept_email_edited_to_break_todays_rules_is_not_sent_after_resume(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run"]) == 0
    folder = run_dir()
    _, forged = kept_email_renamed_with(folder, lambda body: body.split("\n\n")[0] + "\n\nThanks.")
    capsys.readouterr()

    main(["run", "--resume", str(folder)])
    capsys.readouterr()
    assert templates(folder)[forged]["sendable"] is False and forged not in sent_ids(folder)
    variant = next(v for v in json.loads((folder / "variants.json").read_text(encoding="utf-8"))
                   if v["variant_id"] == forged)  # fmt: skip
    assert "body_length" in {i["code"] for i in variant["validation"]["issues"]}


def test_untouched_kept_emails_are_reused_with_no_model_call_and_stay_sendable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run"]) == 0
    folder = run_dir()
    first = templates(folder)
    capsys.readouterr()
    assert main(["run", "--resume", str(folder)]) == 0
    capsys.readouterr()
    assert session_calls(folder) == 0
    assert templates(folder) == first and all(t["sendable"] for t in first.values())
    assert verify(capsys, folder)[0] == 0
