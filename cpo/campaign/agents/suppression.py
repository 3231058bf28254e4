"""A suppression list: the customers who must not be emailed, whatever else the customer file says.

Read with a real CSV reader: a column named like a customer id (`customer_id`, `Customer ID`, ...) if
the first row has one, else one id per line. Ids are compared without surrounding spaces and ignoring
case, so a suppression can only ever remove more customers, never fewer; ids that match no customer are
counted, not ignored.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from cpo.campaign.agents.columns import FIELD_LIMIT, ID, ID_NAMES, column_key
from cpo.core.errors import InputError


def suppression_ids(path: Path) -> list[str]:
    """The ids in a suppression file, stripped and lower-cased, each once."""
    what = f"suppression file {path}"
    csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    except UnicodeDecodeError:
        raise InputError(f"{what}: not UTF-8 text") from None
    except csv.Error as exc:
        raise InputError(f"{what}: cannot be read as comma-separated values ({exc})") from None
    except OSError as exc:
        raise InputError(f"{what}: {exc.strerror or exc}") from None
    if not rows:
        return []
    keys = [column_key(cell) for cell in rows[0]]
    column = next((i for i, key in enumerate(keys) if key in ID_NAMES), None)
    if column is not None:
        ids = [row[column] for row in rows[1:] if len(row) > column]
    elif max(len(row) for row in rows) == 1:
        ids = [row[0] for row in rows]
    else:
        raise InputError(
            f"{what}: line 1: no {ID} column (it has: {', '.join(rows[0])}); give a CSV with a {ID} column, "
            "or one id per line"
        )
    return list(dict.fromkeys(i.strip().lower() for i in ids if i.strip()))


def load_suppression(con: Any, path: Path) -> int:
    """The table `suppressed` (id: stripped, lower case) in `con`; returns how many ids it holds."""
    ids = suppression_ids(path)
    con.execute("CREATE OR REPLACE TEMP TABLE suppressed (id VARCHAR)")
    if ids:
        con.execute("INSERT INTO suppressed SELECT unnest(?)", [ids])
    return len(ids)
