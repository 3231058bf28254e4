"""Who gets emailed: consent and suppression that fail closed, mistakes caught before paying, exit codes that tell
the truth. Each test goes through the real `cpo run` (offline drafter, or the loopback test server where what is
checked is that no request was sent) as a user would hit it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from test_budget import use_azure
from test_runner import the_run_dir

from cpo.cli import main
from cpo.core.resources import bundled

DATA = bundled("data")
SAMPLE = DATA / "customers.csv"
OPTED_OUT = 9  # customers of the sample with email_opt_in false


def sample_rows() -> list[dict[str, str]]:
    with SAMPLE.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def write_customers(
    rows: list[dict[str, str]], path: str = "customers.csv", rename: dict[str, str] | None = None
) -> str:
    rename = rename or {}
    fields = [f for f in rows[0] if rename.get(f) != ""]
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([rename.get(f, f) for f in fields])
        writer.writerows([[row[f] for f in fields] for row in rows])
    return path


def campaign(path: str = "campaign.yaml", **replace: str) -> str:
    """The sample campaign with its rules path made absolute and `replace`'s text swapped in."""
    text = (DATA / "campaign.yaml").read_text(encoding="utf-8")
    text = text.replace("rules: segment_rules.yaml", f"rules: {DATA / 'segment_rules.yaml'}")
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    Path(path).write_text(text, encoding="utf-8")
    return path


def send_list(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "send_list.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def no_run_left(runs: str = "runs") -> bool:
    """No run directory (the runs directory may hold the session's ledger and the content index)."""
    return not Path(runs).exists() or not [p for p in Path(runs).iterdir() if p.is_dir() and not p.name.startswith(".")]


# -- who gets emailed ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    ["Email_Opt_In", "EMAIL OPT IN", " opt-in ", "Consent", "EmailOptIn", "Accepts Email Marketing", "e-mail opt in"],
)
def test_a_consent_column_in_any_spelling_keeps_those_who_opted_out_off_the_send_list(
    capsys: pytest.CaptureFixture[str], header: str
) -> None:
    rows = sample_rows()
    out_ids = {r["customer_id"] for r in rows if r["email_opt_in"] == "false"}
    assert len(out_ids) == OPTED_OUT
    assert main(["run", "--customers", write_customers(rows, rename={"email_opt_in": header})]) == 0
    out = capsys.readouterr().out
    assert f"250 in the file, {OPTED_OUT} without consent" in out
    assert not out_ids & {r["customer_id"] for r in send_list(the_run_dir())}


@pytest.mark.parametrize("header", ["Email Opt Out", "marketing_status", "Unsubscribed", "GDPR"])
def test_a_column_that_looks_like_consent_but_is_not_read_as_consent_is_refused(
    capsys: pytest.CaptureFixture[str], header: str
) -> None:
    path = write_customers(sample_rows(), rename={"email_opt_in": header})
    assert main(["run", "--customers", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: customer file customers.csv: line 1: column {header!r} looks like consent")
    assert err.count("\n") == 1 and no_run_left()


def test_no_consent_column_is_a_warning_or_with_consent_required_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    path = write_customers(sample_rows(), rename={"email_opt_in": ""})
    assert main(["run", "--customers", path]) == 0
    err = capsys.readouterr().err
    assert "warning: customer file customers.csv has no consent column" in err
    record = json.loads((the_run_dir() / "run.json").read_text(encoding="utf-8"))
    assert any("no consent column" in w for w in record["warnings"])

    strict = campaign(**{"holdout: 0.0": "holdout: 0.0\nconsent: required"})
    for extra in ([], ["--dry-run"]):
        code = main(["run", "--customers", path, "--config", strict, "--out", "strict", *extra])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1
        assert err.startswith("error: customer file customers.csv: no consent column (one of email_opt_in")
        assert no_run_left("strict")


def test_a_blank_consent_value_excludes_the_customer_and_is_counted(capsys: pytest.CaptureFixture[str]) -> None:
    rows = sample_rows()
    blank = [r for r in rows if r["email_opt_in"] == "true"][:3]
    for r in blank:
        r["email_opt_in"] = "  "
    rows[5]["email_opt_in"] = "YES"  # any case
    assert main(["run", "--customers", write_customers(rows)]) == 0
    out = capsys.readouterr().out
    assert f"250 in the file, {OPTED_OUT} without consent, 3 with no consent recorded, 0 suppressed, 238 in" in out
    run_dir = the_run_dir()
    sent = {r["customer_id"] for r in send_list(run_dir)}
    assert len(sent) == 238 and not {r["customer_id"] for r in blank} & sent
    with (run_dir / "assignments.csv").open(encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == 238  # every customer: in the campaign or excluded with a reason
    events = [json.loads(line) for line in (run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    reasons = [e["reason"] for e in events if e["event"] == "excluded"]
    assert sorted(reasons) == ["no consent"] * OPTED_OUT + ["no consent recorded"] * 3


def test_suppression_is_read_as_csv_with_quotes_spaces_and_case(capsys: pytest.CaptureFixture[str]) -> None:
    Path("suppress.csv").write_text(
        'name,Customer ID\n"Doe, Jane",C000001\n"Roe, Rick"," c000002 "\n"Poe, Pat","C000003"\nNobody,NOT-A-CUSTOMER\n',
        encoding="utf-8",
    )
    assert main(["run", "--suppress", "suppress.csv"]) == 0
    out = capsys.readouterr().out
    assert "3 suppressed (1 suppression ids match no one), 238 in the campaign" in out
    sent = {r["customer_id"] for r in send_list(the_run_dir())}
    assert not {"C000001", "C000002", "C000003"} & sent


def test_ids_match_whatever_whitespace_or_case_a_spreadsheet_gave_them(capsys: pytest.CaptureFixture[str]) -> None:
    rows = sample_rows()[:20]
    for row in rows:
        row["email_opt_in"] = "true"
    rows[0]["customer_id"], rows[1]["customer_id"] = "C000001\t", "C000002\r"
    rows[2]["customer_id"], rows[3]["customer_id"] = "\u00a0İD3\u200b", "ΟΔΟΣ"
    Path("suppress.csv").write_text("C000001\nc000002\nİD3\nΟΔΟΣ\n", encoding="utf-8")
    assert main(["run", "--customers", write_customers(rows), "--suppress", "suppress.csv"]) == 0
    out = capsys.readouterr().out
    assert "20 in the file, 0 without consent, 4 suppressed, 16 in the campaign" in out
    assert len(send_list(the_run_dir())) == 16

    rows[4]["customer_id"] = "C000001"  # the same customer as "C000001\t"
    assert main(["run", "--customers", write_customers(rows), "--out", "again"]) == 2
    assert "customer id 'C000001' appears twice (lines 2 and 6)" in capsys.readouterr().err


def test_cpos_own_send_list_suppresses_everyone_on_it(capsys: pytest.CaptureFixture[str]) -> None:
    """Its ids that a spreadsheet would run were written with a leading ' (-17 as '-17): read back without it."""
    rows = sample_rows()[:20]
    for row, new_id in zip(rows, ["-17", "+4420", "=1+1", "@home"], strict=False):
        row["customer_id"], row["email_opt_in"] = new_id, "true"
    path = write_customers(rows)
    assert main(["run", "--customers", path, "--out", "first"]) == 0
    (first,) = list(Path("first").glob("2*"))
    sent = len(send_list(first))
    assert sent and {"'-17", "'+4420", "'=1+1", "'@home"} <= {r["customer_id"] for r in send_list(first)}
    capsys.readouterr()
    assert main(["run", "--customers", path, "--suppress", str(first / "send_list.csv"), "--out", "second"]) == 0
    assert f"{sent} suppressed, {len(rows) - 0 - sent} in the campaign" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no ids (the file is empty)"),
        ("\ufeff", "no ids (the file is empty)"),
        ("customer_id\n", "no ids (only a header)"),
        ("customer_id\tname\nC000001\tAna\n", "line 1: expected comma-separated values or one id per line, but"),
        ("email\nana@example.com\n", "line 1: a list of 'email', not of customer ids"),
        ("name,customer_id\nAna,C000001\nBen\n", "line 3 has no customer_id (its column 2 is missing)"),
        ("name,email\nJane,jane@example.com\n", "line 1: no customer_id column"),
    ],
    ids=["empty", "bom-only", "header-only", "tab-separated", "emails", "short-row", "no-id-column"],
)
def test_a_suppression_list_cpo_cannot_read_as_meant_is_refused(
    capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    Path("suppress.csv").write_text(text, encoding="utf-8")
    assert main(["run", "--suppress", "suppress.csv"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: suppression file suppress.csv: {message}") and err.count("\n") == 1
    assert no_run_left()


def test_a_suppression_list_matching_no_one_is_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    Path("suppress.csv").write_text("customer_id\n1\n2\n", encoding="utf-8")  # leading zeros lost in a sheet
    assert main(["run", "--suppress", "suppress.csv"]) == 0
    out, err = capsys.readouterr()
    assert "0 suppressed (2 suppression ids match no one)" in out
    assert err.count("warning: none of the 2 ids of the suppression list matches a customer") == 1


def test_a_suppression_csv_without_an_id_column_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    Path("suppress.csv").write_text("name,email\nJane,jane@example.com\n", encoding="utf-8")
    assert main(["run", "--suppress", "suppress.csv"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: suppression file suppress.csv: line 1: no customer_id column") and err.count("\n") == 1
    )
    assert no_run_left()


def test_ids_that_differ_only_by_spaces_are_duplicates(capsys: pytest.CaptureFixture[str]) -> None:
    rows = sample_rows()
    rows[1]["customer_id"] = f" {rows[0]['customer_id']}"
    rows[2]["customer_id"] = f"{rows[0]['customer_id']}  "
    assert main(["run", "--customers", write_customers(rows)]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"error: customer file customers.csv: customer id '{rows[0]['customer_id']}' appears twice (lines 2 and 4)\n"
    )
    assert no_run_left()


def test_tiers_are_matched_ignoring_case_and_an_unknown_tier_names_its_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = sample_rows()
    platinum = next(i for i, r in enumerate(rows) if r["tier"] == "Platinum" and r["email_opt_in"] == "true")
    rows[platinum]["tier"] = "platinum"
    assert main(["run", "--customers", write_customers(rows), "--out", "a"]) == 0
    capsys.readouterr()
    (run_a,) = list(Path("a").glob("2*"))
    assert main(["run", "--out", "b"]) == 0  # the sample as shipped
    capsys.readouterr()
    (run_b,) = list(Path("b").glob("2*"))
    assert (run_a / "assignments.csv").read_text() == (run_b / "assignments.csv").read_text()

    rows[7]["tier"] = "Diamond"
    for extra in ([], ["--dry-run"]):
        assert main(["run", "--customers", write_customers(rows), "--out", "c", *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: customer file customers.csv: line 9: tier 'Diamond' is not one of the campaign's")
        assert no_run_left("c")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("customer_id;tier;purchase_frequency\nC1;Gold;3\n", "line 1: expected comma-separated values, but the header "
         "is separated by ';'"),
        ("customer_id,tier,purchase_frequency,avg_order_value,last_engagement_days\nC1,Gold,3,1,2\nC2,Gold,"
         + "x" * 5_000_000 + ",1,2\n", "line 3: the line is longer than 2 MB"),
        ("customer_id,tier,Tier,purchase_frequency,avg_order_value,last_engagement_days\nC1,Gold,Gold,3,1,2\n",
         "line 1: 'tier' and 'Tier' are both column 'tier'"),
        ('customer_id,tier,purchase_frequency,avg_order_value,last_engagement_days\nC1,Gold,3,1,2\nC2,"Gold,3,1,2\n',
         "line 3: a quoted field is never closed"),
        ("customer_id,tier,purchase_frequency,avg_order_value,last_engagement_days\nC1,Gold,inf,1,2\n",
         "line 2: purchase_frequency 'inf' is not a number"),
        ("customer_id,tier,purchase_frequency,avg_order_value,last_engagement_days\nC1,Gold,3,NaN,2\n",
         "line 2: avg_order_value 'NaN' is not a number"),
    ],
    ids=["semicolons", "a-5-MB-field", "duplicate-tier-header", "unterminated-quote", "infinite", "nan"],
)  # fmt: skip
def test_a_file_cpo_cannot_read_as_csv_names_the_delimiter_and_the_line(
    capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    Path("customers.csv").write_text(text, encoding="utf-8")
    assert main(["run", "--customers", "customers.csv"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: customer file customers.csv: {message}") and err.count("\n") == 1
    assert "xxxx" not in err
    assert no_run_left()


# -- checked before paying -------------------------------------------------------------------------------------


def bad_limits() -> list[str]:
    Path("limits.yaml").write_text("body_min_words: 142\nbody_max_words: 92\n", encoding="utf-8")
    return ["--limits", "limits.yaml"]


BEFORE_PAYING: dict[str, tuple[Any, str]] = {
    "unknown-arm": (
        lambda: ["--config", campaign(**{"{control: 1,": "{contrl: 1,"})],
        "error: campaign file campaign.yaml: allocation: unknown arm 'contrl'",
    ),
    "footer-without-its-link": (
        lambda: ["--config", campaign(**{"Unsubscribe: {{ unsubscribe_url }}": "Reply STOP to unsubscribe."})],
        "error: campaign file campaign.yaml: unsubscribe: the footer has no {{ unsubscribe_url }} link",
    ),
    "offer-contradicting-its-snippet": (
        lambda: ["--config", campaign(**{"for $9.99 a month": "for $6.99 a month"})],
        "error: campaign file campaign.yaml: offers.New Customer: the offer states '$6.99 a month' and none of its "
        "snippets",
    ),
    "offer-with-the-wrong-period": (
        lambda: ["--config", campaign(**{"$99 a year": "$99 a month"})],
        "error: campaign file campaign.yaml: offers.default: the offer states '$99 a month'",
    ),
    "limits-max-below-min": (bad_limits, "error: limits file limits.yaml: body_min_words (142) is more than"),
    "footer-with-a-policy-term": (
        lambda: ["--config", campaign(**{"Unsubscribe: {{": "Unsubscribe to kill these emails: {{"})],
        "error: campaign file campaign.yaml: unsubscribe: the footer would block every email (Violence severity",
    ),
    "footer-hiding-its-link": (
        lambda: ["--config", campaign(**{"Unsubscribe: {{ unsubscribe_url }}": "<!-- {{ unsubscribe_url }} -->"})],
        "error: campaign file campaign.yaml: unsubscribe: the footer is plain text with one merge tag",
    ),
    "allocation-weight-infinite": (
        lambda: ["--config", campaign(**{"{control: 1,": "{control: .inf,"})],
        "error: campaign file campaign.yaml: allocation: weights must be numbers from 0 to",
    ),
    "allocation-weight-huge": (
        lambda: ["--config", campaign(**{"{control: 1,": "{control: 1e308,"})],
        "error: campaign file campaign.yaml: allocation: weights must be numbers from 0 to",
    ),
    "footer-that-blocks-every-email": (
        lambda: ["--config", campaign(**{"Unsubscribe: {{": "Risk-free! Unsubscribe: {{"})],
        "error: campaign file campaign.yaml: unsubscribe: the footer would block every email (risk-free claim: "
        "'Risk-free')",
    ),
    "a-rule-that-does-not-bind": (
        lambda: [
            "--config",
            campaign(**{f"rules: {DATA / 'segment_rules.yaml'}": "rules: rules.yaml"}),
        ],
        "error: rules file",
    ),
}


@pytest.mark.live_server
@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize("case", list(BEFORE_PAYING))
def test_mistakes_are_caught_before_the_first_model_call(
    live_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: str,
    dry_run: bool,
) -> None:
    use_azure(monkeypatch, live_server.endpoint)
    monkeypatch.setenv("CPO_MODEL_NAME", "gpt-4o-mini")
    Path("rules.yaml").write_text(
        (DATA / "segment_rules.yaml").read_text(encoding="utf-8").replace("tier = 'Platinum'", "tierr = 'Platinum'"),
        encoding="utf-8",
    )
    make_args, message = BEFORE_PAYING[case]
    code = main(["run", *make_args(), *(["--dry-run"] if dry_run else [])])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(message) and err.count("\n") == 1
    assert live_server.requests == []  # nothing was paid for
    assert no_run_left()


# -- exit codes that tell the truth ------------------------------------------------------------------------------


def test_a_run_whose_controls_are_rejected_in_review_exits_1_and_names_who_gets_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every control rejected: the other arms' customers still get their own variants, the control arms get
    nothing. (A run whose variants are all blocked by screening: tests/test_azure_services.py.)"""
    assert main(["run", "--review"]) == 4
    run_dir = the_run_dir()
    variants = json.loads((run_dir / "variants.json").read_text(encoding="utf-8"))
    controls = [v["variant_id"] for v in variants if v["tone"] == "control"]
    assert main(["review", str(run_dir), "--reject", *controls, "--reviewer", "ana", "--reason", "off brand"]) == 0
    assert main(["review", str(run_dir), "--approve-rest", "--reviewer", "ana"]) == 0
    capsys.readouterr()

    code = main(["run", "--resume", str(run_dir)])
    out, err = capsys.readouterr()
    assert code == 1
    cells = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["unsent_customers"]
    assert set(cells) == {"Business Bulk Buyer", "High-Value Recent", "Lapsed", "New Customer", "Regular"}
    nothing = sum(cells.values())
    assert 0 < nothing < 241 and len(send_list(run_dir)) == 241 - nothing
    assert out.count("get nothing: its control is rejected in review by ana: off brand") == 5
    assert "no valid control" not in out
    assert f"not sent: {nothing} of 241 customers in the campaign get no email" in err


def test_a_run_with_no_valid_email_exits_1_and_says_invalid(capsys: pytest.CaptureFixture[str]) -> None:
    Path("limits.yaml").write_text("subject_max_chars: 3\n", encoding="utf-8")
    code = main(["run", "--limits", "limits.yaml", "--max-repairs", "0"])
    out, err = capsys.readouterr()
    assert code == 1
    assert (
        "valid: 0 of 20" in out
        and "get nothing: its control is invalid and cpo's own is invalid, with nothing to fall back on" in out
    )
    assert "not sent: 241 of 241 customers" in err
    assert send_list(the_run_dir()) == []


def test_a_clean_run_exits_0_and_records_that_no_one_was_left_out(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run"]) == 0
    capsys.readouterr()
    record = json.loads((the_run_dir() / "run.json").read_text(encoding="utf-8"))
    assert record["exit_code"] == 0 and record["unsent_customers"] == {} and record["warnings"] == []


@pytest.mark.parametrize(
    ("stopped_by", "expected"),
    [("interrupted", 130), ("budget", 3), ("review", 4), ("auth", 2), (None, 1)],
)
def test_a_stop_takes_precedence_over_customers_who_get_nothing(stopped_by: str | None, expected: int) -> None:
    from cpo.campaign.runner import RunResult

    result = RunResult(run_dir=Path("x"), stopped_by=stopped_by, delivery={"unsent_customers": {"Lapsed": 12}})
    assert result.exit_code == expected
    assert RunResult(run_dir=Path("x"), delivery={"unsent_customers": {"Lapsed": 0}}).exit_code == 0


def test_review_decisions_are_private_to_their_user(capsys: pytest.CaptureFixture[str]) -> None:
    """`cpo review` writes reviewers' names and reasons: 0600, as every file `cpo run` writes."""
    assert main(["run", "--review"]) == 4
    run_dir = the_run_dir()
    assert main(["review", str(run_dir), "--approve-rest", "--reviewer", "ana"]) == 0
    assert (run_dir / "review.json").stat().st_mode & 0o777 == 0o600


def test_per_customer_says_why_customers_get_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [r for r in sample_rows() if r["email_opt_in"] == "true"][:12]
    Path("limits.yaml").write_text("subject_max_chars: 3\n", encoding="utf-8")
    args = ["run", "--customers", write_customers(rows), "--per-customer", "--limits", "limits.yaml"]
    assert main([*args, "--max-repairs", "0"]) == 1
    out, err = capsys.readouterr()
    assert "customer(s) get nothing: their own emails are invalid" in out
    assert "not sent: 12 of 12 customers in the campaign get no email" in err
