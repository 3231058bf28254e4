"""`report.html`: a run's campaign report in one self-contained file, to read offline or attach to a sign-off.

The verdict in one sentence, rates and lifts with their 95% intervals (tables, and charts embedded as SVG
image data URIs), the guardrail, the sample-ratio check, power, the segments and the feature buckets, the
variants delivered per arm, each variant with its subject, citations and cost, the safety and review record,
tokens and cost, and where the outcome data came from. Rendered from `layouts/report.html.liquid` with
autoescaping, and no script at all: every word from a user file or a model is escaped text.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path
from typing import Any

from liquid import Environment, StrictUndefined

from cpo.campaign.agents.export import SEGMENTS_FILE, TEMPLATES_FILE
from cpo.campaign.agents.report_tables import NA, pct, results
from cpo.campaign.analysis import ANALYSIS_FILE
from cpo.campaign.rundir import (
    AUDIT_FILE,
    COSTS_FILE,
    REVIEW_FILE,
    SCREENING_FILE,
    VARIANTS_FILE,
    read_json,
    read_record,
)
from cpo.core.errors import InputError
from cpo.core.files import write_atomically
from cpo.core.usage import format_usd

REPORT_FILE = "report.html"
LAYOUT = Path(__file__).parent / "layouts" / "report.html.liquid"
DOING = "cannot write the report for"
NEEDED = ("arms", "comparisons", "srm", "segments", "mde", "guardrail", "verdict", "data")


@cache
def _layout() -> Any:
    return Environment(autoescape=True, undefined=StrictUndefined).from_string(LAYOUT.read_text(encoding="utf-8"))


def build_report(run_dir: Path) -> Path:
    """Write `report.html` into a run directory and return its path; before `cpo analyze`, without results.

    One InputError line when `run_dir` is not a run directory or its analysis.json is unreadable."""
    record = read_record(run_dir, DOING)
    analysis = _analysis(run_dir)
    try:
        shown = results(analysis) if analysis is not None else None
        simulated = analysis is not None and analysis["data"].get("source") == "simulated"
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise InputError(
            f"{DOING} {run_dir}: {ANALYSIS_FILE} is malformed ({type(exc).__name__}: {exc}); run cpo analyze again"
        ) from None
    run_id = str(record.get("run_id") or run_dir.name)
    try:
        found: dict[str, Any] = {
            "segments": _segment_rules(run_dir),
            "variants": _variants(run_dir),
            "safety": _safety(run_dir, record),
            "costs": _costs(run_dir),
        }
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a run file edited by hand
        raise InputError(f"{DOING} {run_dir}: one of its files is malformed ({type(exc).__name__}: {exc})") from None
    page = _layout().render(
        title=f"Campaign report: {run_id}" + (" (Simulated data)" if simulated else ""),
        simulated=simulated,
        run=_run(run_id, record),
        results=shown,
        no_results=f"No results yet: run `cpo analyze {run_dir} --simulate` or `--outcomes FILE`",
        **found,
    )
    path = run_dir / REPORT_FILE
    write_atomically(path, page)
    return path


def _analysis(run_dir: Path) -> dict[str, Any] | None:
    found = read_json(run_dir, ANALYSIS_FILE)
    if found is None:
        return None
    if not isinstance(found, dict):
        raise InputError(f"{DOING} {run_dir}: {ANALYSIS_FILE} is not a JSON object; run cpo analyze again")
    missing = [k for k in NEEDED if k not in found]
    if missing:
        raise InputError(f"{DOING} {run_dir}: {ANALYSIS_FILE} has no {missing[0]}; run cpo analyze again")
    return dict(found)


def _run(run_id: str, record: Mapping[str, Any]) -> dict[str, Any]:
    versions = record.get("versions") or {}
    return {
        "id": run_id,
        "status": str(record.get("status") or "unfinished"),
        "model": str(record.get("model") or NA),
        "source": str(record.get("source") or NA),
        "started": str(record.get("started") or NA),
        "finished": str(record.get("finished") or NA),
        "cpo": str(versions.get("cpo") or NA),
        "customers_sha256": str((record.get("fingerprint") or {}).get("customers") or NA),
    }


def _segment_rules(run_dir: Path) -> list[dict[str, str]]:
    """segments.csv: each segment's rule and size."""
    path = run_dir / SEGMENTS_FILE
    if not path.is_file():
        return []
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{DOING} {run_dir}: {SEGMENTS_FILE} is unreadable ({exc})") from None
    return [
        {
            "segment": r.get("segment", ""),
            "rule": r.get("rule", ""),
            "size": r.get("size", ""),
            "share": pct(float(r["share"])) if r.get("share") else NA,
        }
        for r in rows
    ]


def _usd(value: object) -> str:
    """A cost from a run file (a decimal string) as `cpo costs` prints it; "unknown" when it is not a number."""
    try:
        return format_usd(Decimal(str(value)))
    except InvalidOperation:
        return format_usd(None)


def _variants(run_dir: Path) -> list[dict[str, Any]]:
    """Each variant: the template as exported, its citations, screening, review decision, tokens and cost."""
    drafts = {v.get("variant_id"): v for v in read_json(run_dir, VARIANTS_FILE, []) or []}
    templates = read_json(run_dir, TEMPLATES_FILE, None)
    if templates is None:  # a run stopped before export: its drafts
        templates = [{**v, "arm": v.get("tone", ""), "sendable": None, "withheld": None} for v in drafts.values()]
    screening = read_json(run_dir, SCREENING_FILE, {}) or {}
    review = read_json(run_dir, REVIEW_FILE, {}) or {}
    spent = (read_json(run_dir, COSTS_FILE, {}) or {}).get("variants") or {}
    out = []
    for t in templates:
        vid = str(t.get("variant_id", ""))
        draft, screen, decision, usage = drafts.get(vid, {}), screening.get(vid), review.get(vid), spent.get(vid, {})
        cited = draft.get("citations") or [{"id": c, "title": ""} for c in t.get("citations") or []]
        if t.get("sendable") is None:
            status = "not exported"
        elif t.get("sendable"):
            status = "sendable"
        else:
            status = f"withheld: {t['withheld']}" if t.get("withheld") else "invalid"
        out.append(
            {
                "id": vid,
                "segment": str(t.get("segment", "")),
                "arm": str(t.get("arm", "")),
                "subject": str(t.get("subject", "")),
                "preheader": str(t.get("preheader") or ""),
                "sendable": bool(t.get("sendable")),
                "status": status,
                "screening": _screened(screen),
                "review": _decided(decision),
                "citations": [f"{c.get('id', '')}: {c.get('title', '')}".rstrip(": ") for c in cited],
                "model": str(draft.get("model") or t.get("source") or NA),
                "tokens": f"{int(usage.get('total_tokens', 0)):,}" if usage else NA,
                "cost": _usd(usage.get("cost_usd")) if usage else NA,
            }
        )
    return out


def _screened(screen: Mapping[str, Any] | None) -> str:
    if not screen:
        return "not screened"
    if screen.get("blocked"):
        return f"blocked by {screen.get('backend', 'the screen')}: " + "; ".join(map(str, screen.get("reasons") or []))
    return f"passed ({screen.get('backend', 'screen')})"


def _decided(decision: Mapping[str, Any] | None) -> str:
    if not decision:
        return ""
    reason = f": {decision['reason']}" if decision.get("reason") else ""
    return f"{decision.get('decision', '')}d by {decision.get('reviewer', 'someone')}{reason}"


def _safety(run_dir: Path, record: Mapping[str, Any]) -> dict[str, Any]:
    """The screening, review and audit record in a few lines."""
    screening = read_json(run_dir, SCREENING_FILE, {}) or {}
    review = read_json(run_dir, REVIEW_FILE, {}) or {}
    backends = sorted({str(s.get("backend", "")) for s in screening.values()})
    blocked = [
        f"{vid}: " + "; ".join(map(str, s.get("reasons") or [])) for vid, s in screening.items() if s.get("blocked")
    ]
    lines = [f"screened: {len(screening)} variant(s) by {', '.join(backends) or 'no screen'}; {len(blocked)} blocked"]
    reviewed = bool((record.get("inputs") or {}).get("review"))
    if reviewed or review:
        decided = Counter(str(d.get("decision")) for d in review.values())
        waiting = sum(1 for vid, s in screening.items() if not s.get("blocked") and vid not in review)
        lines.append(
            f"review: {decided['approve']} approved, {decided['reject']} rejected, {waiting} awaiting a decision"
        )
    else:
        lines.append("review: not asked for (cpo run without --review)")
    decisions = _audit_decisions(run_dir)
    if decisions:
        counted = ", ".join(f"{n} {d}" for d, n in sorted(decisions.items()))
        lines.append(f"audit ({AUDIT_FILE}): {sum(decisions.values())} row(s): {counted}")
    if record.get("audit_head"):
        lines.append(
            f"audit chain head: {record['audit_head']} ({record.get('audit_rows', NA)} rows; cpo audit verify)"
        )
    return {"lines": lines, "blocked": blocked}


def _audit_decisions(run_dir: Path) -> Counter[str]:
    path = run_dir / AUDIT_FILE
    if not path.is_file():
        return Counter()
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            return Counter(str(row.get("decision", "")) for row in csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{DOING} {run_dir}: {AUDIT_FILE} is unreadable ({exc})") from None


def _costs(run_dir: Path) -> dict[str, Any] | None:
    """The session's calls, tokens and cost, in all and by model."""
    costs = read_json(run_dir, COSTS_FILE, None)
    if not costs:
        return None
    session = costs.get("session") or {}

    def row(name: str, u: Mapping[str, Any]) -> dict[str, str]:
        return {
            "name": name,
            "calls": f"{u.get('calls', 0):,} ({u.get('failed_calls', 0):,} failed)",
            "input": f"{u.get('input_tokens', 0):,} ({u.get('cached_input_tokens', 0):,} cached)",
            "output": f"{u.get('output_tokens', 0):,}",
            "total": f"{u.get('total_tokens', 0):,}",
            "cost": _usd(u.get("cost_usd")),
        }

    emails = costs.get("emails") or {}
    produced, requested = int(emails.get("produced") or 0), int(emails.get("requested") or 0)
    try:
        per_email = format_usd(Decimal(str(session.get("cost_usd"))) / produced) if produced else NA
    except InvalidOperation:
        per_email = format_usd(None)
    budget = costs.get("budget") or {}
    return {
        "rows": [row("all models", session), *(row(m, u) for m, u in (session.get("by_model") or {}).items())],
        "model": str(costs.get("model") or NA),
        "emails": f"{produced:,} of {requested:,} requested; {per_email} per email",
        "budget": f"{_usd(budget.get('settled_usd'))} of a {_usd(budget.get('max_usd'))} budget" if budget else "none",
        "stopped_by": str(costs.get("stopped_by") or ""),
    }
