"""`cpo analyze`: a finished run's outcomes (observed from a platform's export, or simulated) read against its
assignments, the experiment's statistics, and `analysis.json` and `outcomes.csv` in the run directory.

The assignments must be the file the run's audit bound: an edited arm would quietly change every number. An
observed export's unsubscribes and bounces become `suppress_next.csv`, for `cpo run --suppress` next time;
simulated ones never do (they are not real people's choices).
"""

from __future__ import annotations

import csv
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cpo.campaign.agents.assignment import DEFAULT_ARMS, HOLDOUT, shares_for
from cpo.campaign.agents.experiment import METRICS, analyze, comparisons
from cpo.campaign.agents.export import ASSIGNMENTS_FILE, SEND_LIST_FILE
from cpo.campaign.agents.outcomes import CustomerIndex, Outcomes, read_conversions, read_outcomes
from cpo.campaign.agents.simulation import SimulationRates, simulate
from cpo.campaign.file_binding import file_hash, unbound_files
from cpo.campaign.rundir import AUDIT_FILE, DATABASE, read_json, read_record, recorded_campaign, write_json
from cpo.core.csvsafe import safe_cell, safe_column, unquoted_column
from cpo.core.errors import InputError
from cpo.core.files import replacing
from cpo.core.version import __version__

ANALYSIS_FILE, OUTCOMES_FILE, SUPPRESS_NEXT_FILE = "analysis.json", "outcomes.csv", "suppress_next.csv"
FEATURE_COLUMNS = (
    "tier",
    "last_engagement_days",
    "purchase_frequency",
    "historical_open_rate",
    "historical_click_rate",
)


def _read_csv(path: Path, what: str) -> Any:
    """One of the run's own CSV files as text columns, without the `'` cpo put before formula-like cells."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"cannot read the run's {what} {path}: {exc}") from None
    return frame.apply(unquoted_column) if len(frame) else frame


def run_customers(run_dir: Path) -> Any:
    """The run's assignments (customer_id, segment, arm, delivered_variant, email) with what the customer file
    said (tier, recency, frequency, historical rates), as a DataFrame; refused if the audit binds other files."""

    record = read_record(run_dir, "cannot analyze")
    if not (run_dir / ASSIGNMENTS_FILE).is_file():
        status = str(record.get("status", "unfinished")).replace("review", "paused for review")
        raise InputError(f"cannot analyze {run_dir}: it has no {ASSIGNMENTS_FILE} (run.json status: {status})")
    if record.get("audit_rows") and not (run_dir / AUDIT_FILE).is_file():
        raise InputError(f"cannot analyze {run_dir}: its {AUDIT_FILE} is missing, though run.json records one")
    problems = unbound_files(run_dir)
    if problems:
        raise InputError(f"cannot analyze {run_dir}: {problems[0]}")
    frame = _read_csv(run_dir / ASSIGNMENTS_FILE, "assignments")
    missing = {"customer_id", "segment", "arm"} - set(frame.columns)
    if frame.empty or missing:
        raise InputError(f"cannot analyze {run_dir}: {ASSIGNMENTS_FILE} has no customers or lacks {missing}")
    twice = frame["customer_id"][frame["customer_id"].duplicated()]
    if len(twice):
        raise InputError(
            f"cannot analyze {run_dir}: {ASSIGNMENTS_FILE} holds {len(twice)} id(s) twice once a spreadsheet's "
            "leading ' is removed; outcomes could not be told apart"
        )
    if "delivered_variant" not in frame:
        frame["delivered_variant"] = ""
    sent = _read_csv(run_dir / SEND_LIST_FILE, "send list")
    emails = dict(zip(sent["customer_id"], sent["email"], strict=True)) if "email" in sent else {}
    frame["email"] = frame["customer_id"].map(emails).fillna("")
    database = run_dir / DATABASE
    if database.is_file():
        import duckdb

        con = duckdb.connect(str(database), read_only=True)
        try:
            have = {r[0] for r in con.execute("DESCRIBE customers").fetchall()}
            wanted = ["customer_id", *(c for c in (*FEATURE_COLUMNS, "email") if c in have)]
            features = con.execute(f"SELECT {', '.join(wanted)} FROM customers").df()  # column names are ours
        finally:
            con.close()
        if "email" in features:  # every customer's address, the holdout's too: found if an export has them
            features = features.rename(columns={"email": "file_email"})
        frame = frame.merge(features, on="customer_id", how="left")
        if "file_email" in frame:
            frame["email"] = frame["email"].where(frame["email"] != "", frame["file_email"].fillna(""))
            frame = frame.drop(columns="file_email")
    frame["not_sent"] = (frame["arm"] != HOLDOUT) & (frame["delivered_variant"].fillna("") == "")
    return frame


def planned_shares(run_dir: Path, record: dict[str, Any] | None = None) -> dict[str, float]:
    """The allocation the run assigned by (run.json; a run made before it was recorded: its campaign file)."""
    record = record if record is not None else read_record(run_dir, "cannot analyze")
    shares = record.get("allocation")
    if isinstance(shares, dict) and shares:
        return {str(k): float(v) for k, v in shares.items()}
    campaign = recorded_campaign(record)
    return shares_for(DEFAULT_ARMS, campaign.allocation or None, campaign.holdout)


def _variant_arms(run_dir: Path) -> dict[str, str]:
    return {t["variant_id"]: t["arm"] for t in read_json(run_dir, "templates.json", []) if "variant_id" in t}


def _observed(frame: Any, found: Outcomes) -> Any:
    """The export's metrics per customer: 1/0 for those present, NaN (not measured) for those absent."""
    import pandas as pd

    frame["present"] = frame["customer_id"].isin(found.values.keys())
    table = pd.DataFrame.from_dict(found.values, orient="index", columns=list(found.measured), dtype=float)
    for metric in found.measured:
        values = frame["customer_id"].map(table[metric]).astype(float)
        frame[metric] = values.fillna(0.0).where(frame["present"])
    return frame


def _unsent(frame: Any) -> Any:
    """Customers of an emailed arm the run sent nothing (their segment's variants withheld or rejected): by
    intention to treat they stay in their arm, with no delivery and no engagement (there was no email), and
    they count as accounted for, not as lost from the export."""
    email_metrics = [m for m in METRICS if m in frame and m != "converted"]
    frame.loc[frame["not_sent"], email_metrics] = 0.0
    frame.loc[frame["not_sent"], "present"] = True
    return frame


def simulated_frame(frame: Any, rates: SimulationRates, seed: int) -> Any:
    """The run's customers with simulated outcomes: the emailed arms present, the holdout on conversions only,
    and no engagement for customers the run sent nothing."""
    out = frame.join(simulate(frame, rates, seed), on="customer_id")
    out["present"] = out["arm"] != HOLDOUT
    return _unsent(out)


def analyze_run(
    run_dir: Path,
    *,
    outcomes: Path | None = None,
    platform: str = "generic",
    mapping: dict[str, str] | None = None,
    conversions: Path | None = None,
    simulate_seed: int | None = None,
    rates: SimulationRates | None = None,
    primary: str = "clicked",
) -> dict[str, Any]:
    """Analyze a finished run and write analysis.json (and outcomes.csv, suppress_next.csv); return the analysis.

    Give `outcomes` (a platform's export) or `simulate_seed` (simulated outcomes); `conversions` is a file of
    converted customer ids, the one source that measures the holdout."""
    if (outcomes is None) == (simulate_seed is None):
        raise InputError("give an outcome file (--outcomes FILE) or --simulate, not both and not neither")
    if primary not in METRICS:
        raise InputError(f"primary metric must be one of {', '.join(METRICS)} (got {primary!r})")
    frame = run_customers(run_dir)
    variant_arm = _variant_arms(run_dir)
    index = CustomerIndex(list(frame["customer_id"]), list(zip(frame["customer_id"], frame["email"], strict=True)))
    data: dict[str, Any] = {"source": "observed" if outcomes else "simulated", "file": None, "file_sha256": None}
    data.update(unknown_ids=0, duplicates=0, missing=0, holdout_in_export=0, not_sent=int(frame["not_sent"].sum()))
    utm: dict[str, Any] = {"clicks": 0, "by_variant": {}, "other_variant": 0}
    found: Outcomes | None = None
    if outcomes is not None:
        found = read_outcomes(outcomes, customers=index, variants=set(variant_arm), platform=platform, mapping=mapping)
        if not found.values:
            raise InputError(
                f"outcome file {outcomes}: none of its {found.unknown_ids} ids is a customer of this run (matched "
                "by customer id or email); check the id column (--map COLUMN=customer_id or COLUMN=email)"
            )
        frame = _unsent(_observed(frame, found))
        held = frame["arm"] == HOLDOUT
        data.update(file=str(outcomes), file_sha256=file_hash(outcomes), platform=platform, rows=found.rows)
        data.update(unknown_ids=found.unknown_ids, duplicates=found.duplicates, columns=found.columns)
        data.update(
            missing=int((~frame["present"] & ~held).sum()), holdout_in_export=int((frame["present"] & held).sum())
        )
        data.update(ignored_events=found.ignored_events, measured=list(found.measured))
        data.update(complained=len(found.complained), rows_without_id=found.rows_without_id)
        frame.loc[held, [m for m in METRICS if m in frame]] = float("nan")  # no email: nothing of it to measure
        frame.loc[held, "present"] = False
        delivered = dict(zip(frame["customer_id"], frame["delivered_variant"], strict=True))
        for customer, variant in found.utm_clicks:
            utm["clicks"] += 1
            utm["by_variant"][variant] = utm["by_variant"].get(variant, 0) + 1
            utm["other_variant"] += int(delivered.get(customer) != variant)
    else:
        if "historical_open_rate" not in frame:
            raise InputError(f"cannot simulate {run_dir}: its customer database has no historical rates")
        rates = rates or SimulationRates()
        frame = simulated_frame(frame, rates, int(simulate_seed or 0))
        data.update(seed=simulate_seed, rates=asdict(rates), measured=list(METRICS))
    if conversions is not None:
        converted, unknown = read_conversions(conversions, index)
        frame["converted"] = frame["customer_id"].isin(converted).astype(float)
        data["conversions"] = {"file": str(conversions), "file_sha256": file_hash(conversions), "unknown_ids": unknown}
        data["measured"] = [m for m in METRICS if m in data.get("measured", []) or m == "converted"]
    record = read_record(run_dir, "cannot analyze")
    shares = planned_shares(run_dir, record)
    result = analyze(frame, shares=shares, primary=primary, simulated=outcomes is None, variant_arm=variant_arm)
    analysis = {
        "run_id": record.get("run_id", run_dir.name),
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpo": __version__,
        "alpha": 0.05,
        **result,
        "utm": utm,
        "data": data,
    }
    complained = found.complained if found is not None else set()
    analysis["data"]["suppression_file"] = _suppress_next(run_dir, frame, complained) if found is not None else None
    _write_outcomes(run_dir, frame)
    write_json(run_dir, ANALYSIS_FILE, analysis)
    return analysis


def _suppress_next(run_dir: Path, frame: Any, complained: set[str]) -> str | None:
    """Observed unsubscribes, bounces and spam complaints, added to suppress_next.csv for the next run's
    --suppress. Rows already there stay: an unsubscribe read from an earlier export does not expire because a
    later export lacks it. None when the file has no one."""
    path = run_dir / SUPPRESS_NEXT_FILE
    rows: dict[str, str] = {}
    if path.is_file():
        rows.update((r["customer_id"], r["reason"]) for _, r in _read_csv(path, "suppression list").iterrows())
    for reason in ("unsubscribed", "bounced"):
        if reason in frame:
            for customer in frame.loc[frame[reason] == 1, "customer_id"]:
                rows.setdefault(customer, reason)
    for customer in sorted(complained):
        rows.setdefault(customer, "complained")
    if not rows:
        return None
    _write_csv(path, ["customer_id", "reason"], [[c, r] for c, r in rows.items()])
    return SUPPRESS_NEXT_FILE


def _write_outcomes(run_dir: Path, frame: Any) -> None:
    """outcomes.csv: the per-customer table the statistics were computed from (for notebooks and audits)."""
    metrics = [m for m in METRICS if m in frame]
    out = frame[["customer_id", "segment", "arm", "delivered_variant"]].astype(str).apply(safe_column)
    out["present"] = frame["present"].map({True: "true", False: "false"})
    for metric in metrics:
        out[metric] = frame[metric].astype("Int64")
    with replacing(run_dir / OUTCOMES_FILE) as temp:
        out.to_csv(temp, index=False, lineterminator="\r\n")


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with replacing(path) as temp, temp.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([[safe_cell(c) for c in row] for row in rows])


def false_positive_share(run_dir: Path, runs: int = 200, rates: SimulationRates | None = None) -> float:
    """The calibration check: across `runs` seeded simulations with no effect, the share that declare any
    significant difference in the Holm family. It should be near or below alpha (0.05)."""
    frame = run_customers(run_dir)
    hits = 0
    for seed in range(1, runs + 1):
        simulated = simulated_frame(frame, rates or SimulationRates(), seed)
        hits += any(c["significant"] for c in comparisons(simulated, intervals=False))
    return hits / runs
