"""`cpo export RUN_DIR --platform NAME`: a finished run's sendable emails and audience, as one platform imports them.

Written into `RUN_DIR/exports/<platform>/` (or `--out DIR`):
- `templates/<variant id>.html` and `.txt`: each sendable variant's HTML and text parts, merge tags in the
  platform's syntax (`cpo.campaign.mail.platforms`), each rendered by that platform's engine before it is written;
- `audience.csv`: one row per customer on the send list, in the columns the platform's import expects (its id
  or email, first name, and the arm, variant and segment as custom attributes); addresses checked for shape and
  de-duplicated (case aside) again, the rows left off counted;
- `manifest.json`: every template (variant id, segment, arm, subject, preheader, files, CTA link, the audit's
  content hash) and the audience file.

Nothing is written unless the run's templates and send list are what its audit passed (`cpo audit verify`'s
checks) and every template passes its engine check; the folder is built beside its place and renamed into it,
so a failed export leaves the previous one as it was. `cpo audit verify` checks the exports it finds.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from cpo.campaign.agents.export import (
    ADDRESS,
    ADDRESS_PROBLEMS,
    BAD_ADDRESS,
    PLAIN_ID,
    SEND_LIST_FILE,
    SHARED_ADDRESS,
    TEMPLATES_FILE,
    message_from_template,
    preview_name,
    preview_values,
    rendered_message,
)
from cpo.campaign.audit import content_hash, review_rows, template_text, unbound_templates, unsendable_deliveries
from cpo.campaign.mail.layout import LayoutError, html_part, text_part
from cpo.campaign.mail.platforms import PLATFORMS, Platform, TemplateCheckError, check_template
from cpo.campaign.rundir import AUDIT_FILE, RUN_FILE, read_json, read_record, recorded_campaign, run_id_of
from cpo.core.csvsafe import safe_cell
from cpo.core.errors import InputError
from cpo.core.files import write_atomically

EXPORTS = "exports"
MANIFEST = "manifest.json"
AUDIENCE = "audience.csv"
TEMPLATES_DIR = "templates"
MESSAGES, MESSAGES_DIR = "messages.csv", "messages"
PERSONAL_SENDING = (
    "the platform's transactional API, one message per customer (a campaign template cannot carry a body per recipient)"
)
ENGINES = {"liquid": "python-liquid", "handlebars": "pybars3"}
OWN_COLUMNS = ("customer_id", "email", "arm", "variant_id", "first_name", "segment", "source")  # send_list.csv's


@dataclass(frozen=True)
class PlatformExport:
    platform: Platform
    folder: Path
    templates: int
    audience: int
    left_off: dict[str, int]
    per_customer: bool = False


def default_folder(run_dir: Path, platform: str) -> Path:
    return run_dir / EXPORTS / platform


def platform_named(name: str) -> Platform:
    if name not in PLATFORMS:
        raise InputError(f"unknown platform {name!r}; choose one of {', '.join(PLATFORMS)}")
    return PLATFORMS[name]


def _engine(platform: Platform) -> str:
    if platform.syntax == "mailchimp":
        return "Mailchimp's documented merge tags (a filler for the ones used)"
    package = ENGINES[platform.syntax]
    try:
        return f"{package} {version(package)}"
    except PackageNotFoundError:
        return package


def _audited_templates(run_dir: Path) -> list[dict[str, Any]]:
    """The run's templates, refused unless they (and the send list) are what its audit passed."""
    if not (run_dir / RUN_FILE).is_file():
        raise InputError(f"{run_dir} has no {RUN_FILE}: not a cpo run directory")
    if not (run_dir / TEMPLATES_FILE).is_file() or not (run_dir / SEND_LIST_FILE).is_file():
        raise InputError(f"{run_dir} has no {TEMPLATES_FILE} and {SEND_LIST_FILE}: the run has not exported yet")
    try:
        templates: list[dict[str, Any]] = read_json(run_dir, TEMPLATES_FILE, [])
    except ValueError as exc:
        raise InputError(f"{run_dir / TEMPLATES_FILE} cannot be read: {exc}") from None
    flagged = bool(read_record(run_dir, "cannot export").get("inputs", {}).get("review"))
    reviewed = flagged or bool(review_rows(run_dir / AUDIT_FILE))
    problems = unbound_templates(run_dir, templates, reviewed) + unsendable_deliveries(run_dir, templates)
    if problems:
        raise InputError(f"{run_dir}: {problems[0]}; nothing exported (cpo audit verify {run_dir} says more)")
    return templates


def _audience(
    run_dir: Path, platform: Platform, sendable: set[str]
) -> tuple[list[str], list[list[str]], dict[str, int]]:
    """The audience file's header and rows from the send list, and the rows left off for their address."""
    with (run_dir / SEND_LIST_FILE).open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        rows = list(reader)
    has_email = "email" in header
    if platform.needs_email and not has_email:
        raise InputError(
            f"{platform.title} imports contacts by email address and the customer file had no email column: "
            "add one (email, E-mail Address, ...) and run again, or export for a platform keyed on an id"
        )
    source = {"id": "customer_id", "email": "email", "first_name": "first_name", "arm": "arm",
              "variant_id": "variant_id", "segment": "segment"}  # fmt: skip
    fields = [f for f in platform.columns if f != "email" or has_email]
    passed = [c for c in header if c not in OWN_COLUMNS]  # the campaign's audience_columns, as they are
    out, seen, left = [], set(), {name: 0 for name in ADDRESS_PROBLEMS.values()}
    for row in rows:
        if row.get("variant_id") not in sendable:
            continue
        if has_email:
            address = (row.get("email") or "").strip()
            if not re.fullmatch(ADDRESS, address):
                left[ADDRESS_PROBLEMS[BAD_ADDRESS]] += 1
                continue
            if address.lower() in seen:
                left[ADDRESS_PROBLEMS[SHARED_ADDRESS]] += 1
                continue
            seen.add(address.lower())
        out.append([*(row.get(source[f]) or "" for f in fields), *(row.get(c) or "" for c in passed)])
    return [*(platform.columns[f] for f in fields), *passed], out, {k: n for k, n in left.items() if n}


def platform_files(platform: Platform, template: dict[str, Any]) -> tuple[str, str]:
    """(HTML, text) of one template in a platform's syntax, each checked by the platform's engine."""
    message = message_from_template(template)
    try:
        page, text = html_part(message, platform.merge), text_part(message, platform.merge)
        check_template(platform, message, page, text)
    except (LayoutError, TemplateCheckError) as exc:
        raise InputError(f"variant {template.get('variant_id')}: not exported for {platform.title}: {exc}") from None
    return page, text


def export_platform(run_dir: Path, name: str, out: Path | None = None) -> PlatformExport:
    """Write one platform's export of a finished run (see the module docstring); returns what it wrote."""
    platform = platform_named(name)
    templates = _audited_templates(run_dir)
    record = read_record(run_dir, "cannot export")
    sendable = [t for t in templates if t.get("sendable")]
    if not sendable:
        raise InputError(f"{run_dir}: no variant is sendable: nothing to export")
    folder = out or default_folder(run_dir, platform.name)
    header, rows, left = _audience(run_dir, platform, {str(t["variant_id"]) for t in sendable})
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        (building / TEMPLATES_DIR).mkdir()
        listed = []
        for t in sendable:
            vid = str(t["variant_id"])
            if not PLAIN_ID.fullmatch(vid):
                raise InputError(f"variant id {vid[:40]!r} is not a safe file name; nothing exported")
            page, text = platform_files(platform, t)
            html_file, text_file = f"{TEMPLATES_DIR}/{vid}.html", f"{TEMPLATES_DIR}/{vid}.txt"
            write_atomically(building / html_file, page)
            write_atomically(building / text_file, text)
            listed.append({
                "variant_id": vid,
                "segment": t.get("segment"),
                "arm": t.get("arm"),
                "subject": t.get("subject"),
                "preheader": t.get("preheader") or "",
                "html_file": html_file,
                "text_file": text_file,
                "cta_url": (t.get("cta") or {}).get("url", ""),
                "content_sha256": content_hash(template_text(t)),
                "html_sha256": hashlib.sha256(page.encode("utf-8")).hexdigest(),
                "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            })  # fmt: skip
        with (building / AUDIENCE).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
        personal = bool(record.get("inputs", {}).get("per_customer"))
        messages = _write_messages(run_dir, building, record, {str(t["variant_id"]): t for t in sendable}, listed)
        manifest = {
            "platform": platform.name,
            "title": platform.title,
            "run_id": run_id_of(run_dir, record),
            "syntax": platform.syntax,
            "checked_with": _engine(platform),
            "templates": listed,
            "audience": {"file": AUDIENCE, "rows": len(rows), "columns": header, "left_off": left},
            "mode": "per_customer" if personal else "segments",
        }
        if personal:
            manifest["messages"] = {"file": MESSAGES, "rows": messages, "send_with": PERSONAL_SENDING}
        write_atomically(building / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        _replace_folder(building, folder)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return PlatformExport(platform, folder, len(listed), len(rows), left, personal)


def _write_messages(
    run_dir: Path, building: Path, record: dict[str, Any], by_id: dict[str, dict[str, Any]], listed: list[Any]
) -> int:
    """--per-customer runs: each customer's own email rendered (`messages/<id>.eml`) and `messages.csv` (customer,
    address, variant, subject, preheader, its template files and the .eml): a campaign template cannot carry a
    body per recipient, so these are sent one by one through the platform's transactional API."""
    if not record.get("inputs", {}).get("per_customer"):
        return 0
    campaign = recorded_campaign(record, unchanged=True)
    files = {item["variant_id"]: item for item in listed}
    (building / MESSAGES_DIR).mkdir()
    with (run_dir / SEND_LIST_FILE).open(newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("variant_id") in by_id]
    with (building / MESSAGES).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["customer_id", "email", "variant_id", "subject", "preheader", "html_file", "text_file", "eml"])
        taken: set[str] = set()
        for row in rows:
            vid, template = str(row["variant_id"]), by_id[str(row["variant_id"])]
            name = preview_name(row["customer_id"])
            if name.casefold() in taken:  # ids that differ only in case: one file each on any disk
                name = preview_name(row["customer_id"], whole_hash=True)
            taken.add(name.casefold())
            eml = f"{MESSAGES_DIR}/{name}"
            values = preview_values(row.get("first_name") or "", campaign)
            message = rendered_message(template, campaign, values, to=row.get("email") or "")
            write_atomically(building / eml, bytes(message))
            writer.writerow([row["customer_id"], row.get("email") or "", vid, safe_cell(str(template["subject"])),
                             safe_cell(str(template.get("preheader") or "")), files[vid]["html_file"],
                             files[vid]["text_file"], eml])  # fmt: skip
    return len(rows)


def _replace_folder(built: Path, folder: Path) -> None:
    """Put a finished export in place of the one before it (renamed away first, removed after)."""
    old = None
    if folder.exists():
        if not (folder / MANIFEST).is_file() and any(folder.iterdir()):
            raise InputError(f"{folder} exists and is not a cpo export: choose another --out")
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(built, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_problems(run_dir: Path, templates: list[dict[str, Any]]) -> tuple[list[str], int]:
    """Why each platform export under `RUN_DIR/exports/` is not what `cpo export` writes from the audited
    templates, one line each; and how many exports there are. Each template file is made again and compared."""
    by_id = {str(t.get("variant_id")): t for t in templates}
    manifests = sorted((run_dir / EXPORTS).glob(f"*/{MANIFEST}")) if (run_dir / EXPORTS).is_dir() else []
    problems: list[str] = []
    for path in manifests:
        where = path.parent.relative_to(run_dir)
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            platform = platform_named(str(manifest.get("platform")))
        except (OSError, ValueError, InputError) as exc:
            problems.append(f"{where}/{MANIFEST} cannot be read: {exc}")
            continue
        for item in manifest.get("templates", []):
            vid = str(item.get("variant_id"))
            template = by_id.get(vid)
            if template is None or not template.get("sendable"):
                problems.append(f"{where}: variant {vid} is exported but not sendable in {TEMPLATES_FILE}")
                continue
            if item.get("content_sha256") != content_hash(template_text(template)):
                problems.append(f"{where}: variant {vid} is not the content the audit passed")
                continue
            try:
                page, text = platform_files(platform, template)
                shown = [(path.parent / str(item[k])).read_text(encoding="utf-8") for k in ("html_file", "text_file")]
            except (InputError, OSError, KeyError) as exc:
                problems.append(f"{where}: variant {vid}: {exc}")
                continue
            if shown != [page, text]:
                problems.append(f"{where}: variant {vid}'s template files are not what cpo export writes (edited?)")
        audience = path.parent / str((manifest.get("audience") or {}).get("file", AUDIENCE))
        if audience.is_file():
            columns = {v: k for k, v in platform.columns.items()}
            with audience.open(newline="", encoding="utf-8") as handle:
                for line, row in enumerate(csv.DictReader(handle), start=2):
                    variant = next((v for k, v in row.items() if columns.get(k) == "variant_id"), "")
                    if variant not in by_id or not by_id[variant].get("sendable"):
                        problems.append(f"{where}/{audience.name} line {line} sends variant {variant}, not sendable")
                        break
    return problems, len(manifests)
