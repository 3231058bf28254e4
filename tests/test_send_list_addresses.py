"""The customer file's address column reaches the send list (an email platform such as Mailchimp keys its
audience on it), checked for shape and de-duplicated case-insensitively, with the customers left off counted.
Each test goes through the real `cpo run` with the offline drafter, as a user would.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from test_runner import the_run_dir
from test_who_gets_emailed import sample_rows, send_list, write_customers

from cpo.cli import main


def assignments(run_dir: Path) -> dict[str, dict[str, str]]:
    with (run_dir / "assignments.csv").open(encoding="utf-8", newline="") as handle:
        return {r["customer_id"]: r for r in csv.DictReader(handle)}


def test_the_sample_campaigns_send_list_carries_every_sent_customers_address() -> None:
    assert main(["run"]) == 0
    rows = send_list(the_run_dir())
    assert list(rows[0]) == ["customer_id", "email", "arm", "variant_id", "first_name", "segment", "source"]
    sample = {r["customer_id"]: r["email"] for r in sample_rows()}
    assert rows and all(r["email"] == sample[r["customer_id"]] for r in rows)
    assert all(r["email"].endswith("@example.com") for r in rows)  # fictional, on the reserved domain


@pytest.mark.parametrize("header", ["email", "E-mail Address", "EmailAddress", " Email "])
def test_the_address_column_is_read_in_any_common_spelling(header: str) -> None:
    assert main(["run", "--customers", write_customers(sample_rows(), rename={"email": header})]) == 0
    assert "email" in send_list(the_run_dir())[0]


def test_without_an_address_column_the_send_list_is_keyed_on_the_customer_id_alone() -> None:
    assert main(["run", "--customers", write_customers(sample_rows(), rename={"email": ""})]) == 0
    rows = send_list(the_run_dir())
    assert list(rows[0]) == ["customer_id", "arm", "variant_id", "first_name", "segment", "source"]


def test_a_malformed_or_repeated_address_is_left_off_counted_and_said(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [r for r in sample_rows() if r["email_opt_in"] == "true"]
    rows[3]["email"] = "not an address"
    rows[5]["email"] = ""
    rows[8]["email"] = rows[2]["email"].upper()  # the same inbox, another case: an earlier customer's
    assert main(["run", "--customers", write_customers(rows)]) == 0  # the others are sent: not a failed run
    err = capsys.readouterr().err
    assert "left off the send list: 2 whose address is not an address, 1 whose address is an earlier customer's" in err

    run_dir = the_run_dir()
    sent = {r["customer_id"] for r in send_list(run_dir)}
    holdout = {cid for cid, r in assignments(run_dir).items() if r["arm"] == "holdout"}
    dropped = {rows[i]["customer_id"] for i in (3, 5, 8)} - holdout
    assert dropped and not dropped & sent
    assert rows[2]["customer_id"] in sent or rows[2]["customer_id"] in holdout  # the first of the two is kept
    assert all(assignments(run_dir)[cid]["delivered_variant"] == "" for cid in dropped)  # not delivered
    emails = [r["email"].lower() for r in send_list(run_dir)]
    assert len(emails) == len(set(emails))
    assert len(sent) == len(rows) - len(holdout) - len(dropped)


# -- the .eml previews (`--render`), as a mail client shows them ----------------------------------------------


def test_a_preview_has_the_headers_a_mail_client_needs_and_a_working_unsubscribe_link() -> None:
    from email import message_from_bytes
    from email.policy import SMTP

    assert main(["run", "--render"]) == 0
    run_dir = the_run_dir()
    first = send_list(run_dir)[0]
    preview = next((run_dir / "rendered").glob("*.eml"))
    sent = {r["email"] for r in send_list(run_dir)}
    message = message_from_bytes(preview.read_bytes(), policy=SMTP)
    assert message["To"] in sent and first["email"] in sent
    assert message["Date"] and message["Message-ID"].endswith("@example.com>")
    assert message["List-Unsubscribe"] == "<https://example.com/unsubscribe>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"  # RFC 8058 one-click
    html_part = message.get_body(("html",))
    assert html_part is not None
    page = html_part.get_content()
    assert page.startswith("<!DOCTYPE html>") and '<html lang="en">' in page
    assert re.search(r'<a href="https://example.com/unsubscribe"[^>]*>Unsubscribe</a>', page)
    assert re.search(r'<a class="button" href="https://example.com/account/upgrade\?utm_source=cpo&amp;', page)

    # the audit compares the previews with what --render writes: To and the unsubscribe headers too
    assert main(["audit", "verify", str(run_dir)]) == 0
    preview.write_bytes(preview.read_bytes().replace(message["To"].encode(), b"someone.else@example.com", 1))
    assert main(["audit", "verify", str(run_dir)]) != 0
