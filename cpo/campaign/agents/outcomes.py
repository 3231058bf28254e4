"""Outcomes back from an email platform: one CSV, per recipient or per event, read into per-customer metrics.

Two shapes are read. A *per-recipient* file has an id column and one column per metric whose cells are
booleans, counts or timestamps (empty = no). A *per-event* file has an id column and an event column, one row
per event (`open`, `click`, `bounce`, ...). The columns are found by name (each format's names, or `--map
COLUMN=FIELD` for any other file); ids are matched to the run's customers by customer id (or the platform's
external id, which cpo's audience sets to it) or by email, ignoring case. Rows whose id matches no customer,
repeated rows and unknown event types are counted and reported, never silently dropped; a cell cpo cannot read
as yes or no is an error naming the line. A URL whose `utm_content` is one of the run's variant ids also counts
as a click, attributed to that variant. What is in the file is data: nothing in it is run or rendered.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cpo.campaign.agents.columns import EMAIL_NAMES, ID_NAMES, ID_SPACE, column_key, other_delimiter, read_rows
from cpo.campaign.agents.experiment import METRICS
from cpo.core.csvsafe import cell_values
from cpo.core.errors import InputError

CUSTOMER, EMAIL, EVENT, URL = "customer_id", "email", "event", "url"
COMPLAINED = "complained"  # a spam complaint: not a metric of the test, but a reason never to email again
FIELDS = (CUSTOMER, EMAIL, EVENT, URL, *METRICS, COMPLAINED)
NO = frozenset({"", "0", "false", "no", "n", "f", "none", "null", "nan", "-", "never"})
YES = frozenset({"true", "yes", "y", "t", "x"})
# Event names as platforms spell them, compared without case or punctuation (`email_opened`, `emailOpen`).
EVENTS = {
    "delivered": ("delivered", "delivery", "emaildelivered", "emaildelivery", "usersmessagesemaildelivery"),
    "opened": ("open", "opened", "opens", "emailopen", "emailopened", "usersmessagesemailopen"),
    "clicked": ("click", "clicked", "clicks", "emailclick", "emailclicked", "usersmessagesemailclick"),
    "converted": ("converted", "conversion", "convert", "purchase", "emailconverted"),
    "unsubscribed": (
        "unsubscribe", "unsubscribed", "groupunsubscribe", "emailunsubscribe", "emailunsubscribed",
        "usersmessagesemailunsubscribe",
    ),
    "bounced": (
        "bounce", "bounced", "hardbounce", "softbounce", "emailbounce", "emailbounced", "usersmessagesemailbounce",
    ),
}  # fmt: skip
EVENT_METRIC = {name: metric for metric, names in EVENTS.items() for name in names}
COMPLAINTS = frozenset(
    {"spamreport", "spammed", "spam", "complaint", "complained", "emailcomplaint", "emailmarkedasspam",
     "markasspam", "usersmessagesemailmarkasspam"}
)  # fmt: skip
# Rare events a per-event export of sends, opens or clicks would hold had they happened: absent means none.
RARE = ("unsubscribed", "bounced")


@dataclass(frozen=True)
class OutcomeFormat:
    """The column names (after `column_key`) one platform's engagement export uses, and where it is documented."""

    name: str
    ids: dict[str, str]
    metrics: dict[str, str] = field(default_factory=dict)
    events: tuple[str, ...] = ()
    urls: tuple[str, ...] = ("url",)
    doc: str = ""


_GENERIC_IDS = {
    **dict.fromkeys(ID_NAMES, CUSTOMER),
    **dict.fromkeys(("external_id", "external_user_id", "user_id", "userid", "id", "customer"), CUSTOMER),
    **dict.fromkeys((*EMAIL_NAMES, "recipient", "email_address"), EMAIL),
}
_GENERIC_METRICS = {
    **{m: m for m in METRICS},
    **{f"{m}_at": m for m in METRICS},
    **{"opens": "opened", "clicks": "clicked", "conversions": "converted", "unsubscribes": "unsubscribed"},
    **{"bounces": "bounced", "delivery": "delivered", "conversion": "converted", "unsubscribe": "unsubscribed"},
    **dict.fromkeys(("spammed", "spam_report", "complained", "complaint", "spam_complaint"), COMPLAINED),
}
FORMATS = {
    "generic": OutcomeFormat(
        "generic", _GENERIC_IDS, _GENERIC_METRICS, ("event", "event_type", "event_name", "type", "metric")
    ),
    # SendGrid's Event Webhook / Email Activity: one row per event; `customer_id` when sent as a custom arg.
    "sendgrid": OutcomeFormat(
        "sendgrid",
        {"customer_id": CUSTOMER, "email": EMAIL},
        events=("event",),
        doc="https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/event",
    ),
    # Customer.io's deliveries export: one row per delivery, a timestamp per metric (empty when it did not happen).
    "customerio": OutcomeFormat(
        "customerio",
        {"customer_id": CUSTOMER, "recipient": EMAIL, "email": EMAIL},
        {**{m: m for m in METRICS}, "spammed": COMPLAINED},
        doc="https://docs.customer.io/integrations/api/app/tag/exports/exportDeliveriesData/",
    ),
}


@dataclass
class Outcomes:
    """What an outcome file says, per customer of the run, and what in it matched no one."""

    values: dict[str, dict[str, int]]
    measured: tuple[str, ...]
    rows: int
    unknown_ids: int
    duplicates: int
    ignored_events: dict[str, int]
    utm_clicks: list[tuple[str, str]]
    columns: dict[str, str]
    complained: set[str] = field(default_factory=set)
    rows_without_id: int = 0


class CustomerIndex:
    """The run's customers by id and by email: an exact match first, then one ignoring case when that names a
    single customer (`abc` and `ABC` may be two customers; then only an exact match finds either)."""

    def __init__(self, ids: list[str], emails: list[tuple[str, str]]) -> None:
        self.exact = {i: i for i in ids}
        self.folded = self._unique((i.casefold(), i) for i in ids)
        self.emails = self._unique((e.strip().casefold(), c) for c, e in emails if e.strip())

    @staticmethod
    def _unique(pairs: Any) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for key, value in pairs:
            out[key] = value if out.get(key, value) == value else None  # None: two customers, ambiguous
        return out

    def by_id(self, cell: str) -> str | None:
        text = cell.strip(ID_SPACE)
        for value in cell_values(text) if text else ():
            if value in self.exact:
                return value
        for value in cell_values(text) if text else ():
            if found := self.folded.get(value.casefold()):
                return found
        return None

    def by_email(self, cell: str) -> str | None:
        return self.emails.get(cell.strip().casefold()) if cell.strip() else None


def parse_map(pairs: list[str]) -> dict[str, str]:
    """`--map "Email Address=email" opens=opened`: column (as written) to field; a one-line error otherwise."""
    out = {}
    for pair in pairs:
        column, sep, target = pair.rpartition("=")
        target = target.strip().lower()
        if not sep or not column.strip():
            raise InputError(f"--map {pair!r}: expected COLUMN=FIELD (FIELD one of {', '.join(FIELDS)})")
        if target not in FIELDS:
            raise InputError(f"--map {pair!r}: unknown field {target!r}; fields are {', '.join(FIELDS)}")
        out[column_key(column)] = target
    return out


def flag(cell: str, where: str) -> int:
    """1 or 0 from a boolean, a count or a timestamp (empty or 0 = no); an error for anything else."""
    text = cell.strip().lower()
    if text in NO:
        return 0
    if text in YES:
        return 1
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None and number == number:
        if number in (float("inf"), float("-inf")):
            raise InputError(f"{where}: {cell!r} is not a count")
        if number < 0:
            raise InputError(f"{where}: {cell!r} is a negative count")
        return int(number > 0)
    try:
        datetime.fromisoformat(re.sub(r"z$", "+00:00", text).replace(" utc", "+00:00"))
    except ValueError:
        raise InputError(f"{where}: {cell!r} is not a boolean, a count or a timestamp") from None
    return 1


def _event_key(cell: str) -> str:
    return re.sub(r"[^a-z0-9]", "", cell.lower())


def utm_variant(url: str) -> str | None:
    """The `utm_content` of a URL (cpo sets it to the variant id), or None."""
    try:
        query = urlsplit(url.strip()).query
    except ValueError:
        return None
    found = parse_qs(query).get("utm_content")
    return found[0] if found else None


def _columns(header: list[str], form: OutcomeFormat, mapping: dict[str, str], what: str) -> dict[int, str]:
    """Column index to field: the mapping first, then the format's names; a field claimed twice is an error."""
    keys = [column_key(h) for h in header]
    known = {**form.ids, **form.metrics, **dict.fromkeys(form.events, EVENT), **dict.fromkeys(form.urls, URL)}
    chosen: dict[int, str] = {i: mapping[key] for i, key in enumerate(keys) if key in mapping}
    for i, key in enumerate(keys):  # a field the mapping names is taken from its column, not the format's names
        target = known.get(key)
        if i not in chosen and target and target not in mapping.values():
            chosen[i] = target
    unmatched = sorted(set(mapping) - set(keys))
    if unmatched:
        raise InputError(f"{what}: --map names columns the file does not have: {', '.join(unmatched)}")
    for target in set(chosen.values()):
        claimed = [header[i] for i, t in chosen.items() if t == target]
        if len(claimed) > 1:
            raise InputError(
                f"{what}: columns {', '.join(repr(c) for c in claimed)} all mean {target!r}; "
                f"say which with --map COLUMN={target}"
            )
    if not {CUSTOMER, EMAIL} & set(chosen.values()):
        raise InputError(
            f"{what}: no id column (customer id, external id or email) among: {', '.join(header)}; "
            "name it with --map COLUMN=customer_id or COLUMN=email"
        )
    if not ({EVENT, URL, COMPLAINED, *METRICS} & set(chosen.values())):
        raise InputError(
            f"{what}: no outcome column ({', '.join(METRICS)}, or an event column) among: {', '.join(header)}; "
            "name them with --map COLUMN=FIELD"
        )
    return chosen


def _rows(path: Path, what: str) -> list[list[str]]:
    rows = read_rows(path, what)
    if not rows or not any(c.strip() for c in rows[0]):
        raise InputError(f"{what}: empty (no header)")
    separated = other_delimiter(rows[0])
    if separated:
        raise InputError(f"{what}: line 1: expected comma-separated values, but it is separated by {separated}")
    return rows


def read_outcomes(
    path: Path,
    *,
    customers: CustomerIndex,
    variants: set[str],
    platform: str = "generic",
    mapping: dict[str, str] | None = None,
) -> Outcomes:
    """The file's outcomes for the run's customers."""
    what = f"outcome file {path}"
    form = FORMATS[platform]
    rows = _rows(path, what)
    chosen = _columns(rows[0], form, mapping or {}, what)
    fields = set(chosen.values())
    values: dict[str, dict[str, int]] = {}
    seen: Counter[tuple[str, ...]] = Counter()
    unknown: set[str] = set()
    ignored: Counter[str] = Counter()
    events_seen: set[str] = set()
    utm: list[tuple[str, str]] = []
    complained: set[str] = set()
    without_id = 0
    width = max(chosen) + 1
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) < width:
            raise InputError(f"{what}: line {line} has {len(row)} columns, the header {len(rows[0])}")
        cells = {t: row[i] for i, t in chosen.items()}
        raw = cells.get(CUSTOMER, "").strip() or cells.get(EMAIL, "").strip()
        customer = customers.by_id(cells.get(CUSTOMER, "")) or customers.by_email(cells.get(EMAIL, ""))
        if not raw:  # an account-level event, or a row the platform left without a recipient: counted
            without_id += 1
            continue
        seen[tuple(row) if EVENT in fields else (customer or raw.casefold(),)] += 1
        if customer is None:
            unknown.add(raw.casefold())
            continue
        got = values.setdefault(customer, {})
        for i, target in chosen.items():
            if target in METRICS:
                got[target] = max(got.get(target, 0), flag(row[i], f"{what}: line {line}, column {rows[0][i]!r}"))
            elif target == COMPLAINED and flag(row[i], f"{what}: line {line}, column {rows[0][i]!r}"):
                complained.add(customer)
        # A URL is a click in a click log (per-event click rows, or a per-recipient file without a click column);
        # where a click column exists, the URL only says which variant the click was on.
        is_click = "clicked" not in fields or got.get("clicked") == 1
        if EVENT in fields:
            name = cells[EVENT].strip()
            key = _event_key(name)
            metric = EVENT_METRIC.get(key)
            is_click = metric == "clicked"
            if key in COMPLAINTS:
                complained.add(customer)
            elif metric is None:
                ignored[name or "(empty)"] += 1
            else:
                got[metric] = 1
                events_seen.add(metric)
        variant = utm_variant(cells.get(URL, "")) if URL in fields else None
        if variant in variants and is_click:
            got["clicked"] = 1
            utm.append((customer, str(variant)))
    measured = {t for t in fields if t in METRICS} | events_seen
    if EVENT in fields and measured & {"delivered", "opened", "clicked"}:
        measured |= set(RARE)
    if utm:
        measured.add("clicked")
    rows_read = sum(seen.values())
    return Outcomes(
        values=values,
        measured=tuple(m for m in METRICS if m in measured),
        rows=rows_read,
        unknown_ids=len(unknown),
        duplicates=sum(n - 1 for n in seen.values()),
        ignored_events=dict(sorted(ignored.items())),
        utm_clicks=utm,
        columns={rows[0][i]: t for i, t in sorted(chosen.items())},
        complained=complained,
        rows_without_id=without_id,
    )


def read_conversions(path: Path, customers: CustomerIndex) -> tuple[set[str], int]:
    """A conversions file keyed by customer id: the customers who converted, and how many ids matched no one.

    Each listed id converted, unless a `converted` column (boolean, count or timestamp) says otherwise."""
    what = f"conversions file {path}"
    rows = _rows(path, what)
    keys = [column_key(h) for h in rows[0]]
    id_col = next((i for i, k in enumerate(keys) if k in ID_NAMES or k in ("id", "external_id", "user_id")), None)
    if id_col is None:
        raise InputError(f"{what}: line 1: no customer id column (it has: {', '.join(rows[0])})")
    flag_col = next((i for i, k in enumerate(keys) if k in ("converted", "converted_at", "conversion")), None)
    converted: set[str] = set()
    unknown: set[str] = set()
    matched = 0
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) <= max(id_col, flag_col or 0):
            raise InputError(f"{what}: line {line} is missing columns")
        customer = customers.by_id(row[id_col])
        yes = flag(row[flag_col], f"{what}: line {line}") if flag_col is not None else 1
        if customer is None:
            unknown.add(row[id_col].strip())
        else:
            matched += 1
            if yes:
                converted.add(customer)
    if unknown and not matched:
        example = sorted(unknown)[0]
        raise InputError(
            f"{what}: none of its {len(unknown)} ids is a customer of this run (e.g. {example!r}): a file that "
            "converts no one is refused, not read as zero conversions"
        )
    return converted, len(unknown)
