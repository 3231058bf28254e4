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
import unicodedata
from pathlib import Path

from cpo.core.errors import InputError

ID = "customer_id"
ID_NAMES = ("customer_id", "customerid", "customer_number", "customer_no")
EMAIL = "email"
# Accepted spellings of the address column (after `column_key`): passed through to the send list.
EMAIL_NAMES = ("email", "email_address", "e_mail", "e_mail_address", "emailaddress", "mail", "email_addr")
CONSENT = "email_opt_in"
# The columns of send_list.csv cpo writes itself (`cpo.campaign.agents.export`); a passed-through column may not
# take one of these names, and a platform's audience maps them to its own.
SEND_LIST_COLUMNS = ("customer_id", "email", "arm", "variant_id", "first_name", "segment", "source")
# Accepted spellings of the consent column (after `column_key`), in the order they are documented.
CONSENT_NAMES = (
    "email_opt_in",
    "opt_in",
    "optin",
    "email_optin",
    "e_mail_opt_in",
    "opt_in_email",
    "marketing_opt_in",
    "email_marketing_opt_in",
    "email_consent",
    "marketing_consent",
    "email_marketing_consent",
    "accepts_email_marketing",
    "accepts_marketing",
    "consent",
)
# Words that make an unread column look like consent (or its opposite): refused, never ignored.
CONSENT_WORDS = frozenset(
    {"opt", "optin", "optout", "consent", "consents", "consented", "subscribed", "subscribe", "subscription",
     "unsubscribe", "unsubscribed", "marketing", "permission", "gdpr", "suppressed", "suppress"}
)  # fmt: skip
OTHER_DELIMITERS = {";": "';'", "\t": "tabs", "|": "'|'"}
FIELD_LIMIT = 64 << 20  # the csv module's 128 KiB default would turn one long field into a confusing error
# Whitespace an id may carry from a spreadsheet (tabs, line breaks, no-break and zero-width spaces, a BOM).
ID_SPACE = (
    " \t\n\r\v\f\u00a0\u1680" + "".join(chr(c) for c in range(0x2000, 0x200C)) + "\u2028\u2029\u202f\u205f\u3000\ufeff"
)


def column_key(name: str) -> str:
    """A header as cpo matches it: NFKC, no invisible characters, CamelCase split, lower case, every run of
    other characters an underscore (`EmailOptIn`, `Email Opt-In`, `e-mail opt in`)."""
    text = "".join(ch for ch in unicodedata.normalize("NFKC", name) if unicodedata.category(ch) != "Cf")
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", text.strip())
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def clean_id_sql(column: str) -> str:
    """An id without surrounding whitespace of any kind, in SQL; cheap when there is none (the usual case)."""
    codes = ", ".join(str(ord(c)) for c in ID_SPACE)
    return (
        f"CASE WHEN ord({column}) IN ({codes}) OR ord(right({column}, 1)) IN ({codes}) "
        f"THEN trim({column}, '{ID_SPACE}') ELSE {column} END"
    )


def canonical_key(name: str) -> str:
    """A header as cpo reads it: its `column_key`, the id, consent and address columns by their one name."""
    key = column_key(name)
    if key in ID_NAMES:
        return ID
    if key in CONSENT_NAMES:
        return CONSENT
    return EMAIL if key in EMAIL_NAMES else key


def canonical_names(header: list[str], known: tuple[str, ...], what: str, path: Path) -> dict[str, int]:
    """{cpo's column name: its position in `header`} for the columns cpo uses; a name written twice is an error.

    The id may be written `customerid`; the consent column any of `CONSENT_NAMES` (read as `email_opt_in`); the
    address any of `EMAIL_NAMES` (read as `email`).
    """
    found: dict[str, int] = {}
    for position, name in enumerate(header):
        key = canonical_key(name)
        if key not in known:
            if CONSENT_WORDS & set(key.split("_")) and not any(column_key(h) in CONSENT_NAMES for h in header):
                raise InputError(
                    f"{what} {path}: line 1: column {name!r} looks like consent but is not a name cpo reads as "
                    f"consent; rename it to {CONSENT} (true for those who agreed to be emailed) or remove it"
                )
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
    separated = other_delimiter(header)
    if separated:
        raise InputError(
            f"{what} {path}: line 1: expected comma-separated values, but the header is separated by "
            f"{separated}; save the file as CSV with commas"
        )
    return header


def other_delimiter(first_row: list[str]) -> str | None:
    """The name of the delimiter a first row read as one comma-separated field is really separated by, if any."""
    if len(first_row) != 1:
        return None
    return next((name for delimiter, name in OTHER_DELIMITERS.items() if delimiter in first_row[0]), None)


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
    elif "invalid state" in message:
        reason = "not comma-separated values as cpo reads them: mixed line endings (CRLF and LF) or a stray quote"
    elif "quote" in message.lower():
        reason = "a quote is not followed by a comma or the end of the line"
    else:
        reason = "it is not comma-separated values as cpo reads them (RFC 4180, '\"' quotes)"
    return InputError(f"{what} {path}: {where}: {reason}")


def read_rows(path: Path, what: str) -> list[list[str]]:
    """Every row of a comma-separated file (UTF-8, a BOM allowed), or one line naming `what` and the reason."""
    csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            return list(csv.reader(handle))
    except UnicodeDecodeError:
        raise InputError(f"{what}: not UTF-8 text") from None
    except csv.Error as exc:
        raise InputError(f"{what}: cannot be read as comma-separated values ({exc})") from None
    except OSError as exc:
        raise InputError(f"{what}: {exc.strerror or exc}") from None
