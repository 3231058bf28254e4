"""Export agent: what an email platform imports, written from DuckDB so a million rows stay cheap.

- `templates.json`: one template per variant, its merge tags in the platform's syntax (Liquid:
  `{{ first_name | default: "there" }}`) and the campaign's unsubscribe footer added here.
- `assignments.csv`: customer id, segment, the rule that matched, the assigned arm, and the variant delivered: the arm's
  own when it is valid, else the segment's control (the model's, or the one cpo wrote when the model's ended
  invalid: `source: template`); nothing when no control is sendable either.
- `send_list.csv`: the customers who get an email, with their variant, its source and merge-field values.
- `segments.csv`: one row per segment (size, share, feature means).

Each file is written under a temporary name beside it and renamed into place (`cpo.core.files.replacing`):
a reader, or a kill -9 mid-export, never finds half a file under its name; a killed export's leftovers are
removed by the next one.

Bodies are written once per variant, never once per customer; `render_emails` (`cpo run --render`) writes
one rendered message per customer, for small lists only, from the templates as exported.
"""

from __future__ import annotations

import csv
import email.utils
import hashlib
import json
import re
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

from cpo.campaign.agents.assignment import HOLDOUT
from cpo.campaign.agents.columns import EMAIL
from cpo.campaign.agents.load import PASSED, LoadedCustomers, passed_columns
from cpo.campaign.agents.segmentation import Segment
from cpo.campaign.campaign_file import Campaign
from cpo.campaign.mail.layout import CANONICAL, LayoutError, html_part
from cpo.campaign.mail.message import Message, message_of
from cpo.campaign.mail.platforms import PLATFORMS, TemplateCheckError, check_template, render
from cpo.core.csvsafe import safe_cell, safe_sql
from cpo.core.files import replacing, write_atomically
from cpo.core.models import EmailVariant

NOT_SENT = ""
TEMPLATES_FILE = "templates.json"
SEGMENTS_FILE = "segments.csv"
ASSIGNMENTS_FILE = "assignments.csv"
SEND_LIST_FILE = "send_list.csv"


@dataclass(frozen=True)
class Delivery:
    """Which variant each segment x arm gets, and the cells that get nothing."""

    plan: dict[tuple[str, str], str]  # (segment, arm) -> variant id, or NOT_SENT
    substituted: list[tuple[str, str]]  # cells whose own variant was invalid: control sent instead
    unsent: list[str]  # segments whose control is unusable too


def sendable(variant: EmailVariant, withheld: Collection[str] = ()) -> bool:
    """A variant may be sent: it is valid and not withheld (blocked by screening or rejected in review)."""
    return variant.valid and variant.variant_id not in withheld


def plan_delivery(
    variants: list[EmailVariant],
    arms: tuple[str, ...],
    segments: list[str] | None = None,
    withheld: Collection[str] = (),
) -> Delivery:
    """The arm's own sendable variant, else the segment's sendable control, else nothing.

    A cell may hold more than one variant (the model's control and the one cpo wrote for it): the first
    sendable one, in the order given, is delivered. `segments` names every segment with customers, so one whose
    emails all failed is reported unsent too.
    """
    by_cell: dict[tuple[str, str], EmailVariant] = {}
    for v in variants:
        if (v.segment, v.tone) not in by_cell or not sendable(by_cell[(v.segment, v.tone)], withheld):
            by_cell[(v.segment, v.tone)] = v

    plan: dict[tuple[str, str], str] = {}
    substituted, unsent = [], []
    for segment in dict.fromkeys([*(segments or []), *(v.segment for v in variants)]):
        control = by_cell.get((segment, "control"))
        fallback = control.variant_id if control is not None and sendable(control, withheld) else NOT_SENT
        if not fallback:
            unsent.append(segment)
        for arm in arms:
            own = by_cell.get((segment, arm))
            if own is not None and sendable(own, withheld):
                plan[(segment, arm)] = own.variant_id
            else:
                plan[(segment, arm)] = fallback
                if arm != "control" and fallback:
                    substituted.append((segment, arm))
    return Delivery(plan=plan, substituted=substituted, unsent=unsent)


def personal_delivery(
    loaded: LoadedCustomers, variants: Mapping[str, EmailVariant], withheld: Collection[str] = ()
) -> dict[str, str]:
    """--per-customer: each customer's own variant id (by the request key recorded for them), or NOT_SENT."""
    con: Any = loaded.connection
    rows = con.execute("SELECT customer_id, request_key FROM personal").fetchall()
    return {
        str(customer): variants[key].variant_id if key in variants and sendable(variants[key], withheld) else NOT_SENT
        for customer, key in rows
    }


def unsent_customers(loaded: LoadedCustomers) -> dict[str, int]:
    """Customers in the campaign (not the holdout) who get no email because nothing sendable was written for
    them, per segment: after `export_campaign` (an unusable address is counted by `address_dropped`)."""
    con: Any = loaded.connection
    rows = con.execute(
        f"SELECT segment, count(*) FROM delivered WHERE delivered_variant = '' AND arm <> '{HOLDOUT}' "
        "AND address_problem = '' GROUP BY segment ORDER BY segment"
    ).fetchall()
    return {str(segment): int(n) for segment, n in rows}


def customers_per_cell(loaded: LoadedCustomers) -> dict[tuple[str, str], int]:
    """{(segment, arm): customers}, the holdout included: after `export_campaign`."""
    con: Any = loaded.connection
    rows = con.execute("SELECT segment, arm, count(*) FROM delivered GROUP BY 1, 2").fetchall()
    return {(str(segment), str(arm)): int(n) for segment, arm, n in rows}


def address_dropped(loaded: LoadedCustomers) -> dict[str, int]:
    """Customers left off the send list for their address: {"not an address": n, "an earlier customer's": m}."""
    con: Any = loaded.connection
    rows = con.execute(
        "SELECT address_problem, count(*) FROM delivered WHERE address_problem <> '' GROUP BY 1 ORDER BY 1"
    ).fetchall()
    return {ADDRESS_PROBLEMS[str(code)]: int(n) for code, n in rows}


def write_templates(
    path: Path, variants: list[EmailVariant], campaign: Campaign, withheld: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """One template per variant; `sendable` is false for invalid or withheld ones (with the reason)."""
    templates = [template_of(v, campaign, withheld or {}) for v in variants]
    write_atomically(path, json.dumps(templates, indent=2, ensure_ascii=False) + "\n")
    return templates


def template_of(variant: EmailVariant, campaign: Campaign, withheld: Mapping[str, str]) -> dict[str, Any]:
    """A variant as `templates.json` holds it, merge tags unfilled: the subject, the preheader, the text part
    (`body`: the email with its call to action and footer), the HTML part from the one layout, and the parts
    both are made of. A template that does not render to the email as sent (`check_template`) is withheld."""
    message = message_of(variant, campaign.frame)
    reason = withheld.get(variant.variant_id)
    try:
        page = html_part(message, CANONICAL)
        if sendable(variant, withheld):
            check_template(PLATFORMS["liquid"], message, page, message.text)
    except (LayoutError, TemplateCheckError) as exc:
        page, reason = "", f"its template cannot be laid out: {exc}"
    return {
        "variant_id": variant.variant_id,
        "segment": variant.segment,
        "arm": variant.tone,
        "source": variant.source,
        "valid": variant.valid,
        "sendable": variant.valid and reason is None,
        "withheld": reason,
        "subject": variant.subject,
        "preheader": message.preheader,
        "body": message.text,
        "html": page,
        "cta": {"text": message.cta_text, "url": message.cta_url},
        "parts": {
            "body": message.body,
            "sign_off": message.sign_off,
            "footer": message.footer,
            "postal_address": message.postal_address,
        },
        "merge_fields": ["first_name", "unsubscribe_url"],
        "citations": [c.id for c in variant.citations],
    }


def message_from_template(template: Mapping[str, Any]) -> Message:
    """The message a template was made from (one made before templates kept their parts: body and footer)."""
    parts, cta = template.get("parts") or {}, template.get("cta") or {}
    body, _, footer = str(template.get("body", "")).partition("\n\n--\n")
    return Message(
        subject=str(template.get("subject", "")),
        preheader=str(template.get("preheader") or ""),
        body=str(parts.get("body", body)),
        sign_off=str(parts.get("sign_off", "")),
        cta_text=str(cta.get("text", "")),
        cta_url=str(cta.get("url", "")),
        footer=str(parts.get("footer", footer)),
        postal_address=str(parts.get("postal_address", "")),
    )


def write_segments(path: Path, segments: list[Segment]) -> None:
    """One row per segment; its text cells are written so a spreadsheet cannot run them (`safe_cell`)."""
    keys = sorted({k for s in segments for k in s.means})
    with replacing(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["segment", "rule", "size", "share", "tier", *(f"mean_{k}" for k in keys)])
        for s in segments:
            means = [round(s.means[k], 4) if k in s.means else "" for k in keys]
            text = [safe_cell(s.name), safe_cell(s.rule)]
            writer.writerow([*text, s.size, round(s.share, 4), safe_cell(s.tier or ""), *means])


def _safe_columns(*columns: str) -> str:
    """A COPY's select list of text columns (`name` or `name AS alias`), each neutralised by `safe_sql`."""
    parts = (c.partition(" AS ") for c in columns)
    return ", ".join(f"{safe_sql(name)} AS {alias or name}" for name, _, alias in parts)


def _clear_leftovers(folder: Path, names: Collection[str] = ("*",)) -> None:
    """Remove the temporary files a killed export left beside `names` (see `replacing`)."""
    for name in names:
        for leftover in folder.glob(f".{name}.*.tmp"):
            leftover.unlink(missing_ok=True)


def _copy_csv(con: Any, query: str, path: Path) -> None:
    """DuckDB's COPY of `query` to the CSV file `path`, through a temporary file renamed into place."""
    with replacing(path) as tmp:
        target = str(tmp).replace("'", "''")
        con.execute(f"COPY ({query}) TO '{target}' (FORMAT CSV, HEADER, DELIMITER ',')")


def export_campaign(
    loaded: LoadedCustomers,
    segments: list[Segment],
    variants: list[EmailVariant],
    campaign: Campaign,
    run_dir: Path,
    arms: tuple[str, ...],
    personal: dict[str, str] | None = None,
    withheld: Mapping[str, str] | None = None,
) -> Delivery:
    """Write templates.json, segments.csv, assignments.csv and send_list.csv into `run_dir`.

    `personal` (`--per-customer`) gives each customer's own variant id ("" when it is invalid: not sent)
    instead of one variant per segment x arm.
    """
    names = [s.name for s in segments if s.size]
    _clear_leftovers(run_dir, (TEMPLATES_FILE, SEGMENTS_FILE, ASSIGNMENTS_FILE, SEND_LIST_FILE))
    templates = write_templates(run_dir / TEMPLATES_FILE, variants, campaign, withheld)
    # A template withheld for its layout is withheld from delivery too: the control goes instead, or nothing.
    withheld = {**(withheld or {}), **{t["variant_id"]: t["withheld"] for t in templates if t["withheld"]}}
    delivery = plan_delivery(variants, arms, names, withheld) if personal is None else None
    con: Any = loaded.connection
    if personal is None:
        assert delivery is not None
        con.execute("CREATE OR REPLACE TEMP TABLE delivery (segment VARCHAR, arm VARCHAR, variant_id VARCHAR)")
        rows = [(s, a, v) for (s, a), v in delivery.plan.items()]
        if rows:
            con.executemany("INSERT INTO delivery VALUES (?, ?, ?)", rows)
        join = "LEFT JOIN delivery d ON d.segment = a.segment AND d.arm = a.arm"
    else:
        personal = {c: NOT_SENT if v in withheld else v for c, v in personal.items()}
        con.execute("CREATE OR REPLACE TEMP TABLE delivery (customer_id VARCHAR, variant_id VARCHAR)")
        if personal:
            con.executemany("INSERT INTO delivery VALUES (?, ?)", list(personal.items()))
        join = "LEFT JOIN delivery d ON d.customer_id = a.customer_id"
        unsent = sorted({str(s) for (s,) in con.execute(
            "SELECT DISTINCT a.segment FROM assignments a JOIN delivery d USING (customer_id) WHERE d.variant_id = ''"
        ).fetchall()})  # fmt: skip
        delivery = Delivery(plan={}, substituted=[], unsent=unsent)
    con.execute("CREATE OR REPLACE TEMP TABLE variant_sources (variant_id VARCHAR, source VARCHAR)")
    sources = list({v.variant_id: (v.variant_id, v.source) for v in variants}.values())
    if sources:
        con.executemany("INSERT INTO variant_sources VALUES (?, ?)", sources)
    con.execute("CREATE OR REPLACE TEMP TABLE segment_rules (segment VARCHAR, rule VARCHAR)")
    con.executemany("INSERT INTO segment_rules VALUES (?, ?)", [(s.name, s.rule) for s in segments])
    write_segments(run_dir / SEGMENTS_FILE, segments)
    first_name = "c.first_name" if "first_name" in loaded.columns else "NULL"
    email = "c.email" if EMAIL in loaded.columns else "NULL"
    passed = [f"{PASSED}{c}" for c in passed_columns(loaded.columns)]  # the campaign's audience_columns
    con.execute(
        "CREATE OR REPLACE TEMP TABLE planned AS "
        f"SELECT a.customer_id, a.segment, r.rule, a.arm, CASE WHEN a.arm = '{HOLDOUT}' THEN '' "
        "ELSE coalesce(d.variant_id, '') END AS planned_variant, "
        f"{first_name} AS first_name, {email} AS email{''.join(f', c.{c}' for c in passed)} "
        f"FROM assignments a JOIN customers c USING (customer_id) {join} "
        "LEFT JOIN segment_rules r ON r.segment = a.segment"
    )
    # With an address column, a customer whose address is not one, or is an earlier customer's (case aside),
    # is not sent: the platform would bounce it or mail one inbox twice. Counted by `address_dropped`.
    problem = (
        f"CASE WHEN planned_variant = '' THEN '' WHEN email IS NULL OR NOT regexp_full_match(email, '{ADDRESS}') "
        f"THEN '{BAD_ADDRESS}' WHEN row_number() OVER (PARTITION BY lower(email), planned_variant <> '' "
        f"ORDER BY customer_id) > 1 THEN '{SHARED_ADDRESS}' ELSE '' END"
        if EMAIL in loaded.columns
        else "''"
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE delivered AS SELECT customer_id, segment, rule, arm, "
        "CASE WHEN address_problem = '' THEN planned_variant ELSE '' END AS delivered_variant, first_name, email, "
        f"{''.join(f'{c}, ' for c in passed)}address_problem FROM (SELECT *, {problem} AS address_problem FROM planned)"
    )
    assigned = _safe_columns("customer_id", "segment", "rule", "arm", "delivered_variant")  # every column is text
    _copy_csv(con, f"SELECT {assigned} FROM delivered ORDER BY delivered.customer_id", run_dir / ASSIGNMENTS_FILE)
    address = (EMAIL,) if EMAIL in loaded.columns else ()
    extra = [f'{c} AS "{c[len(PASSED) :]}"' for c in passed]
    sent = _safe_columns(
        "customer_id", *address, "arm", "delivered_variant AS variant_id", "first_name", "segment", *extra
    )
    _copy_csv(
        con,
        f"SELECT {sent}, coalesce(s.source, '') AS source FROM delivered "
        "LEFT JOIN variant_sources s ON s.variant_id = delivered.delivered_variant "
        "WHERE delivered_variant <> '' ORDER BY delivered.customer_id",
        run_dir / SEND_LIST_FILE,
    )
    return delivery


# An address as platforms accept one: no spaces, one @, a dot in the domain (the full RFC 5322 grammar accepts
# much that no platform will send to).
ADDRESS = r"[^@\s\x00-\x1f\x7f<>(),;:\\\"\[\]]+@[^@\s\x00-\x1f\x7f<>(),;:\\\"\[\]]+\.[A-Za-z]{2,}"
BAD_ADDRESS, SHARED_ADDRESS = "invalid", "shared"  # the codes in the `delivered` table
ADDRESS_PROBLEMS = {BAD_ADDRESS: "not an address", SHARED_ADDRESS: "an earlier customer's"}
RENDER_LIMIT = 10_000  # --render writes a file per customer: beyond this, use templates.json + send_list.csv


def _plain(value: str) -> str:
    """A merge value or header as text: control characters and line breaks (U+2028 and U+2029 too) made spaces,
    so it cannot add a line or a header."""
    return "".join(" " if unicodedata.category(ch)[0] == "C" or ch in "\u2028\u2029" else ch for ch in value).strip()


PLAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")  # an id that is a safe file name as it is
RENDERED = "rendered"


def preview_name(customer_id: str, *, whole_hash: bool = False) -> str:
    """`<id>.eml` when the id is a safe file name already, else its readable part, `~` and a sha256 prefix.

    A kept id never holds `~`, so ids that read alike once sanitised (`A/1`, `A 1`, `A_1`) never share a
    name. `whole_hash` (all 64 hex digits, always hashed) settles the rare clash `render_emails` finds.
    """
    if not whole_hash and PLAIN_ID.fullmatch(customer_id):
        return f"{customer_id}.eml"
    stem = re.sub(r"[^A-Za-z0-9._-]|^[.-]", "_", customer_id)[:60]
    digest = hashlib.sha256(customer_id.encode("utf-8")).hexdigest()
    return f"{stem}~{digest if whole_hash else digest[:10]}.eml"


def preview_values(first_name: str, campaign: Campaign) -> dict[str, str]:
    """The merge values a preview is filled with: the customer's first name and the campaign's unsubscribe URL."""
    return {"first_name": first_name, "unsubscribe_url": campaign.unsubscribe_url}


def render_emails(loaded: LoadedCustomers, variants: list[EmailVariant], campaign: Campaign, run_dir: Path) -> int:
    """`rendered/<customer id>.eml`: each sent customer's email with its merge fields filled (text and HTML),
    rendered from its template as `templates.json` holds it.

    One file per customer (see `preview_name`), on case-insensitive disks too; a preview an earlier pass
    wrote for a customer this pass does not send is removed. Returns how many were written.
    """
    templates = {v.variant_id: template_of(v, campaign, {}) for v in variants}
    folder = run_dir / RENDERED
    folder.mkdir(exist_ok=True)
    _clear_leftovers(folder)
    con: Any = loaded.connection
    rows = con.execute(
        "SELECT customer_id, coalesce(first_name, ''), delivered_variant, coalesce(email, '') FROM delivered "
        "WHERE delivered_variant <> '' ORDER BY customer_id"
    ).fetchall()
    taken: set[str] = set()
    for customer_id, first_name, variant_id, address in rows:
        name = preview_name(str(customer_id))
        if name.casefold() in taken:  # ids that differ only in case (macOS, Windows), or 10 hex digits that clash
            name = preview_name(str(customer_id), whole_hash=True)
        taken.add(name.casefold())
        message = rendered_message(
            templates[variant_id], campaign, preview_values(first_name, campaign), to=str(address)
        )
        write_atomically(folder / name, bytes(message))
    for stale in folder.glob("*.eml"):  # no preview of an email this pass does not send
        if stale.name.casefold() not in taken:
            stale.unlink(missing_ok=True)
    return len(taken)


def rendered_message(
    template: Mapping[str, Any], campaign: Campaign, values: dict[str, str], to: str = ""
) -> EmailMessage:
    """One customer's email (text and HTML) from a template as `templates.json` holds it, both parts rendered
    by python-liquid from the exported Liquid (`cpo.campaign.mail.platforms.render`).

    As a mail client shows it: `To` when the address is known, `Date`, a `Message-ID`, one-click unsubscribe
    headers (RFC 2369 `List-Unsubscribe`, RFC 8058 `List-Unsubscribe-Post`, for an https URL), the preheader
    first in the HTML, the call to action and the unsubscribe URL as links. `cpo audit verify` renders with
    this too, to compare (all but `Date` and `Message-ID`, which are the sending's, not the email's). Every
    header and merge value is `_plain`, so a line break cannot add a header or a line."""
    name, unsubscribe = _plain(values.get("first_name", "")), _plain(values.get("unsubscribe_url", ""))
    liquid = PLATFORMS["liquid"]
    message = EmailMessage(policy=SMTP)
    message["Subject"] = _plain(str(template["subject"]))
    message["From"] = _plain(f"{campaign.sender.brand} <{campaign.from_address}>")
    if to:
        message["To"] = _plain(to)
    message["Date"] = email.utils.formatdate(localtime=False)
    message["Message-ID"] = email.utils.make_msgid(domain=campaign.from_address.rpartition("@")[2] or None)
    if unsubscribe:
        message["List-Unsubscribe"] = f"<{unsubscribe}>"
        if unsubscribe.lower().startswith("https://"):
            message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message["X-Cpo-Variant"] = _plain(str(template["variant_id"]))
    message.set_content(render(liquid, str(template["body"]), name, unsubscribe, as_html=False))
    page = str(template.get("html") or "") or html_part(message_from_template(template), CANONICAL)
    message.add_alternative(render(liquid, page, name, unsubscribe, as_html=True), subtype="html")
    return message
