"""The files a run exports, bound in its audit chain: the send list and the assignments are what an email
platform imports, so their sha256 go into the chain when they are written (rows with backend `export`), and
`cpo audit verify` (and `cpo export`) compare them with the files as they are."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cpo.campaign.agents.export import ASSIGNMENTS_FILE, SEND_LIST_FILE
from cpo.campaign.audit import EXPORT, AuditLog, read_rows
from cpo.campaign.rundir import AUDIT_FILE

BOUND_FILES = (SEND_LIST_FILE, ASSIGNMENTS_FILE)


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bind_files(run_dir: Path, audit: AuditLog, names: tuple[str, ...] = BOUND_FILES) -> bool:
    """Append an audit row binding each file's sha256 (the send list, the assignments), unless the chain's last
    row for it holds that hash already; returns whether a row was added. `cpo audit verify` then compares."""
    bound = _bound(audit.path)
    added = False
    for name in names:
        path = run_dir / name
        if path.is_file() and bound.get(name) != (digest := file_hash(path)):
            audit.append(variant_id=name, backend=EXPORT, decision="written", content_sha256=digest)
            added = True
    return added


def unbound_files(run_dir: Path) -> list[str]:
    """Why each file the run bound in its audit (`bind_files`) is not what it wrote: one line each. A run made
    before files were bound has none to compare."""
    bound = _bound(run_dir / AUDIT_FILE)
    problems = []
    for name, digest in bound.items():
        path = run_dir / name
        if not path.is_file():
            problems.append(f"{name} is missing, though the audit binds the one the run wrote")
        elif file_hash(path) != digest:
            problems.append(f"{name} is not the file the run wrote and its audit binds (edited?)")
    return problems


def _bound(path: Path) -> dict[str, str]:
    """{file name: the sha256 the chain's last `export` row for it holds}."""
    return {
        r["variant_id"]: r["content_sha256"]
        for r in (read_rows(path) if path.is_file() else [])
        if r["backend"] == EXPORT
    }
