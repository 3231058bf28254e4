"""The columns of a customer or suppression file: names matched the way people write them, read the way cpo does.

Headers are matched ignoring case, surrounding spaces and space/hyphen versus underscore (`Customer ID`,
`Email_Opt_In`), so a consent column is never missed because of its spelling. Two headers that match the same
name are an error, not a silent pick. Files are comma-separated (RFC 4180); a file separated by `;`, tab or
`|` is named as such instead of being read as one wide column.
"""

from __future__ import annotations

import csv
import itertools
import re
from pathlib import Path

from cpo.core.errors import InputError

ID = "customer_id"
ID_NAMES = ("customer_id", "customerid")
CONSENT = "email_opt_in"
# Accepted spellings of the consent column (after `column_key`), in the order they are documented.
CONSENT_NAMES = ("email_opt_in", "opt_in", "optin", "email_optin", "email_consent", "marketing_consent", "consent")
OTHER_DELIMITERS = {";": "';'", "\t": "tabs", "|": "'|'"}
FIELD_LIMIT = 64 << 20  # the csv module's 128 KiB default would turn one long field into a confusing error


def column_key(name: str) -> str:
    """A header as cpo matches it: no BOM, trimmed, lower case, spaces and hyphens as underscores."""
    return re.sub(r"[\s\-]+", "_", name.replace("\ufeff", "").strip()).lower()


def canonical_names(header: list[str], known: tuple[str, ...], what: str, path: Path) -> dict[str, int]:
    """{cpo's column name: its position in `header`} for the columns cpo uses; a name written twice is an error.

    The id may be written `customerid`; the consent column any of `CONSENT_NAMES` (read as `email_opt_in`).
    """
    found: dict[str, int] = {}
    for position, name in enumerate(header):
        key = column_key(name)
        if key in ID_NAMES:
            key = ID
        elif key in CONSENT_NAMES:
            key = CONSENT
        if key not in known:
            continue
        if key in found:
            first = header[found[key]]
            same = "the consent column" if key == CONSENT else f"column {key!r}"
            raise InputError(
                f"{what} {path}: line 1: {first!r} and {name!r} are both {same} (names are matched ignoring case); "
                "keep one"
            )
        found[key] = position
    return found


def read_header(path: Path, what: str) -> list[str]:
    """The first row of a comma-separated file; a file separated by something else says so."""
    csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows = list(itertools.islice(csv.reader(handle), 1))
    except csv.Error as exc:
        raise InputError(f"{what} {path}: line 1: cannot be read as comma-separated values ({exc})") from None
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise InputError(f"{what} {path}: empty file (no header)")
    header = rows[0]
    if len(header) == 1:
        for delimiter, name in OTHER_DELIMITERS.items():
            if delimiter in header[0]:
                raise InputError(
                    f"{what} {path}: line 1: expected comma-separated values, but the header is separated by "
                    f"{name}; save the file as CSV with commas"
                )
    return header


CSV_LINE = re.compile(r"CSV Error on Line: (\d+)")
COLUMNS_FOUND = re.compile(r"Expected Number of Columns: (\d+) Found: (\d+)")


def csv_error(message: str, path: Path, what: str) -> InputError:
    """DuckDB's CSV error as one line naming the line and the expected delimiter, never the line's content."""
    line = CSV_LINE.search(message)
    where = f"line {line.group(1)}" if line else "a line"
    columns = COLUMNS_FOUND.search(message)
    if columns:
        header, found = columns.groups()
        return InputError(f"{what} {path}: {where} has {found} comma-separated fields but the header has {header}")
    if "unterminated quote" in message:
        reason = 'a quoted field is never closed (a lone ")'
    elif "Maximum line size" in message:
        reason = "the line is longer than 2 MB"
    elif "quote" in message.lower():
        reason = "a quote is not followed by a comma or the end of the line"
    else:
        reason = "it is not comma-separated values as cpo reads them (RFC 4180, '\"' quotes)"
    return InputError(f"{what} {path}: {where}: {reason}")
