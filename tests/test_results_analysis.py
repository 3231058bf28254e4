"""`cpo analyze`: outcomes from a platform's export (per recipient or per event, its own column names, or
`--map`), or simulated, joined to a run's assignments by assigned arm; what matched no one, repeated or went
missing is counted, never dropped silently; the holdout is compared on conversions; unsubscribes and bounces
become the next run's suppression list; and, with no effect, 200 simulations rarely declare a difference."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from test_who_gets_emailed import DATA, campaign

from cpo.campaign.agents.outcomes import flag
from cpo.campaign.agents.suppression import suppression_ids
from cpo.campaign.analysis import analyze_run, false_positive_share
from cpo.cli import main
from cpo.core.errors import InputError


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One offline run of the sample campaign, made once; each test analyzes its own copy."""
    work = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        patch.setenv("CPO_ID_KEY_FILE", str(work / "id-key"))
        assert main(["run", "--out", str(work / "runs")]) == 0
    (run_dir,) = [p for p in (work / "runs").iterdir() if p.is_dir()]
    return run_dir


@pytest.fixture
def run_dir(sample_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(sample_run, tmp_path / sample_run.name))


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def write(path: Path, header: list[str], body: list[list[Any]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(body)
    return path


def test_simulate_then_report_writes_the_analysis_with_its_documented_keys(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["analyze", str(run_dir), "--simulate", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Simulated data: ")
    analysis = json.loads((run_dir / "analysis.json").read_text(encoding="utf-8"))
    for key in ("arms", "comparisons", "srm", "segments", "mde", "guardrail", "verdict", "data"):
        assert key in analysis
    cell = analysis["arms"]["clicked"]["control"]
    assert set(cell) == {"n", "successes", "rate", "ci_low", "ci_high"}
    assert set(analysis["comparisons"][0]) >= {
        "metric", "arm", "control", "abs_lift", "abs_ci_low", "abs_ci_high", "rel_lift", "rel_ci_low",
        "rel_ci_high", "p_value", "p_holm", "significant",
    }  # fmt: skip
    assert set(analysis["srm"]) == {"chi2", "p_value", "flagged", "observed", "expected", "alpha"}
    assert {"source", "file_sha256", "unknown_ids", "duplicates", "missing"} <= set(analysis["data"])
    assert analysis["data"]["source"] == "simulated" and analysis["data"]["seed"] == 7
    assigned = {r["arm"] for r in rows(run_dir / "assignments.csv")}
    assert set(analysis["arms"]["clicked"]) == assigned
    sizes = {a: sum(r["arm"] == a for r in rows(run_dir / "assignments.csv")) for a in assigned}
    assert analysis["srm"]["observed"] == sizes and not analysis["srm"]["flagged"]
    segments = {r["segment"] for r in rows(run_dir / "segments.csv")}
    assert set(analysis["segments"]) == segments
    assert set(analysis["features"]) == {"tier", "recency", "frequency"}
    assert not (run_dir / "suppress_next.csv").exists()  # simulated unsubscribes are nobody's choice
    assert len(rows(run_dir / "outcomes.csv")) == len(rows(run_dir / "assignments.csv"))
    assert main(["report", str(run_dir)]) == 0 and (run_dir / "report.html").is_file()
    again = json.loads((run_dir / "analysis.json").read_text(encoding="utf-8"))
    assert main(["analyze", str(run_dir), "--simulate", "--seed", "7"]) == 0  # the same seed, the same numbers
    assert json.loads((run_dir / "analysis.json").read_text(encoding="utf-8"))["arms"] == again["arms"]


def test_a_simulated_effect_is_found_and_named_in_the_verdict(run_dir: Path) -> None:
    assert main(["analyze", str(run_dir), "--simulate", "--effect", "urgent:opened=3.5", "--primary", "opened"]) == 0
    verdict = json.loads((run_dir / "analysis.json").read_text(encoding="utf-8"))["verdict"]
    assert verdict["status"] == "winner" and verdict["winner"] == "urgent"
    assert verdict["text"].startswith("Simulated data: urgent beat control on open rate")


@pytest.mark.timeout(120)
def test_with_no_effect_200_simulations_rarely_declare_a_difference(run_dir: Path) -> None:
    share = false_positive_share(run_dir, runs=200)
    print(f"\nno effect: {100 * share:.1f}% of 200 simulations declared a significant difference (Holm)")
    assert share <= 0.07


def by_email(run_dir: Path) -> dict[str, dict[str, str]]:
    return {r["email"]: r for r in rows(run_dir / "send_list.csv")}


def test_a_per_recipient_export_with_odd_headers_counts_unknown_duplicate_and_missing_ids(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assigned = rows(run_dir / "assignments.csv")
    body = []
    for i, r in enumerate(assigned[:-5]):  # the last five are missing from the export
        opened = ["true", "2026-12-01T10:00:00Z", "3", "", "no"][i % 5]
        body.append([f"  {r['customer_id'].lower()} ", opened, "1" if i % 7 == 0 else "0", ""])
    body.append(["C999999", "true", "0", ""])  # matches no customer
    body.append(body[0])  # a repeated row
    path = write(run_dir / "export.csv", [" Customer ID", "Opened At", "Clicks", "Unsubscribed"], body)
    assert main(["analyze", str(run_dir), "--outcomes", str(path)]) == 0
    analysis = json.loads((run_dir / "analysis.json").read_text(encoding="utf-8"))
    data = analysis["data"]
    assert (data["unknown_ids"], data["duplicates"], data["missing"]) == (1, 1, 5)
    assert data["source"] == "observed" and len(data["file_sha256"]) == 64
    opened = sum(c["successes"] for c in analysis["arms"]["opened"].values())
    assert opened == sum(1 for i in range(len(assigned) - 5) if i % 5 in (0, 1, 2))
    assert sum(c["n"] for c in analysis["arms"]["opened"].values()) == len(assigned) - 5
    err = capsys.readouterr().out
    assert "5 assigned customers are missing" in err and "1 ids in the export match no customer" in err


def test_a_sendgrid_event_export_joins_on_email_and_attributes_clicks_by_utm_content(run_dir: Path) -> None:
    recipients = list(by_email(run_dir).values())
    events = [[r["email"].upper(), "delivered", "1764000000", ""] for r in recipients]
    first = recipients[0]
    second = next(r for r in recipients if r["variant_id"] != first["variant_id"])
    events += [[first["email"], "open", "1764000100", ""], [first["email"], "processed", "1764000000", ""]]
    link = f"https://example.com/account/upgrade?utm_source=cpo&utm_content={first['variant_id']}&utm_term=x"
    events += [[first["email"], "click", "1764000200", link]]
    other = f"https://example.com/account/upgrade?utm_content={first['variant_id']}"  # forwarded to another reader
    events += [[second["email"], "click", "1764000300", other], [second["email"], "spamreport", "1764000400", ""]]
    path = write(run_dir / "sendgrid.csv", ["email", "event", "timestamp", "url"], events)
    analysis = analyze_run(run_dir, outcomes=path, platform="sendgrid")
    assert analysis["data"]["missing"] == 0 and analysis["data"]["ignored_events"] == {"processed": 1}
    assert analysis["data"]["complained"] == 1  # the spam report: never emailed again
    assert rows(run_dir / "suppress_next.csv") == [{"customer_id": second["customer_id"], "reason": "complained"}]
    assert sum(c["successes"] for c in analysis["arms"]["clicked"].values()) == 2
    assert analysis["utm"] == {"clicks": 2, "by_variant": {first["variant_id"]: 2}, "other_variant": 1}
    assert set(analysis["data"]["measured"]) == {"delivered", "opened", "clicked", "unsubscribed", "bounced"}
    assert sum(c["successes"] for c in analysis["arms"]["unsubscribed"].values()) == 0  # measured: none happened


def test_a_customerio_deliveries_export_reads_timestamps_and_writes_the_next_suppression_list(run_dir: Path) -> None:
    recipients = rows(run_dir / "send_list.csv")
    header = ["customer_id", "recipient", "delivered", "opened", "clicked", "converted", "unsubscribed", "bounced"]
    body = []
    for i, r in enumerate(recipients):
        bounced = i == 3
        body.append([
            r["customer_id"], r["email"], "" if bounced else "1764000000", "1764000100" if i % 4 == 0 else "",
            "", "", "1764000900" if i == 8 else "", "1764000000" if bounced else "",
        ])  # fmt: skip
    path = write(run_dir / "cio.csv", header, body)
    analysis = analyze_run(run_dir, outcomes=path, platform="customerio")
    assert sum(c["successes"] for c in analysis["arms"]["bounced"].values()) == 1
    assert analysis["data"]["suppression_file"] == "suppress_next.csv"
    listed = {r["customer_id"]: r["reason"] for r in rows(run_dir / "suppress_next.csv")}
    assert listed == {recipients[8]["customer_id"]: "unsubscribed", recipients[3]["customer_id"]: "bounced"}
    assert sorted(suppression_ids(run_dir / "suppress_next.csv")) == sorted(listed)  # `cpo run --suppress` reads it


def test_map_names_the_columns_of_any_other_file(run_dir: Path) -> None:
    recipients = rows(run_dir / "send_list.csv")
    body = [[r["email"], "Y" if i % 2 else "N", "0"] for i, r in enumerate(recipients)]
    path = write(run_dir / "other.csv", ["Contact", "Was Opened", "Link Clicks"], body)
    with pytest.raises(InputError, match="no id column"):
        analyze_run(run_dir, outcomes=path)
    found = analyze_run(
        run_dir, outcomes=path, mapping={"contact": "email", "was_opened": "opened", "link_clicks": "clicked"}
    )
    assert sum(c["successes"] for c in found["arms"]["opened"].values()) == len(recipients) // 2
    assert main(["analyze", str(run_dir), "--outcomes", str(path), "--map", "Nope=email"]) == 2


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("customer_id;opened\nC000001;1\n", "separated by"),
        ("customer_id,opened\nC000001,maybe\n", "line 2, column 'opened': 'maybe' is not a boolean"),
        ("customer_id,opened\nC000001,-2\n", "negative count"),
        ("customer_id,colour\nC000001,red\n", "no outcome column"),
        ("", "empty"),
    ],
)
def test_an_export_cpo_cannot_read_as_meant_is_one_line(run_dir: Path, text: str, error: str) -> None:
    path = run_dir / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=error):
        analyze_run(run_dir, outcomes=path)
    assert not (run_dir / "analysis.json").exists()


def test_values_read_as_yes_or_no() -> None:
    yes = ["true", "TRUE", "yes", "1", "2", "3.0", "2026-12-01", "2026-12-01T10:00:00Z", "2026-12-01 10:00:00"]
    assert [flag(v, "x") for v in yes] == [1] * len(yes)
    assert [flag(v, "x") for v in ["", "0", "false", "No", " null ", "0.0"]] == [0] * 6


def test_the_holdout_is_compared_on_conversions_from_a_file_keyed_by_customer_id(tmp_path: Path) -> None:
    config = campaign(**{"holdout: 0.0": "holdout: 0.2"})
    assert main(["run", "--config", config]) == 0
    (run_dir,) = [p for p in Path("runs").iterdir() if p.is_dir()]
    assigned = rows(run_dir / "assignments.csv")
    held = [r for r in assigned if r["arm"] == "holdout"]
    assert held and not any(r["customer_id"] in {s["customer_id"] for s in send_rows(run_dir)} for r in held)
    converters = [[r["customer_id"]] for r in assigned[::9]] + [["C999998"]]
    path = write(tmp_path / "conversions.csv", ["Customer ID"], converters)
    analysis = analyze_run(run_dir, simulate_seed=3, conversions=path)
    assert analysis["data"]["conversions"]["unknown_ids"] == 1
    assert analysis["arms"]["converted"]["holdout"]["n"] == len(held)
    assert "clicked" not in {m for m, arms in analysis["arms"].items() if "holdout" in arms}
    versus = [(c["arm"], c["metric"]) for c in analysis["comparisons"] if c["control"] == "holdout"]
    assert versus == [(arm, "converted") for arm in ("control", "urgent", "informational", "friendly")]
    assert sum(c["successes"] for c in analysis["arms"]["converted"].values()) == len(converters) - 1


def send_rows(run_dir: Path) -> list[dict[str, str]]:
    return rows(run_dir / "send_list.csv")


def test_outcomes_lost_from_one_arm_are_flagged_as_a_sample_ratio_mismatch(run_dir: Path) -> None:
    kept = [r for i, r in enumerate(rows(run_dir / "assignments.csv")) if r["arm"] != "urgent" or i % 4 == 0]
    path = write(run_dir / "lost.csv", ["customer_id", "delivered"], [[r["customer_id"], 1] for r in kept])
    analysis = analyze_run(run_dir, outcomes=path)
    assert analysis["srm"]["flagged"] and analysis["srm"]["p_value"] < 0.001
    assert analysis["srm"]["observed"]["urgent"] < analysis["srm"]["expected"]["urgent"] / 2
    balanced = write(
        run_dir / "all.csv",
        ["customer_id", "delivered"],
        [[r["customer_id"], 1] for r in rows(run_dir / "assignments.csv")],
    )
    assert not analyze_run(run_dir, outcomes=balanced)["srm"]["flagged"]


def test_a_run_whose_assignments_were_edited_is_not_analyzed(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = run_dir / "assignments.csv"
    path.write_text(path.read_text(encoding="utf-8").replace(",urgent,", ",control,", 1), encoding="utf-8")
    assert main(["analyze", str(run_dir), "--simulate"]) == 2
    assert "assignments.csv is not the file the run wrote" in capsys.readouterr().err
    assert not (run_dir / "analysis.json").exists()


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--simulate", "--effect", "nobody=2"], "no arm 'nobody'"),
        (["--simulate", "--effect", "urgent=lots"], "expected ARM=MULTIPLIER"),
        (["--simulate", "--bounce-rate", "1.5"], "bounce rate must be between 0 and 1"),
        (["--outcomes", "missing.csv"], "No such file"),
        (["--outcomes", "x.csv", "--seed", "3"], "go with --simulate"),
        (["--simulate", "--seed", "-1"], "must be 0-4294967295"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(
    run_dir: Path, argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["analyze", str(run_dir), *argv]) == 2
    err = capsys.readouterr().err
    assert error in err and len(err.strip().splitlines()) == 1


def test_a_directory_that_is_not_a_run_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(tmp_path), "--simulate"]) == 2
    assert "not a cpo run directory" in capsys.readouterr().err


def test_ids_match_exactly_first_and_ignoring_case_only_when_that_names_one_customer(tmp_path: Path) -> None:
    from cpo.campaign.agents.outcomes import CustomerIndex

    index = CustomerIndex(["abc", "ABC", "C000001", "-17"], [("abc", "Kim@Example.com"), ("ABC", "kim@example.com")])
    assert index.by_id("ABC") == "ABC" and index.by_id(" abc ") == "abc"
    assert index.by_id("Abc") is None  # two customers fold to it: ambiguous, so no one
    assert index.by_id("c000001") == "C000001" and index.by_id("'-17") == "-17"
    assert index.by_email("KIM@example.com") is None  # two customers share it ignoring case
    assert CustomerIndex(["x"], [("x", "Ann@Example.com")]).by_email(" ann@example.COM ") == "x"


def test_two_columns_meaning_the_id_are_an_error_and_map_wins_over_a_formats_names(run_dir: Path) -> None:
    recipients = rows(run_dir / "send_list.csv")
    body = [[r["customer_id"], str(n), "open"] for n, r in enumerate(recipients)]
    path = write(run_dir / "two.csv", ["customer_id", "id", "event"], body)
    with pytest.raises(InputError, match="columns 'customer_id', 'id' all mean 'customer_id'"):
        analyze_run(run_dir, outcomes=path)
    found = analyze_run(run_dir, outcomes=path, mapping={"customer_id": "customer_id", "id": "url"})
    assert found["data"]["missing"] == 0
    sender = [[r["email"], "noreply@northwind.example", "1"] for r in recipients]
    path = write(run_dir / "contact.csv", ["Contact", "email", "opened"], sender)
    found = analyze_run(run_dir, outcomes=path, mapping={"contact": "email"})  # not the sender's `email` column
    assert found["data"]["missing"] == 0 and found["data"]["unknown_ids"] == 0


def test_an_export_or_a_conversions_file_matching_no_one_is_refused_and_the_last_analysis_stays(
    run_dir: Path,
) -> None:
    assert main(["analyze", str(run_dir), "--simulate"]) == 0
    before = (run_dir / "analysis.json").read_bytes()
    path = write(run_dir / "nobody.csv", ["customer_id", "opened"], [["X1", "1"], ["X2", "0"]])
    with pytest.raises(InputError, match="none of its 2 ids is a customer of this run"):
        analyze_run(run_dir, outcomes=path)
    with pytest.raises(InputError, match=r"conversions file .* none of its 2 ids"):
        analyze_run(run_dir, simulate_seed=1, conversions=path)
    assert (run_dir / "analysis.json").read_bytes() == before


def test_a_url_column_beside_a_click_column_names_the_variant_and_is_not_a_click(run_dir: Path) -> None:
    recipients = rows(run_dir / "send_list.csv")
    link = "https://example.com/account/upgrade?utm_content="
    body = [[r["email"], "1", "0", link + r["variant_id"]] for r in recipients]
    found = analyze_run(run_dir, outcomes=write(run_dir / "links.csv", ["email", "opened", "clicked", "url"], body))
    assert sum(c["successes"] for c in found["arms"]["clicked"].values()) == 0 and found["utm"]["clicks"] == 0


def test_unsubscribes_found_earlier_stay_on_the_suppression_list(run_dir: Path) -> None:
    recipients = rows(run_dir / "send_list.csv")
    first = write(
        run_dir / "a.csv",
        ["customer_id", "unsubscribed"],
        [[r["customer_id"], int(i == 0)] for i, r in enumerate(recipients)],
    )
    analyze_run(run_dir, outcomes=first)
    later = write(run_dir / "b.csv", ["customer_id", "opened"], [[r["customer_id"], 1] for r in recipients])
    assert analyze_run(run_dir, outcomes=later)["data"]["suppression_file"] == "suppress_next.csv"
    assert rows(run_dir / "suppress_next.csv") == [
        {"customer_id": recipients[0]["customer_id"], "reason": "unsubscribed"}
    ]


def test_a_run_whose_audit_file_was_removed_is_not_analyzed(run_dir: Path) -> None:
    (run_dir / "safety_audit.csv").unlink()
    with pytest.raises(InputError, match=r"safety_audit\.csv is missing"):
        analyze_run(run_dir, simulate_seed=1)


def test_a_holdout_customer_found_by_email_is_counted_as_such(tmp_path: Path) -> None:
    assert main(["run", "--config", campaign(**{"holdout: 0.0": "holdout: 0.2"})]) == 0
    (run_dir,) = [p for p in Path("runs").iterdir() if p.is_dir()]
    held = {r["customer_id"] for r in rows(run_dir / "assignments.csv") if r["arm"] == "holdout"}
    with (DATA / "customers.csv").open(encoding="utf-8", newline="") as handle:
        everyone = [r for r in csv.DictReader(handle) if r["email_opt_in"] == "true"]
    path = write(tmp_path / "all.csv", ["email", "event"], [[r["email"], "delivered"] for r in everyone])
    data = analyze_run(run_dir, outcomes=path, platform="sendgrid")["data"]
    assert data["holdout_in_export"] == len(held) and data["unknown_ids"] == 0


def test_customers_the_run_sent_nothing_stay_in_their_arm_with_no_engagement(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "--review"]) == 4
    (run_dir,) = [p for p in Path("runs").iterdir() if p.is_dir()]
    variants = json.loads((run_dir / "variants.json").read_text(encoding="utf-8"))
    rejected = [v["variant_id"] for v in variants if v["segment"] == "Regular" and v["tone"] in ("control", "urgent")]
    argv = ["review", str(run_dir), "--reject", *rejected, "--reviewer", "ana", "--reason", "off brand"]
    assert main(argv) == 0 and main(["review", str(run_dir), "--approve-rest", "--reviewer", "ana"]) == 0
    main(["run", "--resume", str(run_dir)])
    assigned = rows(run_dir / "assignments.csv")
    unsent = {r["customer_id"] for r in assigned if r["arm"] != "holdout" and not r["delivered_variant"]}
    assert unsent
    analysis = analyze_run(run_dir, simulate_seed=2)
    assert analysis["data"]["not_sent"] == len(unsent)
    table = {r["customer_id"]: r for r in rows(run_dir / "outcomes.csv")}
    assert all(table[c]["opened"] == "0" and table[c]["delivered"] == "0" for c in unsent)
    sizes = {a: sum(r["arm"] == a for r in assigned) for a in ("control", "urgent")}
    assert {a: analysis["arms"]["opened"][a]["n"] for a in sizes} == sizes  # intention to treat: all of them
    sent = [[r["customer_id"], 1] for r in assigned if r["customer_id"] not in unsent]
    observed = analyze_run(run_dir, outcomes=write(run_dir / "sent.csv", ["customer_id", "delivered"], sent))
    assert observed["data"]["missing"] == 0 and observed["arms"]["delivered"]["control"]["n"] == sizes["control"]
    capsys.readouterr()
