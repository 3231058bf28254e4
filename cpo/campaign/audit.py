"""The safety audit: `safety_audit.csv`, append-only and tamper-evident.

One row per screened variant and per review decision. Each row carries the sha256 of the previous row
(the first row's "previous" is the sha256 of the run id) and its own hash over all its fields, so an
edited row, a removed or reordered row, or a truncated file breaks the chain. The chain's head (the
last row's hash) is recorded in `run.json` and in the cost ledger, so rewriting the whole file with a
fresh, consistent chain is detected too: its head no longer matches. `cpo audit verify RUN_DIR` checks.

A cell a spreadsheet would run as a formula (a reviewer or reason such as `=HYPERLINK(...)`) is written
with a leading `'` (`safe_cell`) before the row is hashed: the hash covers exactly what the file holds, so
verifying needs nothing but the file, and files written before this rule verify as they are.
"""

from __future__ import annotations

import csv
import email
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage, MIMEPart
from email.policy import SMTP
from pathlib import Path
from typing import Any

from cpo.campaign.agents.export import (
    RENDERED,
    SEND_LIST_FILE,
    TEMPLATES_FILE,
    message_from_template,
    preview_name,
    preview_values,
    rendered_message,
)
from cpo.campaign.mail.layout import CANONICAL, LayoutError, html_part
from cpo.campaign.mail.message import Frame, framed
from cpo.campaign.rundir import AUDIT_FILE, read_record, recorded_campaign, run_id_of
from cpo.core.csvsafe import cell_values, safe_cell
from cpo.core.errors import CpoError, first_line

FIELDS = (
    "time_utc",
    "run_id",
    "variant_id",
    "backend",
    "decision",
    "severities",
    "reasons",
    "reviewer",
    "content_sha256",
    "prev_hash",
    "row_hash",
)


MISSING = "missing"  # a recorded anchor that cannot be read: a failure, never a skip


def genesis(run_id: str) -> str:
    return hashlib.sha256(f"cpo-audit:{run_id}".encode()).hexdigest()


def row_hash(row: dict[str, str]) -> str:
    """sha256 over every field but the hash itself, in a fixed order."""
    canonical = json.dumps([row[f] for f in FIELDS if f != "row_hash"], ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class AuditLog:
    """Appends rows to a run's audit file; `head` is the hash of its last row."""

    def __init__(self, run_dir: Path, run_id: str) -> None:
        self.path = run_dir / AUDIT_FILE
        self.run_id = run_id
        rows = read_rows(self.path) if self.path.is_file() else []
        self.head = rows[-1]["row_hash"] if rows else genesis(run_id)
        self.count = len(rows)

    def append(
        self,
        *,
        variant_id: str,
        backend: str,
        decision: str,
        content_sha256: str,
        severities: dict[str, int] | None = None,
        reasons: list[str] | None = None,
        reviewer: str = "",
    ) -> str:
        fields = {
            "time_utc": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "run_id": self.run_id,
            "variant_id": variant_id,
            "backend": backend,
            "decision": decision,
            "severities": json.dumps(severities or {}, sort_keys=True),
            "reasons": "; ".join(reasons or []),
            "reviewer": reviewer,
            "content_sha256": content_sha256,
            "prev_hash": self.head,
        }
        row = {field: safe_cell(value) for field, value in fields.items()}  # hashed as written
        row["row_hash"] = row_hash(row)
        new = not self.path.is_file()
        with self.path.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)
            handle.flush()
            os.fsync(handle.fileno())
        self.head, self.count = row["row_hash"], self.count + 1
        return self.head


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@dataclass(frozen=True)
class Verdict:
    ok: bool
    rows: int
    head: str
    problem: str = ""


def verify(path: Path, run_id: str, recorded_heads: dict[str, str | None]) -> Verdict:
    """Check the chain row by row, then its head against every recorded head (run.json, the ledger)."""
    if not path.is_file():
        return Verdict(False, 0, "", f"{path} does not exist")
    try:
        rows = read_rows(path)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return Verdict(False, 0, "", f"{path} cannot be read: {exc}")
    previous = genesis(run_id)
    for number, row in enumerate(rows, start=2):  # line numbers: the header is line 1
        if set(FIELDS) - set(row) or None in row.values():
            return Verdict(False, number - 2, previous, f"line {number}: not an audit row (fields missing)")
        if row["prev_hash"] != previous:
            return Verdict(
                False,
                number - 2,
                previous,
                f"line {number}: its previous-row hash does not match (a row was removed or reordered before it)",
            )
        if row_hash(row) != row["row_hash"]:
            return Verdict(False, number - 2, previous, f"line {number}: its hash does not match its content (edited)")
        previous = row["row_hash"]
    if rows and not any(recorded_heads.values()):
        return Verdict(False, len(rows), previous, "no anchor: neither run.json nor a ledger records this chain's head")
    for where, head in recorded_heads.items():
        if head == MISSING:
            return Verdict(
                False, len(rows), previous, f"{where} holds no audit head for this run: an anchor is missing"
            )
        if head is not None and head != previous:
            return Verdict(
                False,
                len(rows),
                previous,
                f"the file's last hash does not match the one recorded in {where} "
                "(rows were removed from the end, or the file was rewritten)",
            )
    return Verdict(True, len(rows), previous)


def content_hash(text: str) -> str:
    """The sha256 the audit records for the canonical email as sent: subject, blank line, body with footer."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def review_rows(path: Path, rows: list[dict[str, str]] | None = None) -> dict[str, dict[str, str]]:
    """The last review decision for each variant, from the chain itself (`review.json` is only a view).

    `rows`: the chain's rows when the caller has read them already."""
    decisions: dict[str, dict[str, str]] = {}
    for row in _rows(path) if rows is None else rows:
        if row["backend"] == "review":
            decisions[row["variant_id"]] = {
                "decision": row["decision"],
                "reviewer": row["reviewer"],
                "reason": row["reasons"],
                "content_sha256": row["content_sha256"],
                "time_utc": row["time_utc"],
            }
    return decisions


def decided_before(run_dir: Path, pending: Mapping[str, str]) -> dict[str, dict[str, str]] | None:
    """The decisions the run's verified chain holds for every pending variant ({variant id: content hash}), each
    for that very content; None when any is missing or the chain does not verify. A finished, reviewed run
    passed over again (`--resume`) finds its reviewers' decisions here instead of pausing for them again."""
    try:
        run_id, heads = recorded_heads(run_dir)
    except CpoError:
        return None
    if not pending or not verify(run_dir / AUDIT_FILE, run_id, heads).ok:
        return None
    decided = review_rows(run_dir / AUDIT_FILE)
    if all(v in decided and decided[v]["content_sha256"] == digest for v, digest in pending.items()):
        return {v: decided[v] for v in pending}
    return None


def screening_rows(path: Path, rows: list[dict[str, str]] | None = None) -> dict[str, dict[str, str]]:
    """The last screening decision for each variant in the chain."""
    return {
        r["variant_id"]: r for r in (_rows(path) if rows is None else rows) if r["backend"] not in ("review", EXPORT)
    }


EXPORT = "export"  # the backend of a row binding a written file (`cpo.campaign.file_binding`), not a variant


def _rows(path: Path) -> list[dict[str, str]]:
    return read_rows(path) if path.is_file() else []


def unbound_templates(run_dir: Path, templates: list[dict[str, Any]], reviewed: bool) -> list[str]:
    """Why each sendable template is not what the audit passed (and, when reviewed, approved): one line each.

    The hash is recomputed from the exported subject, preheader and text part; the parts the HTML part is laid
    out from must be that text, with the call to action and footer of the campaign the run recorded."""
    try:
        frame: Frame | None = recorded_campaign(read_record(run_dir, "cannot verify"), unchanged=True).frame
    except CpoError as exc:
        if any(t.get("sendable") and "html" in t for t in templates):
            return [f"cannot check the templates' call to action and footer: {first_line(exc)}"]
        frame = None
    path = run_dir / AUDIT_FILE
    rows = _rows(path)
    screened, decided = screening_rows(path, rows), review_rows(path, rows)
    problems = []
    for t in (t for t in templates if t.get("sendable")):
        vid = str(t.get("variant_id"))
        digest = content_hash(template_text(t))
        row = screened.get(vid)
        if row is None or row["decision"] != "pass":
            problems.append(f"variant {vid} is sendable in templates.json but the audit has no pass for it")
        elif row["content_sha256"] != digest:
            problems.append(f"variant {vid}: templates.json is not the content the audit screened (edited?)")
        elif reviewed and (vid not in decided or decided[vid]["decision"] != "approve"):
            problems.append(f"variant {vid} is sendable in templates.json but the audit has no approval for it")
        elif reviewed and decided[vid]["content_sha256"] != digest:
            problems.append(f"variant {vid}: templates.json is not the content the reviewer approved")
        elif not laid_out(t, frame):
            problems.append(
                f"variant {vid}: templates.json's HTML part or call to action is not the campaign's email laid out "
                "(edited?)"
            )
    return problems


def template_text(template: Mapping[str, Any]) -> str:
    """The canonical text of a template as exported (`cpo.campaign.mail.message`): what the audit hash covers."""
    subject, preheader, body = (str(template.get(k) or "") for k in ("subject", "preheader", "body"))
    return f"{subject}\n\n{preheader}\n\n{body}" if preheader else f"{subject}\n\n{body}"


def laid_out(template: Mapping[str, Any], frame: Frame | None) -> bool:
    """Are a template's parts, text part and HTML part one email, with the call to action, sign-off and footer
    `frame` gives them? (A template made before HTML parts has nothing to compare.)"""
    if "html" not in template:
        return True
    try:
        message = message_from_template(template)
        if frame is not None:  # the parts must be the email's words framed as the campaign frames them
            sent = f"{message.body}\n\n{message.sign_off}" if message.sign_off else message.body
            segment, vid, arm = (str(template.get(k)) for k in ("segment", "variant_id", "arm"))
            if message != framed(message.subject, message.preheader, sent, frame, segment, vid, arm):
                return False
        return message.text == template.get("body") and html_part(message, CANONICAL) == template.get("html")
    except LayoutError:
        return False


def unsendable_deliveries(run_dir: Path, templates: list[dict[str, Any]]) -> list[str]:
    """Rows of `send_list.csv` and `assignments.csv` that deliver a variant `templates.json` does not mark
    sendable: what a marketer imports must be what the audit passed, not only what the templates say."""
    sendable = {str(t.get("variant_id")) for t in templates if t.get("sendable")}
    problems = []
    for name, column in (("send_list.csv", "variant_id"), ("assignments.csv", "delivered_variant")):
        path = run_dir / name
        if not path.is_file():
            continue
        with path.open(newline="", encoding="utf-8") as handle:
            for line, row in enumerate(csv.DictReader(handle), start=2):
                variant = row.get(column) or ""
                if variant and variant not in sendable:
                    problems.append(f"{name} line {line} delivers variant {variant}, which is not sendable")
                    break
    return problems


def unfaithful_previews(run_dir: Path, templates: list[dict[str, Any]]) -> tuple[list[str], int]:
    """Why each `.eml` preview in `rendered/` is not what `cpo run --render` writes, one line each; and how
    many previews there are.

    Each preview is rendered again (`rendered_message`) from its customer's row of `send_list.csv` (variant
    and first name) and that variant's template in `templates.json`, and compared header by header and part
    by part; only the MIME boundary and the transfer encoding may differ (`message_shape`). A preview of a variant
    that is not sendable, or of no customer on the send list, fails. A missing preview is not a failure:
    nothing unaudited is shown. The sender and unsubscribe URL come from the run's campaign file, which
    must be the one the run fingerprinted."""
    folder = run_dir / RENDERED
    files = sorted(folder.glob("*.eml")) if folder.is_dir() else []
    if not files:
        return [], 0
    try:
        campaign = recorded_campaign(read_record(run_dir, "cannot verify"), unchanged=True)
    except CpoError as exc:
        return [f"cannot check the {len(files)} previews in {RENDERED}/: {first_line(exc)}"], len(files)
    by_id = {str(t.get("variant_id")): t for t in templates}
    customers: dict[str, list[tuple[str, str, str]]] = {}  # file name, case-folded -> (variant, first name, email)
    send_list = run_dir / SEND_LIST_FILE
    if send_list.is_file():
        with send_list.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                sent = (row.get("variant_id") or "", row.get("first_name") or "", row.get("email") or "")
                for customer_id in cell_values(row.get("customer_id") or ""):
                    for whole_hash in (False, True):  # the name `render_emails` gives, or the one for a clash
                        name = preview_name(customer_id, whole_hash=whole_hash).casefold()
                        customers.setdefault(name, []).append(sent)
    problems = []
    for path in files:
        where = f"{RENDERED}/{path.name}"
        try:
            shown = parsed_message(path.read_bytes())
            named = str(shown.get("X-Cpo-Variant") or "")
            seen = message_shape(shown)
        except Exception:  # any file that is not a well-formed email fails, whatever the parser raised
            problems.append(f"{where} cannot be read as an email")
            continue
        if named and not by_id.get(named, {}).get("sendable"):
            problems.append(f"{where} is a preview of variant {named}, which is not sendable")
            continue
        rows = customers.get(path.name.casefold())
        if not rows:
            problems.append(f"{where} is not the preview of any customer on the send list")
            continue
        expected = (
            message_shape(
                parsed_message(bytes(rendered_message(by_id[variant], campaign, preview_values(name, campaign), to=to)))
            )
            for variant, cell, address in rows
            if by_id.get(variant, {}).get("sendable")
            for name in cell_values(cell)
            for to in cell_values(address)
        )
        if seen not in expected:
            problems.append(
                f"{where} is not what --render writes from {TEMPLATES_FILE} and {SEND_LIST_FILE} (edited by hand?)"
            )
    return problems, len(files)


def parsed_message(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=SMTP)
    assert isinstance(message, EmailMessage)
    return message


# Headers a preview may carry as written at rendering time: the MIME framing, and the sending's own stamps.
UNCOMPARED = ("content-type", "content-transfer-encoding", "date", "message-id")


def message_shape(part: MIMEPart) -> tuple[Any, ...]:
    """What a reader of the email sees: every header (the Content-Type without its random boundary; the
    transfer encoding, the Date and the Message-ID left out) and each part's decoded content."""
    headers = tuple((k.lower(), str(v)) for k, v in part.items() if k.lower() not in UNCOMPARED)
    kind = (part.get_content_type(), part.get_content_charset())
    if part.is_multipart():
        return headers, kind, tuple(message_shape(p) for p in part.iter_parts())
    return headers, kind, part.get_content()


def run_ledger(record: dict[str, Any], *, readonly: bool) -> Any:
    """The cost ledger a run recorded in its run.json, opened, or None when it is not there."""
    path = record.get("ledger")
    if not path or not Path(path).is_file():
        return None
    from cpo.accounting.ledger import Ledger

    return Ledger(path, readonly=readonly)


def recorded_heads(run_dir: Path) -> tuple[str, dict[str, str | None]]:
    """The run id and the audit heads recorded for it in run.json and (if it can be read) the ledger."""
    record = read_record(run_dir, "cannot verify")
    run_id = run_id_of(run_dir, record)
    heads: dict[str, str | None] = {"run.json": record.get("audit_head")}
    named = record.get("ledger")
    beside = run_dir.parent / "ledger.sqlite"
    if named and not Path(named).is_file():
        heads[f"the cost ledger {named} (missing)"] = MISSING
    elif named:
        heads["the cost ledger"] = _ledger_head(Path(named), run_id) or (MISSING if record.get("audit_head") else None)
    # The ledger beside the run is read whatever run.json names: run.json can be edited to point elsewhere.
    if beside.is_file() and not (named and Path(named).resolve() == beside.resolve()):
        heads["the cost ledger beside the run"] = _ledger_head(beside, run_id)
    return run_id, heads


def _ledger_head(path: Path, run_id: str) -> str | None:
    book = run_ledger({"ledger": str(path)}, readonly=True)
    if book is None:
        return None
    try:
        head: str | None = book.audit_head(run_id)
    finally:
        book.close()
    return head
