"""A suppression list: the customers who must not be emailed, whatever else the customer file says.

Read with a real CSV reader: a column named like a customer id (`customer_id`, `Customer ID`, `id`, ...)
if the first row has one, else one id per line. Ids are compared as the customer file's are (no whitespace
of any kind around them) and ignoring case (in DuckDB, on both sides), so a suppression can only ever remove
more customers, never fewer. A list cpo cannot read as intended is an error, not a list that suppresses no
one: an empty file, another delimiter, a column of emails, a row too short to hold the id. A `'` cpo put
before an id that a spreadsheet would take for a formula (`'-17`) is removed: its own exports can be passed
back. Ids that match no customer are counted; a list none of whose ids match is a warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cpo.campaign.agents.columns import ID, ID_NAMES, ID_SPACE, clean_id_sql, column_key, other_delimiter, read_rows
from cpo.core.csvsafe import FORMULA_STARTS
from cpo.core.errors import InputError

HEADER_NAMES = (*ID_NAMES, "id")
# A single column with one of these headers holds something other than customer ids: refused, not matched.
NOT_IDS = ("email", "e_mail", "email_address", "emails", "name", "phone", "phone_number", "mobile")


def _unquoted(value: str) -> str:
    """An id as cpo's own CSV exports wrote it, without the `'` that kept a spreadsheet from running it."""
    return value[1:] if value.startswith("'") and value[1:2] in FORMULA_STARTS else value


def suppression_ids(path: Path) -> list[str]:
    """The ids in a suppression file, stripped, each once (case is folded in SQL, as the customers' is)."""
    what = f"suppression file {path}"
    rows = [(n, row) for n, row in enumerate(read_rows(path, what), start=1) if any(c.strip() for c in row)]
    if not rows:
        raise InputError(f"{what}: no ids (the file is empty): a list that suppresses no one is refused")
    first = rows[0][1]
    separated = other_delimiter(first)
    if separated:
        raise InputError(
            f"{what}: line 1: expected comma-separated values or one id per line, but the first line is "
            f"separated by {separated}"
        )
    keys = [column_key(cell) for cell in first]
    column = next((i for i, key in enumerate(keys) if key in HEADER_NAMES), None)
    if column is None and len(first) == 1 and keys[0] in NOT_IDS:
        raise InputError(f"{what}: line 1: a list of {first[0].strip()!r}, not of customer ids ({ID})")
    if column is None and max(len(row) for _, row in rows) > 1:
        raise InputError(
            f"{what}: line 1: no {ID} column (it has: {', '.join(first)}); give a CSV with a {ID} column, "
            "or one id per line"
        )
    body = rows[1:] if column is not None else rows
    column = column or 0
    short = next((n for n, row in body if len(row) <= column), None)
    if short is not None:
        raise InputError(f"{what}: line {short} has no {ID} (its column {column + 1} is missing)")
    ids = [_unquoted(row[column].strip(ID_SPACE)) for _, row in body]
    ids = list(dict.fromkeys(i for i in ids if i))
    if not ids:
        raise InputError(f"{what}: no ids (only a header): a list that suppresses no one is refused")
    return ids


def load_suppression(con: Any, path: Path) -> int:
    """The table `suppressed` (id: stripped, lower case) in `con`; returns how many distinct ids it holds."""
    ids = suppression_ids(path)
    con.execute("CREATE OR REPLACE TEMP TABLE suppressed (id VARCHAR)")
    con.execute(
        f"INSERT INTO suppressed SELECT DISTINCT lower({clean_id_sql('i')}) FROM (SELECT unnest(?) AS i)", [ids]
    )
    return int(con.execute("SELECT count(*) FROM suppressed").fetchone()[0])
