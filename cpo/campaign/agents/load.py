"""Load agent: a customer file (CSV or Parquet) into an embedded DuckDB table, checked row by row.

Customer rows never enter graph state: they live in a DuckDB table (`customers`) that the later
agents query. A malformed file is one `InputError` naming the file, line and field, before anything
is written. Customers without consent (`email_opt_in` false) or on a suppression list are excluded
and counted, not silently dropped.
"""

from __future__ import annotations

import codecs
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
TEXT = ("customer_id", "first_name", "location", "tier")
CONSENT = "email_opt_in"
YES, NO = ("true", "yes", "y", "1", "t"), ("false", "no", "n", "0", "f")
CHUNK = 1 << 20


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

    @property
    def eligible(self) -> int:
        return self.total - self.no_consent - self.suppressed


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


def _check_header(path: Path) -> None:
    """The header and the first rows have the same number of fields.

    DuckDB's CSV sniffer, even with `header = true`, takes a header shorter than its rows for data and
    names the columns after the first row; the error would then make no sense.
    """
    import csv
    import itertools

    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(itertools.islice(csv.reader(handle), 6))
    if not rows:
        raise InputError(f"customer file {path}: empty file (no header)")
    width = len(rows[0])
    for number, row in enumerate(rows[1:], start=2):
        if row and len(row) != width:
            raise InputError(f"customer file {path}: line {number} has {len(row)} fields but the header has {width}")


def _raw_table(con: Any, path: Path) -> None:
    """Every column as text, in file order, with the line number each row came from."""
    import duckdb

    source = str(path).replace("'", "''")
    try:
        if path.suffix.lower() == ".parquet":
            con.execute(
                f"CREATE TEMP TABLE raw AS SELECT row_number() OVER () + 1 AS _line, * FROM read_parquet('{source}')"
            )
        else:
            con.execute(
                "CREATE TEMP TABLE raw AS SELECT row_number() OVER () + 1 AS _line, * FROM "
                f"read_csv('{source}', header = true, all_varchar = true, auto_detect = true)"
            )
    except duckdb.Error as exc:
        first = first_line(exc)
        kind = path.suffix.lstrip(".") or "CSV"
        raise InputError(f"customer file {path}: cannot be read as {kind}: {first}") from None


def _check(con: Any, path: Path, columns: tuple[str, ...]) -> None:
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise InputError(f"customer file {path}: missing column {missing[0]!r} (it has: {', '.join(columns)})")
    if con.execute("SELECT count(*) FROM raw").fetchone()[0] == 0:
        raise InputError(f"customer file {path}: no customers (only a header)")
    blank = con.execute(
        "SELECT _line FROM raw WHERE customer_id IS NULL OR trim(CAST(customer_id AS VARCHAR)) = '' "
        "ORDER BY _line LIMIT 1"
    ).fetchone()
    if blank:
        raise InputError(f"customer file {path}: line {blank[0]}: customer_id is empty")
    duplicate = con.execute(
        "SELECT CAST(customer_id AS VARCHAR), min(_line), max(_line) FROM raw GROUP BY 1 HAVING count(*) > 1 "
        "ORDER BY 2 LIMIT 1"
    ).fetchone()
    if duplicate:
        raise InputError(
            f"customer file {path}: customer id {duplicate[0]!r} appears twice "
            f"(lines {duplicate[1]} and {duplicate[2]})"
        )
    for column in (c for c in NUMERIC if c in columns):
        bad = con.execute(
            f'SELECT _line, CAST("{column}" AS VARCHAR) FROM raw WHERE "{column}" IS NOT NULL '
            f'AND trim(CAST("{column}" AS VARCHAR)) <> \'\' AND TRY_CAST("{column}" AS DOUBLE) IS NULL '
            "ORDER BY _line LIMIT 1"
        ).fetchone()
        if bad:
            raise InputError(f"customer file {path}: line {bad[0]}: {column} {bad[1]!r} is not a number")
    for column in (c for c in REQUIRED if c in NUMERIC):
        empty = con.execute(
            f'SELECT _line FROM raw WHERE "{column}" IS NULL OR trim(CAST("{column}" AS VARCHAR)) = \'\' '
            "ORDER BY _line LIMIT 1"
        ).fetchone()
        if empty:
            raise InputError(f"customer file {path}: line {empty[0]}: {column} is empty")
    if CONSENT in columns:
        allowed = ", ".join(f"'{v}'" for v in (*YES, *NO))
        bad = con.execute(
            f"SELECT _line, CAST({CONSENT} AS VARCHAR) FROM raw WHERE lower(trim(CAST({CONSENT} AS VARCHAR))) "
            f"NOT IN ({allowed}) ORDER BY _line LIMIT 1"
        ).fetchone()
        if bad:
            raise InputError(f"customer file {path}: line {bad[0]}: {CONSENT} {bad[1]!r} is not true or false")


def _suppressed_ids(con: Any, suppress: Path) -> None:
    """A suppression list: a CSV with a customer_id column, or one id per line."""
    _fingerprint_utf8(suppress, "suppression file")
    lines = [ln.strip() for ln in suppress.read_text(encoding="utf-8").splitlines() if ln.strip()]
    header = [h.strip() for h in lines[0].split(",")] if lines else []
    if "customer_id" in header:
        index = header.index("customer_id")
        ids = [ln.split(",")[index].strip() for ln in lines[1:] if len(ln.split(",")) > index]
    else:
        ids = lines
    con.execute("CREATE TEMP TABLE suppressed (customer_id VARCHAR)")
    if ids:
        con.executemany("INSERT INTO suppressed VALUES (?)", [(i,) for i in dict.fromkeys(ids)])


def load_customers(path: Path, *, suppress: Path | None = None, connection: Any = None) -> LoadedCustomers:
    """Check and load a customer file: the eligible customers end up in the table `customers`, the others
    in `excluded` (customer_id, reason), so an audit can say who was left out and why."""
    import duckdb

    if not path.is_file():
        raise InputError(f"customer file {path} does not exist")
    parquet = path.suffix.lower() == ".parquet"
    fingerprint = _fingerprint(path, "customer file") if parquet else _fingerprint_utf8(path, "customer file")
    if not parquet:
        _check_header(path)
    con: Any = connection or duckdb.connect()
    _raw_table(con, path)
    columns = tuple(c for c in (r[0] for r in con.execute("DESCRIBE raw").fetchall()) if c != "_line")
    _check(con, path, columns)
    if suppress is not None:
        _suppressed_ids(con, suppress)

    select = [f'trim(CAST("{c}" AS VARCHAR)) AS "{c}"' for c in TEXT if c in columns]
    select += [f'TRY_CAST("{c}" AS DOUBLE) AS "{c}"' for c in NUMERIC if c in columns]
    consent = f"lower(trim(CAST({CONSENT} AS VARCHAR))) IN ({', '.join(repr(v) for v in YES)})"
    consent_sql = consent if CONSENT in columns else "true"
    suppressed_sql = "false"
    if suppress is not None:
        suppressed_sql = "trim(CAST(customer_id AS VARCHAR)) IN (SELECT customer_id FROM suppressed)"
    con.execute(
        f"CREATE TEMP TABLE flagged AS SELECT _line, {', '.join(select)}, {consent_sql} AS _consent, "
        f"{suppressed_sql} AS _suppressed FROM raw"
    )
    total, no_consent, suppressed = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE NOT _consent), count(*) FILTER (WHERE _consent AND _suppressed) "
        "FROM flagged"
    ).fetchone()
    kept = [c for c in (*TEXT, *NUMERIC) if c in columns]
    con.execute(
        f"CREATE OR REPLACE TABLE customers AS SELECT {', '.join(kept)} FROM flagged "
        "WHERE _consent AND NOT _suppressed ORDER BY _line"
    )
    con.execute(
        "CREATE OR REPLACE TABLE excluded AS SELECT customer_id, "
        "CASE WHEN NOT _consent THEN 'no consent' ELSE 'suppressed' END AS reason FROM flagged "
        "WHERE NOT _consent OR _suppressed ORDER BY _line"
    )
    con.execute("DROP TABLE raw")
    con.execute("DROP TABLE flagged")
    return LoadedCustomers(
        connection=con,
        path=path,
        fingerprint=fingerprint,
        columns=tuple(kept),
        total=int(total),
        no_consent=int(no_consent),
        suppressed=int(suppressed),
    )
