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
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from cpo.campaign.agents.columns import SEND_LIST_COLUMNS
from cpo.campaign.agents.export import (
    ADDRESS,
    ADDRESS_PROBLEMS,
    ASSIGNMENTS_FILE,
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
from cpo.campaign.audit import (
    content_hash,
    message_shape,
    parsed_message,
    review_rows,
    template_text,
    unbound_templates,
    unsendable_deliveries,
)
from cpo.campaign.file_binding import unbound_files
from cpo.campaign.mail.layout import LayoutError, html_part, text_part
from cpo.campaign.mail.platforms import PLATFORMS, Platform, TemplateCheckError, check_template
from cpo.campaign.rundir import AUDIT_FILE, RUN_FILE, read_json, read_record, recorded_campaign, run_id_of
from cpo.core.csvsafe import cell_values, safe_cell
from cpo.core.errors import InputError, first_line
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
    problems = [
        *unbound_templates(run_dir, templates, reviewed),
        *unsendable_deliveries(run_dir, templates),
        *unbound_files(run_dir),
    ]
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
    segments: dict[str, str] = {}
    if "segment" not in header and (run_dir / ASSIGNMENTS_FILE).is_file():
        with (run_dir / ASSIGNMENTS_FILE).open(newline="", encoding="utf-8") as handle:
            segments = {r["customer_id"]: r["segment"] for r in csv.DictReader(handle)}
    if platform.needs_email and not has_email:
        raise InputError(
            f"{platform.title} imports contacts by email address and the customer file had no email column: "
            "add one (email, E-mail Address, ...) and run again, or export for a platform keyed on an id"
        )
    source = {"id": "customer_id", "email": "email", "first_name": "first_name", "arm": "arm",
              "variant_id": "variant_id", "segment": "segment"}  # fmt: skip
    fields = [f for f in platform.columns if f != "email" or has_email]
    passed = [c for c in header if c not in SEND_LIST_COLUMNS]  # the campaign's audience_columns, as they are
    out, seen, left = [], set(), {name: 0 for name in ADDRESS_PROBLEMS.values()}
    for row in rows:
        if row.get("variant_id") not in sendable:
            continue
        if has_email:
            address = cell_values((row.get("email") or "").strip())[0]
            if not re.fullmatch(ADDRESS, address):
                left[ADDRESS_PROBLEMS[BAD_ADDRESS]] += 1
                continue
            if address.lower() in seen:
                left[ADDRESS_PROBLEMS[SHARED_ADDRESS]] += 1
                continue
            seen.add(address.lower())
        if "segment" not in header:  # a send list written before it had the segment: from the assignments
            row["segment"] = segments.get(row.get("customer_id") or "", "")
        # The id and the address as the customer file has them (the platform matches on them): without the `'` a
        # send list puts before a value a spreadsheet would run; names and listed columns keep it.
        exact = {f: cell_values(row.get(source[f]) or "")[0] for f in ("id", "email")}
        out.append([*(exact.get(f, row.get(source[f]) or "") for f in fields), *(row.get(c) or "" for c in passed)])
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
    folder = out or default_folder(run_dir, platform.name)
    _check_target(folder, platform)
    made = not folder.parent.exists()  # removed again if the export fails: a refused export leaves nothing
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    except OSError as exc:
        raise InputError(f"cannot write to {folder.parent}: {exc.strerror or exc}") from None
    try:
        done = _build(run_dir, platform, templates, building)
        _replace_folder(building, folder)
    except OSError as exc:
        raise InputError(f"cannot write the export to {folder}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(building, ignore_errors=True)
        if made and folder.parent.is_dir() and not any(folder.parent.iterdir()):
            folder.parent.rmdir()
    return PlatformExport(platform, folder, *done)


def _build(
    run_dir: Path, platform: Platform, templates: list[dict[str, Any]], building: Path
) -> tuple[int, int, dict[str, int], bool]:
    """Write a platform's export into the empty folder `building`: (templates, audience rows, rows left off by
    reason, per-customer). The same inputs write the same bytes (`export_problems` relies on it)."""
    record = read_record(run_dir, "cannot export")
    sendable = [t for t in templates if t.get("sendable")]
    if not sendable:
        raise InputError(f"{run_dir}: no variant is sendable: nothing to export")
    header, rows, left = _audience(run_dir, platform, {str(t["variant_id"]) for t in sendable})
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
    return len(listed), len(rows), left, personal


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


def _export_platform(folder: Path) -> str | None:
    """The platform of the export this folder holds (its manifest names a platform and a run, and nothing else
    is there), or None when it is not one `cpo export` wrote."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ours = {MANIFEST, AUDIENCE, TEMPLATES_DIR, MESSAGES, MESSAGES_DIR}
    if not isinstance(manifest, dict) or manifest.get("platform") not in PLATFORMS or not manifest.get("run_id"):
        return None
    return str(manifest["platform"]) if {p.name for p in folder.iterdir()} <= ours else None


def _check_target(folder: Path, platform: Platform) -> None:
    """Refuse, in one line and before any work, an --out that is not an empty folder or an export of this platform."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file, not a folder: choose another --out")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    named = _export_platform(folder)
    if named is None:
        raise InputError(f"{folder} is not empty and not a cpo export: choose another --out (nothing was changed)")
    if named != platform.name:
        raise InputError(f"{folder} holds the {named} export: choose another --out for {platform.name}")


def _replace_folder(built: Path, folder: Path) -> None:
    """Put a finished export in place of the one before it (renamed to a fresh name first, removed after)."""
    old = None
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
        os.replace(folder, old / folder.name)
    os.replace(built, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_problems(run_dir: Path, templates: list[dict[str, Any]]) -> tuple[list[str], int]:
    """Why each platform export under `RUN_DIR/exports/` is not what `cpo export` writes from the audited
    templates and send list, one line each; and how many exports there are. Each export is written again into a
    scratch folder and compared file by file: the same files, the same bytes (a message's `.eml` as a reader
    sees it: its `Date` and `Message-ID` are the sending's)."""
    folders = (
        sorted(p.parent for p in (run_dir / EXPORTS).glob(f"*/{MANIFEST}")) if (run_dir / EXPORTS).is_dir() else []
    )
    problems: list[str] = []
    for folder in folders:
        where = folder.relative_to(run_dir)
        try:
            platform = platform_named(str(json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("platform")))
        except (OSError, ValueError, AttributeError, InputError) as exc:
            problems.append(f"{where}/{MANIFEST} cannot be read: {first_line(exc)}")
            continue
        with tempfile.TemporaryDirectory(prefix=".cpo-verify-") as scratch:
            try:
                _build(run_dir, platform, templates, Path(scratch))
            except InputError as exc:
                problems.append(f"{where}: cannot be made again: {first_line(exc)}")
                continue
            differ = _differences(Path(scratch), folder)
        problems += [f"{where}: {d} is not what cpo export writes (edited?)" for d in differ[:3]]
    return problems, len(folders)


def _differences(expected: Path, found: Path) -> list[str]:
    """The relative paths whose presence or content differ between two export folders."""
    want = {p.relative_to(expected).as_posix() for p in expected.rglob("*") if p.is_file()}
    have = {p.relative_to(found).as_posix() for p in found.rglob("*") if p.is_file()}
    out = sorted(want ^ have)
    for name in sorted(want & have):
        a, b = (expected / name).read_bytes(), (found / name).read_bytes()
        if name.endswith(".eml") and a != b:
            try:
                same = message_shape(parsed_message(a)) == message_shape(parsed_message(b))
            except Exception:  # a file that is not a well-formed email differs, whatever the parser raised
                same = False
            if not same:
                out.append(name)
        elif a != b:
            out.append(name)
    return out
