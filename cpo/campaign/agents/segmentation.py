"""Segmentation agent: rule-based segments (RFM-style) from a YAML rules file, computed in DuckDB.

Every eligible customer lands in exactly one segment, with the rule that matched (first match wins).
What leaves this agent is a summary per segment (size, share, feature means, the most common tier):
the only customer-derived facts that may reach a prompt. Names and other free text never do.
A rule is the user's SQL: it runs on a sandbox (a copy of the customers, no file or network access),
and an error about it never prints a value it read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cpo.campaign.agents.load import NUMERIC, LoadedCustomers
from cpo.core.errors import InputError, first_line
from cpo.core.files import load_yaml_model
from cpo.core.resources import bundled

MIN_SEGMENTS, MAX_SEGMENTS = 3, 6
# The only customer-derived fields that may reach a prompt (as segment means), besides the tier.
PROMPT_FEATURES = (
    "purchase_frequency",
    "avg_order_value",
    "last_engagement_days",
    "historical_open_rate",
    "historical_click_rate",
)
FORBIDDEN = (";", "--", "/*")
ROW = "_cpo_row"  # in the sandbox: the row's id in the customers table, to put each segment back in place
OUTPUT = "_cpo_segments"  # the sandbox's only other table: each row's segment number


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    rule: str = Field(min_length=1)


class RuleFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    segments: list[Rule] = Field(min_length=MIN_SEGMENTS, max_length=MAX_SEGMENTS)


@dataclass(frozen=True)
class Segment:
    """One segment as the rest of the pipeline sees it: no customer rows, only aggregates."""

    name: str
    rule: str
    size: int
    share: float
    tier: str | None
    means: dict[str, float] = field(default_factory=dict)
    tiers: list[str] = field(default_factory=list)  # every tier among its customers: who its emails reach

    def features(self) -> dict[str, str | int | float]:
        """The whitelisted profile for prompts: the tier, if every customer holds the same one, and the
        behavioural means.

        A segment that mixes tiers has no tier here, so nothing invites its email to call all its readers by
        the most common one. Never names, locations or ages: those stay in the customer table.
        """
        single = self.tier if self.tier and (self.tiers in ([], [self.tier])) else None
        out: dict[str, str | int | float] = {"tier": single} if single else {}
        for key in PROMPT_FEATURES:
            if key in self.means:
                value = self.means[key]
                out[key] = round(value) if key in ("purchase_frequency", "last_engagement_days") else round(value, 2)
        return out


def default_rules_file() -> Path:
    return bundled("data") / "segment_rules.yaml"


def load_rules(path: Path | None = None) -> list[Rule]:
    path = path or default_rules_file()
    rules = load_yaml_model(path, RuleFile, "rules file", InputError).segments
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise InputError(f"rules file {path}: segment names must be unique")
    for r in rules:
        if any(bad in r.rule for bad in FORBIDDEN):
            raise InputError(f"rules file {path}: segment {r.name!r}: a rule is one condition (no ';' or comments)")
        if error := _not_one_expression(path, r):
            raise InputError(error)
    return rules


def _not_one_expression(path: Path, rule: Rule) -> str | None:
    """Why a rule is not exactly one SQL expression, or None: a rule that closed its own parenthesis could
    change the statement it is pasted into."""
    import duckdb

    try:
        duckdb.SQLExpression(rule.rule)
    except duckdb.ParserException as exc:
        return f"rules file {path}: segment {rule.name!r}: bad rule {rule.rule!r}: {first_line(exc)}"
    except duckdb.Error:
        return f"rules file {path}: segment {rule.name!r}: a rule is one condition, not a list"
    return None


def _sandbox(source: Any, *, columns: list[str] | None) -> Any:
    """An in-memory DuckDB with a copy of `customers` (those `columns` with their rows and each row's id in the
    customers table, `ROW`; None: every column, empty) and nothing else, file and network access off: a rule
    is the user's SQL, and on the connection that loaded the file it could read any file (the id key
    included) and print it in an error."""
    import duckdb

    sandbox = duckdb.connect()
    try:
        listed = ", ".join(f'"{c}"' for c in columns or [])
        query = f"SELECT rowid AS {ROW}, {listed} FROM customers" if columns else "SELECT * FROM customers LIMIT 0"
        sandbox.from_arrow(source.sql(query).__arrow_c_stream__()).create("customers")
        sandbox.execute("SET enable_external_access = false")
        sandbox.execute("SET lock_configuration = true")
    except BaseException:
        sandbox.close()
        raise
    return sandbox


def _named(con: Any, rules: list[Rule]) -> list[str]:
    """The columns a rule may read: every column whose name appears in a rule's text (copying only those
    into the sandbox keeps a million customers cheap); all of them if a rule could name columns by pattern."""
    columns = [str(r[0]) for r in con.execute("DESCRIBE customers").fetchall()]
    text = " ".join(r.rule for r in rules).lower()
    if "*" in text or "columns(" in text.replace(" ", ""):
        return columns
    named = [c for c in columns if c.lower() in text]
    return named or columns[:1]


def _failure(exc: Exception, path: Path, rule: Rule | None, *, on_data: bool) -> str:
    """One line for a DuckDB error in a rule. DuckDB's message is kept only for a parser, binder or catalog
    error on the empty copy, where it can quote nothing but the rule and the columns; on the data a
    conversion error quotes the value it failed on, and a binder error can too (PIVOT names columns after
    values)."""
    import duckdb

    head = f"rules file {path}: segment {rule.name!r}: rule {rule.rule!r}" if rule else f"rules file {path}: the rules"
    if isinstance(exc, duckdb.PermissionException):
        return f"{head}: rules may only read the customer table's columns (file and network functions are disabled)"
    if (
        rule
        and not on_data
        and isinstance(exc, duckdb.ParserException | duckdb.BinderException | duckdb.CatalogException)
    ):
        return f"rules file {path}: segment {rule.name!r}: bad rule {rule.rule!r}: {first_line(exc)}"
    name = type(exc).__name__  # OutOfRangeException: "Out Of Range Error", from the class, never the message
    kind = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name.removesuffix("Exception")) + " Error" if name != "Error" else name
    verb = ("fails" if rule else "fail") + (" on the customers' data" if on_data else "")
    quoted = "customer data" if on_data else "what it read"
    return f"{head} {verb} ({kind}; the message is not shown: it may quote {quoted})"


def _run(con: Any, sql: str, params: list[Any], path: Path, rule: Rule | None, *, on_data: bool) -> None:
    """Run a statement holding rules; an error is raised outside the handler, so not even the exception's
    context keeps DuckDB's message."""
    import duckdb

    try:
        con.execute(sql, params).fetchall()
        return
    except duckdb.InterruptException:
        raise
    except duckdb.Error as exc:
        message = _failure(exc, path, rule, on_data=on_data)
    raise InputError(message)


def _ran(sandbox: Any, sql: str) -> bool:
    """Whether `sql` ran; its error is not kept (it may quote customer data)."""
    import duckdb

    try:
        sandbox.execute(sql)
    except duckdb.InterruptException:
        raise
    except duckdb.Error:
        return False
    return True


def _assign_segments(con: Any, path: Path, rules: list[Rule]) -> None:
    """Add `segment` to `con`'s customers table, computed by the rules on sandboxes only: first each rule alone
    on an empty copy (a mistake in it is shown in full), then all of them at once on a copy of the columns
    they name (each alone again only to say which one failed)."""
    empty = _sandbox(con, columns=None)
    try:
        for r in rules:
            _run(empty, f"SELECT count(*) FROM customers WHERE ({r.rule})", [], path, r, on_data=False)
    finally:
        empty.close()
    cases = " ".join(f"WHEN ({r.rule}) THEN {i}" for i, r in enumerate(rules))
    sql = f"CREATE TABLE {OUTPUT} AS SELECT {ROW}, CAST(CASE {cases} END AS UTINYINT) AS s FROM customers"
    named, every = _named(con, rules), [str(r[0]) for r in con.execute("DESCRIBE customers").fetchall()]
    sandbox = _sandbox(con, columns=named)
    try:
        failed = not _ran(sandbox, sql)
        if failed and named != every:  # a rule reached a column its text does not name: copy them all
            sandbox.close()
            sandbox = _sandbox(con, columns=every)
            failed = not _ran(sandbox, sql)
        if failed:  # which rule, and how: one line that never quotes the data (raised outside the handler)
            for r in rules:
                _run(sandbox, f"SELECT count(*) FROM customers WHERE ({r.rule})", [], path, r, on_data=True)
            _run(sandbox, sql, [], path, None, on_data=True)
        # Only (row id, segment number) comes back; the customers table gets its column in place, in its order.
        con.register("segment_numbers", sandbox.sql(f"SELECT {ROW}, s FROM {OUTPUT}").__arrow_c_stream__())
        try:
            names = " ".join(f"WHEN {i} THEN ?" for i in range(len(rules)))
            con.execute("ALTER TABLE customers ADD COLUMN segment VARCHAR")
            con.execute(
                f"UPDATE customers SET segment = CASE n.s {names} END FROM segment_numbers n "
                f"WHERE customers.rowid = n.{ROW}",
                [r.name for r in rules],
            )
        finally:
            con.unregister("segment_numbers")
    finally:
        sandbox.close()


def segment_customers(loaded: LoadedCustomers, rules_path: Path | None = None) -> list[Segment]:
    """Add `segment` to the customers table; return one summary per segment, in rule order."""
    path = rules_path or default_rules_file()
    rules = load_rules(path)
    con: Any = loaded.connection
    _assign_segments(con, path, rules)
    unmatched = con.execute("SELECT count(*), min(customer_id) FROM customers WHERE segment IS NULL").fetchone()
    if unmatched[0]:
        raise InputError(
            f"rules file {path}: {unmatched[0]} customer(s) match no rule (e.g. {unmatched[1]}); "
            'end with a catch-all rule: "true"'
        )
    total = con.execute("SELECT count(*) FROM customers").fetchone()[0] or 1
    numeric = [c for c in NUMERIC if c in loaded.columns]
    means = ", ".join(f'avg("{c}")' for c in numeric)
    rows = {
        row[0]: row
        for row in con.execute(
            f"SELECT segment, count(*), mode(tier), {means}, list(DISTINCT tier ORDER BY tier) "
            "FROM customers GROUP BY segment"
        ).fetchall()
    }
    segments = []
    for r in rules:
        row = rows.get(r.name)
        size = int(row[1]) if row else 0
        segments.append(
            Segment(
                name=r.name,
                rule=r.rule,
                size=size,
                share=size / total,
                tier=row[2] if row else None,
                means={c: float(v) for c, v in zip(numeric, row[3:-1], strict=True) if v is not None} if row else {},
                tiers=[str(t) for t in row[-1] if t is not None] if row else [],
            )
        )
    return segments
