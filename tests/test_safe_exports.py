"""Exports a spreadsheet cannot run, and rendered emails that cannot overwrite each other, through `cpo run`.

The customers, segment names and rules here are what a hostile or careless file could hold: first names
and ids a spreadsheet takes for formulas, and ids (`A/1`, `A_1`, `A 1`) that read alike as file names.
"""

from __future__ import annotations

import csv
import email
import json
import re
from email.policy import default
from pathlib import Path

import pytest
from test_runner import the_run_dir

from cpo.cli import main
from cpo.core.resources import bundled

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # OWASP: what a spreadsheet reads as a formula
NAMES = {  # customer id -> first name
    "A/1": '=HYPERLINK("http://evil","x")',
    "A_1": "+cmd|' /C calc'!A0",
    "A 1": "@SUM(1+1)",
    "-17": "-2+3",
    "+44": "\tTab",
    "@home": "\rCarriage",
    "=1+1": "Ana",
    "C000009": "Ben",
}
RULES = """segments:
  - name: "@VIP"
    rule: "-purchase_frequency < -20"
  - name: "=Lapsed"
    rule: last_engagement_days > 30
  - name: Regular
    rule: "true"
"""


def hostile_campaign() -> list[str]:
    """The sample's customers renamed and re-identified, and a campaign whose segments are named like formulas."""
    data = bundled("data")
    with (data / "customers.csv").open(newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))[: len(NAMES) + 1]
    consent = header.index("email_opt_in")
    with Path("customers.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row, (customer_id, name) in zip(rows, NAMES.items(), strict=True):
            row[0], row[1], row[consent] = customer_id, name, "true"
            writer.writerow(row)
    Path("rules.yaml").write_text(RULES, encoding="utf-8")
    sample = (data / "campaign.yaml").read_text(encoding="utf-8")
    Path("campaign.yaml").write_text(re.sub(r"(?m)^rules: .*$", "rules: rules.yaml", sample), encoding="utf-8")
    return ["--customers", "customers.csv", "--config", "campaign.yaml", "--out", "runs"]


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def quote(value: str) -> str:
    """What the exports should hold: OWASP's `'` in front of a formula, anything else as it is."""
    return f"'{value}" if value.startswith(FORMULA_STARTS) else value


def formulas(rows: list[list[str]]) -> list[str]:
    """The cells a spreadsheet would run."""
    return [cell for row in rows for cell in row if cell.startswith(FORMULA_STARTS)]


def by_column(rows: list[list[str]], key: str, value: str) -> dict[str, str]:
    header, *body = rows
    return {row[header.index(key)]: row[header.index(value)] for row in body}


def test_exports_prefix_every_text_cell_a_spreadsheet_would_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", *hostile_campaign()]) == 0
    capsys.readouterr()
    run_dir = the_run_dir()
    exports = {name: read_csv(run_dir / name) for name in ("assignments.csv", "send_list.csv", "segments.csv")}
    for name, rows in exports.items():
        assert formulas(rows) == [], name

    quoted = {quote(i): quote(n) for i, n in NAMES.items()}
    assert quoted["'-17"] == "'-2+3" and quoted["A/1"] == "'" + NAMES["A/1"]  # the id too: '-17, not -17
    assert by_column(exports["send_list.csv"], "customer_id", "first_name") == quoted  # everyone is sent
    assignments = exports["assignments.csv"]
    assert sorted(by_column(assignments, "customer_id", "segment")) == sorted(quoted)
    assert {"'@VIP", "'=Lapsed"} <= set(by_column(assignments, "customer_id", "segment").values())
    segments = by_column(exports["segments.csv"], "segment", "rule")
    assert segments == {"'@VIP": "'-purchase_frequency < -20", "'=Lapsed": "last_engagement_days > 30",
                        "Regular": "true"}  # fmt: skip
    sizes = by_column(exports["segments.csv"], "segment", "size")
    assert sum(int(n) for n in sizes.values()) == len(NAMES)  # numbers stay numbers


def test_rendered_emails_are_one_file_per_sent_customer_when_ids_read_alike(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", *hostile_campaign(), "--render"]) == 0
    summary = re.search(r"rendered/ \((\d+) emails\)", capsys.readouterr().out)
    assert summary is not None
    run_dir = the_run_dir()
    files = sorted((run_dir / "rendered").glob("*.eml"))
    sent = read_csv(run_dir / "send_list.csv")[1:]
    assert int(summary.group(1)) == len(files) == len(sent) == len(NAMES)
    greetings = []
    for path in files:
        message = email.message_from_bytes(path.read_bytes(), policy=default)
        text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        greetings.append(text.splitlines()[0])
    # Each customer's own email, once: a merge value loses its control characters, never its file.
    expected = sorted(f"Hi {name.strip()}," for name in NAMES.values())
    assert sorted(greetings) == expected
    assert {"A_1.eml", "C000009.eml"} <= {p.name for p in files}  # an id that is a file name already is kept
    assert main(["audit", "verify", str(run_dir)]) == 0  # each preview found again from its quoted send-list row
    assert "and the 8 rendered previews are what they say" in capsys.readouterr().out


def test_the_audit_prefixes_formula_reviewers_and_still_verifies(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", *hostile_campaign(), "--review"]) == 4
    run_dir = the_run_dir()
    variants = json.loads((run_dir / "variants.json").read_text(encoding="utf-8"))
    rejected = next(v["variant_id"] for v in variants if v["tone"] != "control")
    reviewer, reason = '=HYPERLINK("http://evil","x")', "-1+1 off-brand"
    assert main(["review", str(run_dir), "--reject", rejected, "--reviewer", reviewer, "--reason", reason]) == 0
    assert main(["review", str(run_dir), "--approve-rest", "--reviewer", "@ana"]) == 0
    assert main(["run", "--resume", str(run_dir)]) == 0
    capsys.readouterr()

    rows = read_csv(run_dir / "safety_audit.csv")
    assert formulas(rows) == []
    header, *body = rows
    decisions = [dict(zip(header, row, strict=True)) for row in body if row[header.index("backend")] == "review"]
    assert len(decisions) == len(variants)
    rejections = {(d["variant_id"], d["reviewer"], d["reasons"]) for d in decisions if d["decision"] == "reject"}
    assert rejections == {(rejected, f"'{reviewer}", f"'{reason}")}
    assert {d["reviewer"] for d in decisions if d["decision"] == "approve"} == {"'@ana"}
    assert main(["audit", "verify", str(run_dir)]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {len(body)} rows, head ")
