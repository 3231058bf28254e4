"""Segment rules run on a sandbox: a copy of the customers with file and network access off.

A rule is SQL from the user's rules file. Before, it ran on the connection that loaded the customer file, so
it could read any file (the per-installation id key included), and a conversion error printed what it read.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import pytest

from cpo.campaign.agents.load import load_customers
from cpo.campaign.agents.segmentation import segment_customers
from cpo.cli import main
from cpo.core.errors import InputError
from cpo.core.resources import bundled

SAMPLE = bundled("data") / "customers.csv"
KEY = "idkey-7Q2xV9mR4tW8zL3p"  # what the id key file holds in these tests: no rule may print it
READERS = {
    "read_text": "CAST((SELECT content FROM read_text('{path}')) AS INTEGER) > 0",
    "read_blob": "CAST(CAST((SELECT content FROM read_blob('{path}')) AS VARCHAR) AS INTEGER) > 0",
    "read_csv": "CAST((SELECT min(column0) FROM read_csv('{path}', header = false)) AS INTEGER) > 0",
}
NO_FILES = "rules may only read the customer table's columns (file and network functions are disabled)"
HIDDEN = "the message is not shown: it may quote customer data"


def write_rules(path: Path, *rules: tuple[str, str]) -> Path:
    """A rules file (JSON strings are YAML too, so any rule text survives quoting)."""
    lines = [f"- {{name: {json.dumps(name)}, rule: {json.dumps(rule)}}}" for name, rule in rules]
    path.write_text("segments:\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_campaign(rules: Path) -> Path:
    campaign = (bundled("data") / "campaign.yaml").read_text(encoding="utf-8")
    path = Path("campaign.yaml")
    path.write_text(campaign.replace("rules: segment_rules.yaml", f"rules: {rules.name}"), encoding="utf-8")
    return path


def customer_values() -> set[str]:
    """Every text value of the sample's customers (ids, names, locations, tiers)."""
    with SAMPLE.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {row[c] for row in rows for c in ("customer_id", "first_name", "location", "tier") if row[c]}


def quoted_values(text: str) -> set[str]:
    return {v for v in customer_values() if re.search(rf"\b{re.escape(v)}\b", text)}


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_rule_cannot_read_the_id_key_and_the_run_says_so_in_one_line(
    reader: str, dry_run: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = Path(os.environ["CPO_ID_KEY_FILE"])
    key_file.write_text(KEY, encoding="utf-8")
    key_file.chmod(0o600)
    rule = READERS[reader].format(path=key_file)
    rules = write_rules(Path("rules.yaml"), ("Key", rule), ("Regular", "true"), ("Nobody", "false"))

    code = main(["run", "--config", str(write_campaign(rules)), *(["--dry-run"] if dry_run else [])])
    out, err = capsys.readouterr()
    assert code == 2
    assert err == f"error: rules file {rules}: segment 'Key': rule {rule!r}: {NO_FILES}\n"
    assert KEY not in out + err
    assert not Path("runs").exists() or not [
        p for p in Path("runs").iterdir() if p.is_dir() and not p.name.startswith(".")
    ]


@pytest.mark.parametrize(
    ("rule", "kind"),
    [
        ("CAST(first_name AS INTEGER) > 0", "Conversion Error"),
        ("tier = 5", "Conversion Error"),  # the implicit cast of every tier to a number
        ("location::DATE > DATE '2020-01-01'", "Conversion Error"),
        ("error(first_name) IS NULL", "Invalid Input Error"),  # DuckDB's message would be the name itself
        ("strptime(location, '%Y') IS NULL", "Invalid Input Error"),
    ],
)
def test_a_rule_failing_on_a_customer_value_names_the_error_kind_not_the_value(
    tmp_path: Path, rule: str, kind: str
) -> None:
    rules = write_rules(tmp_path / "rules.yaml", ("A", rule), ("B", "true"), ("C", "true"))
    with pytest.raises(InputError) as caught:
        segment_customers(load_customers(SAMPLE), rules)
    message = str(caught.value)
    assert message == f"rules file {rules}: segment 'A': rule {rule!r} fails on the customers' data ({kind}; {HIDDEN})"
    assert caught.value.__context__ is None and caught.value.__cause__ is None  # DuckDB's message is not chained
    assert not quoted_values(message)


def test_a_binder_error_built_from_customer_values_does_not_quote_them(tmp_path: Path) -> None:
    """PIVOT names columns after the values of a column: a binder error on them would quote a first name."""
    rule = (
        "(SELECT count(*) FROM (SELECT * FROM (PIVOT (SELECT customer_id, first_name FROM customers) "
        "ON first_name USING count(*)) GROUP BY customer_id)) > 0"
    )  # before: 'Binder Error: column "Ana" must appear in the GROUP BY clause ...'
    rules = write_rules(tmp_path / "rules.yaml", ("A", rule), ("B", "true"), ("C", "true"))
    with pytest.raises(InputError, match=r"segment 'A': bad rule ") as caught:
        segment_customers(load_customers(SAMPLE), rules)
    assert not quoted_values(str(caught.value))


def test_the_sandbox_holds_only_the_customers_and_segments_them_as_before(tmp_path: Path) -> None:
    """The bundled rules give the same segments, customer by customer and in the same order, when each rule
    also requires what only the sandbox has: one table (besides the one the sandbox writes its result to) and
    no file access."""
    bundled_rules = [
        (m.group(1), m.group(2).strip('"'))
        for m in re.finditer(
            r"- name: (.+)\n\s+rule: (.+)", (bundled("data") / "segment_rules.yaml").read_text(encoding="utf-8")
        )
    ]
    assert len(bundled_rules) == 5
    sandboxed = (
        "(SELECT count(*) FROM duckdb_tables() WHERE table_name <> '_cpo_segments') = 1 "
        "AND NOT current_setting('enable_external_access')"
    )
    rules = write_rules(tmp_path / "rules.yaml", *((n, f"({sandboxed}) AND ({r})") for n, r in bundled_rules))
    loaded = load_customers(SAMPLE)
    con = loaded.connection
    order = [i for (i,) in con.execute("SELECT customer_id FROM customers").fetchall()]
    cases = " ".join(f"WHEN ({r}) THEN '{n}'" for n, r in bundled_rules)
    expected = con.execute(f"SELECT customer_id, CASE {cases} END FROM customers").fetchall()

    segments = segment_customers(loaded, rules)
    assert con.execute("SELECT customer_id, segment FROM customers").fetchall() == expected
    assert [i for i, _ in expected] == order  # the rows keep their order
    sizes = {n: sum(s == n for _, s in expected) for n, _ in bundled_rules}
    assert [(s.name, s.size) for s in segments] == list(sizes.items())
    assert all(sizes.values()) and sum(sizes.values()) == loaded.eligible
    assert con.execute("SELECT current_setting('enable_external_access')").fetchone() == (True,)  # loading keeps it


def test_a_rule_reaching_a_column_its_text_does_not_name_is_run_on_every_column(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only the columns a rule's text names are copied into the sandbox; should that miss one, the rules run
    again on a copy of every column instead of failing (or segmenting on a partial copy)."""
    from cpo.campaign.agents import segmentation

    expected = segment_customers(load_customers(SAMPLE))
    monkeypatch.setattr(segmentation, "_named", lambda con, rules: ["customer_id"])  # names no column a rule reads
    loaded = load_customers(SAMPLE)
    assert [(s.name, s.size) for s in segment_customers(loaded)] == [(s.name, s.size) for s in expected]
