"""Cells a spreadsheet will not run: OWASP's rule against CSV injection, one home for Python and SQL.

Excel, Sheets and LibreOffice read a cell that begins with `=`, `+`, `-`, `@`, a tab or a carriage return
as a formula, so a customer named `=HYPERLINK(...)` would run on the machine of whoever opens an export.
Such a text cell is written with a leading `'`, which makes it text. Numbers are not text: they stay as
they are. The prefix is visible and stays in the data: a reader of the file strips it if it needs the value.
"""

from __future__ import annotations

from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: str) -> str:
    """`value`, with a `'` in front when a spreadsheet would take it for a formula."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def safe_sql(column: str) -> str:
    """The same rule as a DuckDB expression over `column`, for exports written with `COPY`.

    `column` is a column name or expression from our own code, never user data; NULL stays NULL. The first
    character's code point (`ord`) is compared because it is the cheapest test DuckDB has: about 0.01 s
    per column per million rows.
    """
    codes = ", ".join(str(ord(c)) for c in FORMULA_STARTS)
    return f"CASE WHEN ord({column}) IN ({codes}) THEN '''' || {column} ELSE {column} END"


def cell_values(cell: str) -> tuple[str, ...]:
    """What a cell `safe_cell` wrote may stand for: the value without the `'` it was given, when it begins
    with `'` and a formula character, and the cell as it is (a value that began with `'` is not prefixed)."""
    return (cell[1:], cell) if cell.startswith("'") and cell[1:].startswith(FORMULA_STARTS) else (cell,)


def safe_column(column: Any) -> Any:
    """The same rule over a pandas Series of text (written by pandas' `to_csv`), without a loop in Python."""
    risky = column.str[:1].isin(FORMULA_STARTS)
    return column.where(~risky, "'" + column)


def unquoted_column(column: Any) -> Any:
    """A pandas Series of cells `safe_cell` wrote, with the `'` it put before formula-like text removed."""
    quoted = column.str[:1].eq("'") & column.str[1:2].isin(FORMULA_STARTS)
    return column.where(~quoted, column.str[1:])
