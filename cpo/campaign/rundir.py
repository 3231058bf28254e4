"""The run directory: the names of its files, and `run.json`, which this module alone reads and writes.

`run.json` records a run's inputs and their sha256 fingerprint, its options, versions, model, session
and root run ids, stage seconds, status and exit code, and the safety audit's head. `--resume` takes
the inputs and options from it and refuses inputs that changed since; `cpo audit verify` and
`cpo review` read the run's id, ledger and audit head from it. `locked` keeps a run directory to one
cpo process at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cpo.campaign.agents.export import ASSIGNMENTS_FILE, SEGMENTS_FILE, SEND_LIST_FILE, TEMPLATES_FILE
from cpo.campaign.agents.preview_page import PREVIEW_FILE
from cpo.campaign.campaign_file import Campaign, default_campaign_file, load_campaign
from cpo.campaign.state import Inputs
from cpo.core.errors import InputError
from cpo.core.files import write_atomically
from cpo.core.privacy import PRIVATE_UMASK, IdHasher

RUN_FILE = "run.json"
DATABASE = "customers.duckdb"
RETRIEVAL_FILE = "retrieval.json"
SCREENING_FILE = "screening.json"
REVIEW_FILE = "review.json"
VARIANTS_FILE = "variants.json"
COSTS_FILE = "costs.json"
LOG_FILE = "log.jsonl"
AUDIT_FILE = "safety_audit.csv"
LOCK_FILE = ".lock"  # held (flock) by the one cpo process working in the run directory; holds its pid
# What a finished run wrote, in the order `cpo run` lists them (the export agent names its own files).
OUTPUTS = (
    SEGMENTS_FILE,
    RETRIEVAL_FILE,
    VARIANTS_FILE,
    SCREENING_FILE,
    AUDIT_FILE,
    TEMPLATES_FILE,
    ASSIGNMENTS_FILE,
    SEND_LIST_FILE,
    PREVIEW_FILE,
    COSTS_FILE,
)
AUDIT_KEYS = ("audit_head", "audit_rows")
# A run directory holds customer names, ids and emails: only its owner may open it.
PRIVATE_DIR = 0o700


def make_run_dir(runs_dir: Path, name: str) -> Path:
    """Create a new run directory (0700) in `runs_dir` (created 0700 if missing); one line if either fails.

    The id key that hashes customer ids in the run's log is checked first, so a key other users can
    read is refused before any file is written.
    """
    IdHasher.for_installation()  # a ConfigError naming the key file, before the run writes anything
    run_dir = runs_dir / name
    try:
        runs_dir.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the runs directory {runs_dir}: {exc.strerror or exc}") from None
    try:
        run_dir.mkdir(mode=PRIVATE_DIR, exist_ok=False)
    except OSError as exc:
        raise InputError(f"cannot create the run directory {run_dir}: {exc.strerror or exc}") from None
    return run_dir


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir` for this process alone until the block ends: another cpo process in it is one line.

    An exclusive, non-blocking `flock` on `<run_dir>/.lock`, released by the kernel if the process dies,
    so a killed run never leaves it held. Where `fcntl` is missing (Windows) nothing is locked; a path
    that is not a directory is left to the command's own error.
    """
    try:
        import fcntl
    except ImportError:
        fcntl = None  # type: ignore[assignment]
    fd = None
    if fcntl is not None and run_dir.is_dir():
        try:
            fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise InputError(f"cannot lock {run_dir}: {exc.strerror or exc}") from None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 20, 0).decode("ascii", "replace").strip()
                pid = f" (pid {holder})" if holder.isdigit() else ""
                raise InputError(f"{run_dir} is in use by another cpo process{pid}; wait for it to finish") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def read_record(run_dir: Path, doing: str = "cannot resume") -> dict[str, Any]:
    """A run's run.json; a missing, unreadable or hand-broken file is one line starting with `doing`."""
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise InputError(f"{doing} {run_dir}: it has no {RUN_FILE} (not a cpo run directory)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{doing} {run_dir}: {RUN_FILE} is unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{doing} {run_dir}: {RUN_FILE} is not a JSON object")
    return data


def resumable_record(run_dir: Path) -> dict[str, Any]:
    """run.json of a run to resume, with what resuming needs; a file edited by hand is one line naming the key."""
    record = read_record(run_dir)
    inputs = record.get("inputs")
    missing = [k for k in ("inputs", "fingerprint", "session_id") if not record.get(k)]
    if not missing and isinstance(inputs, dict):
        missing = [f"inputs.{k}" for k in ("customers", "campaign", "suppress", "seed") if k not in inputs]
    elif not missing:
        missing = ["inputs"]
    if missing:
        raise InputError(f"cannot resume {run_dir}: {RUN_FILE} has no {missing[0]} (was it edited by hand?)")
    return record


def run_id_of(run_dir: Path, record: dict[str, Any]) -> str:
    """The run's id (the graph's thread id): as recorded, else the directory's name."""
    return str(record.get("run_id") or run_dir.name)


def record_run(run_dir: Path, inputs: Inputs, fingerprint: dict[str, str], **extra: Any) -> None:
    """Write run.json: the inputs, their fingerprint and whatever the caller adds (versions, model).

    The audit chain's head, recorded as screening and review append to it, is kept unless given.
    """
    path = run_dir / RUN_FILE
    kept = {}
    if path.is_file():
        old = read_record(run_dir, "cannot update")
        kept = {k: old[k] for k in AUDIT_KEYS if k in old}
    record = {"inputs": inputs, "fingerprint": fingerprint, **kept, **extra}
    write_atomically(path, json.dumps(record, indent=2))


def record_audit_head(run_dir: Path, head: str, rows: int, ledger: Any = None) -> None:
    """Put the audit chain's latest hash into run.json and, when given, the cost ledger: its two copies."""
    path = run_dir / RUN_FILE
    record = read_record(run_dir, "cannot update") if path.is_file() else {}
    record.update({"audit_head": head, "audit_rows": rows})
    write_atomically(path, json.dumps(record, indent=2))
    if ledger is not None:
        ledger.record_audit_head(run_id_of(run_dir, record), head, rows)


def read_json(run_dir: Path, name: str, default: Any = None) -> Any:
    """One of the run's JSON files (screening.json, review.json, variants.json), or `default` if absent."""
    path = run_dir / name
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is unreadable ({exc})") from None


def write_json(run_dir: Path, name: str, data: Any, *, end: str = "\n") -> None:
    """Replace one of the run's JSON files atomically: a reader or a kill -9 never sees half of it."""
    write_atomically(run_dir / name, json.dumps(data, indent=2, default=str) + end)


def input_fingerprint(inputs: Inputs, prompts_dir: Path | None = None, limits: Path | None = None) -> dict[str, str]:
    """sha256 of every input a campaign is built from: customers, campaign, rules, suppression, prompts, content,
    the safety policy (and the limits file, when one is given).

    `--resume` compares it with the run's `run.json` and refuses changed inputs: emails generated from
    the old ones would be mixed with new ones.
    """
    from cpo.campaign.agents.safety import default_policy_file
    from cpo.core.resources import bundled
    from cpo.email.content import default_content_dir
    from cpo.email.prompts import FILES

    campaign_path = Path(inputs["campaign"]) if inputs["campaign"] else None
    campaign = load_campaign(campaign_path)
    prompts = prompts_dir or bundled("prompts")
    files: dict[str, list[Path]] = {
        "customers": [Path(inputs["customers"])],
        "campaign": [campaign_path or default_campaign_file()],
        "rules": [campaign.rules],
        "suppress": [Path(inputs["suppress"])] if inputs["suppress"] else [],
        "prompts": [prompts / name for name in FILES if (prompts / name).is_file()],
        "content": sorted(default_content_dir().glob("*.md")),
        "safety_policy": [default_policy_file()],
    }
    if limits is not None:
        files["limits"] = [limits]
    out = {name: _digest(name, paths) for name, paths in files.items()}
    out["seed"] = str(inputs["seed"])
    return out


def _digest(name: str, paths: list[Path]) -> str:
    """One input's fingerprint: sha256 over each file's name and bytes, in order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        try:
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
        except OSError as exc:
            raise InputError(f"cannot read the {name} file {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def recorded_campaign(record: dict[str, Any], *, unchanged: bool = False) -> Campaign:
    """The campaign file a run recorded in its run.json, read relative to where the run started.

    `unchanged`: refuse (InputError, one line) a file whose fingerprint is no longer the one recorded."""
    name = record.get("inputs", {}).get("campaign")
    path = Path(record.get("cwd") or ".") / name if name else None
    if unchanged:
        recorded = record.get("fingerprint", {}).get("campaign")
        if recorded != _digest("campaign", [path or default_campaign_file()]):
            raise InputError(f"the campaign file {path or default_campaign_file()} changed since the run")
    return load_campaign(path)


def check_resume(run_dir: Path, inputs: Inputs, fingerprint: dict[str, str]) -> None:
    """Refuse to resume a run whose inputs changed (naming the first input that did) or whose log's id key
    other users can read; then close the directory to other users (0700) as a new run's is: a run made
    by an older cpo was left open to them."""
    recorded = read_record(run_dir).get("fingerprint", {})
    changed = [name for name in fingerprint if recorded.get(name) != fingerprint[name]]
    if changed:
        raise InputError(
            f"cannot resume {run_dir}: its {changed[0]} changed since the run started; start a new run instead"
        )
    IdHasher.for_installation()
    _close_to_others(run_dir)


def _close_to_others(run_dir: Path) -> None:
    """chmod 700 the run directory if group or others may enter it; its files become unreachable to them."""
    if os.name == "nt":
        return
    try:
        if run_dir.stat().st_mode & PRIVATE_UMASK:
            run_dir.chmod(PRIVATE_DIR)
    except OSError as exc:
        raise InputError(f"cannot make {run_dir} private (chmod 700): {exc.strerror or exc}") from None
