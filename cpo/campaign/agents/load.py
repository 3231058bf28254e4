"""Load agent: a customer file (CSV or Parquet) into an embedded DuckDB table, checked row by row.

Customer rows never enter graph state: they live in a DuckDB table (`customers`) that the later
agents query. A malformed file is one `InputError` naming the file, line and field, before anything
is written. Every customer in the file is accounted for: in the campaign, or in the table `excluded`
with a reason: no consent, no consent recorded (a blank value), or suppressed. Consent fails closed:
only a recorded yes sends; a file without a consent column is a warning, or an error when the campaign
says `consent: required`.
"""

from __future__ import annotations

import codecs
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpo.campaign.agents.columns import (
    CONSENT,
    CONSENT_NAMES,
    ID,
    canonical_key,
    canonical_names,
    clean_id_sql,
    csv_error,
    read_header,
)
from cpo.campaign.agents.suppression import load_suppression
from cpo.core.errors import InputError, first_line

REQUIRED = ("customer_id", "tier", "purchase_frequency", "avg_order_value", "last_engagement_days")
NUMERIC = (
    "purchase_frequency",
    "avg_order_value",
    "last_engagement_days",
    "age",
    "historical_open_rate",
    "historical_click_rate",
)
TEXT = ("customer_id", "first_name", "location", "tier", "email")
KNOWN = (*TEXT, *NUMERIC, CONSENT)
YES, NO = ("true", "yes", "y", "1", "t"), ("false", "no", "n", "0", "f")
CHUNK = 1 << 20
# Why a customer is left out, in the order the reasons are checked.
NO_CONSENT, NOT_RECORDED, SUPPRESSED = "no consent", "no consent recorded", "suppressed"


@dataclass(frozen=True)
class LoadedCustomers:
    """Where the eligible customers are and how many were left out, and why."""

    connection: Any  # duckdb.DuckDBPyConnection
    path: Path
    fingerprint: str  # sha256 of the file's bytes, for resume to refuse a changed input
    columns: tuple[str, ...]
    total: int
    no_consent: int
    suppressed: int
    no_consent_recorded: int = 0  # a blank consent value: left out, never assumed
    suppress_unmatched: int = 0  # suppression ids that match no customer of the file
    consent_column: str | None = CONSENT  # the header as written; None: the file has none (a warning)
    suppress_listed: int = 0  # distinct ids in the suppression list

    @property
    def eligible(self) -> int:
        return self.total - self.no_consent - self.no_consent_recorded - self.suppressed

    def counts(self) -> dict[str, int]:
        """What graph state and run.json keep: every customer of the file in exactly one count."""
        return {
            "total": self.total,
            "no_consent": self.no_consent,
            "no_consent_recorded": self.no_consent_recorded,
            "suppressed": self.suppressed,
            "suppress_unmatched": self.suppress_unmatched,
            "eligible": self.eligible,
        }

    def warnings(self) -> list[str]:
        """What the run should say on stderr and keep in run.json: a file without consent, a list matching no one."""
        out = []
        if self.consent_column is None:
            out.append(
                f"customer file {self.path} has no consent column (email_opt_in, or another name cpo reads as "
                "consent): every customer is treated as having consented; set consent: required in the campaign "
                "file to refuse such a file"
            )
        if self.suppress_listed and self.suppress_unmatched == self.suppress_listed:
            out.append(
                f"none of the {self.suppress_listed} ids of the suppression list matches a customer of "
                f"{self.path}: is it the list for this file, with the same ids?"
            )
        return out


def customers_line(counts: Mapping[str, int]) -> str:
    """'customers: N in the file, ...': where every customer of the file went (a run's and a dry run's summary)."""
    recorded = counts.get("no_consent_recorded", 0)
    eligible = counts["total"] - counts["no_consent"] - recorded - counts["suppressed"]
    parts = [f"{counts['total']} in the file", f"{counts['no_consent']} without consent"]
    if recorded:
        parts.append(f"{recorded} with no consent recorded")
    unmatched = counts.get("suppress_unmatched", 0)
    parts.append(
        f"{counts['suppressed']} suppressed" + (f" ({unmatched} suppression ids match no one)" if unmatched else "")
    )
    return f"customers: {', '.join(parts)}, {eligible} in the campaign"


def _fingerprint_utf8(path: Path, what: str) -> str:
    """sha256 of the file, checking on the way that it is UTF-8 (an error names the line)."""
    digest, decoder, line = hashlib.sha256(), codecs.getincrementaldecoder("utf-8")(), 1
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
                try:
                    line += decoder.decode(chunk).count("\n")
                except UnicodeDecodeError as exc:
                    before = chunk[: exc.start].count(b"\n")
                    raise InputError(
                        f"{what} {path}: not UTF-8 text (byte 0x{chunk[exc.start]:02x} on line {line + before})"
                    ) from None
    except OSError as exc:
        raise InputError(f"{what} {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def _fingerprint(path: Path, what: str) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise InputError(f"{what} {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


PASSED = "attr_"  # the prefix of a column the campaign passes through to the send list (`audience_columns`)


def passed_columns(columns: Sequence[str]) -> list[str]:
    """The passed-through columns of a loaded table, as the campaign names them (their `column_key`)."""
    return [c[len(PASSED) :] for c in columns if c.startswith(PASSED)]


def _passed_positions(header: list[str], passed: Sequence[str], path: Path) -> dict[str, int]:
    """Where each column the campaign passes through is in the header; a missing one is a one-line error."""
    keys = [canonical_key(h) for h in header]
    out = {}
    for name in passed:
        if name not in keys:
            raise InputError(
                f"customer file {path}: no column {name!r}, which the campaign passes to the send list "
                f"(audience_columns); it has: {', '.join(header)}"
            )
        out[name] = keys.index(name)
    return out


def _raw_table(con: Any, path: Path, passed: Sequence[str] = ()) -> tuple[list[str], dict[str, int]]:
    """Every column cpo uses as text, under cpo's names, with the line each row came from; returns the header
    and where cpo's columns are in it.

    A CSV is read as comma-separated with `"` quotes and no guessing (DuckDB's sniffer could read a
    semicolon file as one column, or fail with no line number); its columns are named by position, so a
    header is never SQL.
    """
    import duckdb

    source = str(path).replace("'", "''")
    parquet = path.suffix.lower() == ".parquet"
    try:
        if parquet:
            header = [str(r[0]) for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{source}')").fetchall()]
            names = canonical_names(header, KNOWN, "customer file", path)
            extra = _passed_positions(header, passed, path)
            columns = ", ".join(
                [f"{_cleaned(f'CAST({_quoted(header[i])} AS VARCHAR)', n)} AS {n}" for n, i in names.items()]
                + [f"CAST({_quoted(header[i])} AS VARCHAR) AS {PASSED}{n}" for n, i in extra.items()]
            )
            con.execute(
                f"CREATE TEMP TABLE raw AS SELECT row_number() OVER () + 1 AS _line, {columns} "
                f"FROM read_parquet('{source}')"
            )
        else:
            header = read_header(path, "customer file")
            names = canonical_names(header, KNOWN, "customer file", path)
            extra = _passed_positions(header, passed, path)
            types = ", ".join(f"'c{i}': 'VARCHAR'" for i in range(len(header)))
            columns = ", ".join(
                [f"{_cleaned(f'c{i}', n)} AS {n}" for n, i in names.items()]
                + [f"c{i} AS {PASSED}{n}" for n, i in extra.items()]
            )
            con.execute(
                f"CREATE TEMP TABLE raw AS SELECT row_number() OVER () + 1 AS _line, {columns} "
                f"FROM read_csv('{source}', header = true, delim = ',', quote = '\"', escape = '\"', "
                f"auto_detect = false, columns = {{{types}}})"
            )
    except duckdb.Error as exc:
        if not parquet:
            raise csv_error(str(exc), path, "customer file") from None
        raise InputError(f"customer file {path}: cannot be read as Parquet: {first_line(exc)}") from None
    return header, names


def _cleaned(expression: str, name: str) -> str:
    """The id without whitespace of any kind around it (as a suppression list's ids are); other columns as read."""
    return clean_id_sql(expression) if name == ID else expression


def _quoted(name: str) -> str:
    """A header from the file as a SQL identifier: data, never SQL."""
    return '"' + name.replace('"', '""') + '"'


def _first(con: Any, sql: str) -> Any:
    return con.execute(sql + " ORDER BY _line LIMIT 1").fetchone()


def _literals(values: Iterable[str]) -> str:
    """SQL string literals, comma-separated: a tier from the campaign file is data, quoted as such."""
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def _shown(value: object) -> str:
    """A value from the file in an error: quoted, and cut short (it may be anything)."""
    text = str(value)
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _check(
    con: Any, path: Path, columns: tuple[str, ...], header: list[str], tiers: Sequence[str], consent_name: str
) -> None:
    where = f"customer file {path}"
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise InputError(f"{where}: missing column {missing[0]!r} (it has: {', '.join(header)})")
    if con.execute("SELECT count(*) FROM raw").fetchone()[0] == 0:
        raise InputError(f"{where}: no customers (only a header)")
    blank = _first(con, f"SELECT _line FROM raw WHERE {ID} IS NULL OR {ID} = ''")
    if blank:
        raise InputError(f"{where}: line {blank[0]}: customer_id is empty")
    duplicate = con.execute(
        f"SELECT {ID}, min(_line), max(_line) FROM raw GROUP BY 1 HAVING count(*) > 1 ORDER BY 2 LIMIT 1"
    ).fetchone()
    if duplicate:
        raise InputError(
            f"{where}: customer id {_shown(duplicate[0])} appears twice (lines {duplicate[1]} and {duplicate[2]})"
        )
    for column in (c for c in NUMERIC if c in columns):
        bad = _first(
            con,
            f"SELECT _line, {column} FROM raw WHERE {column} IS NOT NULL AND trim({column}) <> '' "
            f"AND (TRY_CAST({column} AS DOUBLE) IS NULL OR NOT isfinite(TRY_CAST({column} AS DOUBLE)))",
        )
        if bad:
            raise InputError(f"{where}: line {bad[0]}: {column} {_shown(bad[1])} is not a number")
    for column in (c for c in REQUIRED if c in NUMERIC):
        empty = _first(con, f"SELECT _line FROM raw WHERE {column} IS NULL OR trim({column}) = ''")
        if empty:
            raise InputError(f"{where}: line {empty[0]}: {column} is empty")
    known = _literals(t.lower() for t in tiers)
    unknown = _first(con, f"SELECT _line, tier FROM raw WHERE tier IS NULL OR lower(trim(tier)) NOT IN ({known})")
    if unknown and not (unknown[1] or "").strip():
        raise InputError(f"{where}: line {unknown[0]}: tier is empty")
    if unknown:
        raise InputError(
            f"{where}: line {unknown[0]}: tier {_shown(unknown[1])} is not one of the campaign's tiers "
            f"({', '.join(tiers)}; matched ignoring case); add it to tiers: in the campaign file"
        )
    if CONSENT in columns:
        bad = _first(
            con,
            f"SELECT _line, {CONSENT} FROM raw WHERE trim({CONSENT}) <> '' "
            f"AND lower(trim({CONSENT})) NOT IN ({_literals((*YES, *NO))})",
        )
        if bad:
            raise InputError(f"{where}: line {bad[0]}: {consent_name} {_shown(bad[1])} is not true or false")


def load_customers(
    path: Path,
    *,
    suppress: Path | None = None,
    connection: Any = None,
    tiers: Sequence[str] | None = None,
    consent_required: bool = False,
    passed: Sequence[str] = (),
) -> LoadedCustomers:
    """Check and load a customer file: the eligible customers end up in the table `customers`, the others
    in `excluded` (customer_id, reason), so an audit can say who was left out and why.

    `tiers` are the campaign's (default: Bronze, Silver, Gold, Platinum): a tier is matched ignoring case
    and written as the campaign spells it; any other tier is an error naming its line. `passed`: columns the
    campaign passes through to the send list as they are (`audience_columns`, by their `column_key`), kept as
    `attr_<name>`.
    """
    import duckdb

    from cpo.core.models import DEFAULT_TIERS

    tiers = tuple(tiers or DEFAULT_TIERS)
    if not path.is_file():
        raise InputError(f"customer file {path} does not exist")
    parquet = path.suffix.lower() == ".parquet"
    fingerprint = _fingerprint(path, "customer file") if parquet else _fingerprint_utf8(path, "customer file")
    con: Any = connection or duckdb.connect()
    header, names = _raw_table(con, path, passed)
    columns = tuple(names)
    consent_name = header[names[CONSENT]].strip() if CONSENT in names else None
    if consent_name is None and consent_required:
        raise InputError(
            f"customer file {path}: no consent column (one of {', '.join(CONSENT_NAMES)}, any case) and the "
            "campaign requires one (consent: required)"
        )
    _check(con, path, columns, header, tiers, consent_name or CONSENT)
    unmatched_sql, listed = "0", 0
    if suppress is not None:
        listed = load_suppression(con, suppress)
        unmatched_sql = f"(SELECT count(*) FROM suppressed WHERE id NOT IN (SELECT lower({ID}) FROM raw))"

    spelled = " ".join(f"WHEN {_literals([t.lower()])} THEN {_literals([t])}" for t in tiers)
    select = [f"trim({c}) AS {c}" for c in TEXT if c in columns and c != "tier"]
    select.append(f"CASE lower(trim(tier)) {spelled} END AS tier")
    select += [f"TRY_CAST({c} AS DOUBLE) AS {c}" for c in NUMERIC if c in columns]
    select += [f"trim({PASSED}{c}) AS {PASSED}{c}" for c in passed]
    value = f"lower(trim({CONSENT}))"
    if consent_name is None:
        reason = "NULL"
    else:
        reason = (
            f"CASE WHEN {CONSENT} IS NULL OR trim({CONSENT}) = '' THEN '{NOT_RECORDED}' "
            f"WHEN {value} IN ({_literals(YES)}) THEN NULL ELSE '{NO_CONSENT}' END"
        )
    suppressed = f"lower({ID}) IN (SELECT id FROM suppressed)" if suppress is not None else "false"
    con.execute(
        f"CREATE TEMP TABLE flagged AS SELECT _line, {', '.join(select)}, "
        f"coalesce({reason}, CASE WHEN {suppressed} THEN '{SUPPRESSED}' END) AS _excluded FROM raw"
    )
    total, no_consent, not_recorded, n_suppressed, unmatched = con.execute(
        f"SELECT count(*), count(*) FILTER (WHERE _excluded = '{NO_CONSENT}'), "
        f"count(*) FILTER (WHERE _excluded = '{NOT_RECORDED}'), count(*) FILTER (WHERE _excluded = '{SUPPRESSED}'), "
        f"{unmatched_sql} FROM flagged"
    ).fetchone()
    kept = [c for c in (*TEXT, *NUMERIC) if c in columns] + [f"{PASSED}{c}" for c in passed]
    con.execute(
        f"CREATE OR REPLACE TABLE customers AS SELECT {', '.join(kept)} FROM flagged WHERE _excluded IS NULL "
        "ORDER BY _line"
    )
    con.execute(
        "CREATE OR REPLACE TABLE excluded AS SELECT customer_id, _excluded AS reason FROM flagged "
        "WHERE _excluded IS NOT NULL ORDER BY _line"
    )
    for table in ("raw", "flagged", *(("suppressed",) if suppress is not None else ())):
        con.execute(f"DROP TABLE {table}")
    return LoadedCustomers(
        connection=con,
        path=path,
        fingerprint=fingerprint,
        columns=tuple(kept),
        total=int(total),
        no_consent=int(no_consent),
        suppressed=int(n_suppressed),
        no_consent_recorded=int(not_recorded),
        suppress_unmatched=int(unmatched),
        consent_column=consent_name,
        suppress_listed=listed,
    )
