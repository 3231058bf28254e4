"""How a resumed run avoids paying twice: every email is kept on disk, by its request, the moment it is paid for.

A request's key is a hash of everything the email is made from (segment summary, offer, tone, snippets,
sender, vocabulary), so the same request finds the same kept email. LangGraph's checkpoint can miss the
writes of tasks that finish at the instant another task fails (measured: up to 8 of 17 finished emails
re-ran on resume); `emails/<key>.json` is written before the task returns, after the email's calls are
committed to the cost ledger, so a resumed run finds every email that was paid for.

A kept email is a file anyone can edit, or one an older cpo wrote under looser rules: before it is used
again it is checked by today's rules (`rechecked`), the chain's own final check (`validate_draft`). One
that fails is kept as it is paid for, marked invalid with the reasons: it is not sent, and not paid for
again (the screen then audits its content as for any email).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cpo.core.files import write_atomically
from cpo.core.models import EmailDraft, EmailRequest, EmailVariant, ValidationIssue, Vocabulary
from cpo.email.validation import ValidationLimits, validate_draft

EMAILS = "emails"
# A kept draft whose email stopped for one of these reasons is not final: a resumed run generates it again.
UNFINISHED = frozenset({"budget", "interrupted"})


def request_key(request: EmailRequest) -> str:
    """A request's identity: the same segment summary, offer, tone, snippets, sender and vocabulary give the same key.

    The default vocabulary, and an audience that says no more than the segment's tier, are left out of the
    hash, so a request hashes exactly as it did before requests carried them: run directories written by
    earlier versions resume without generating anything again, except a segment that mixes tiers, whose
    request (no tier in its profile) is not the one its old email was written for.
    """
    # The sender's postal address is in the footer cpo adds, not in anything the model is asked: not hashed.
    exclude: dict[str, Any] = {"sender": {"postal_address"}}
    if request.vocabulary == Vocabulary():
        exclude["vocabulary"] = True
    tier = request.segment.features.get("tier")
    if request.segment.audience in ((), (tier,)):  # says no more than the tier feature: hashed as before
        exclude["segment"] = {"audience"}
    dumped = request.model_dump_json(exclude=exclude or None)
    return hashlib.sha256(dumped.encode()).hexdigest()[:20]


def is_final(variant: EmailVariant) -> bool:
    """Kept for good, or to be generated again on resume (its email was stopped by the budget or Ctrl-C)."""
    return UNFINISHED.isdisjoint(variant.validation.codes)


RECHECKED = "kept_recheck"


def rechecked(data: dict[str, Any], request: EmailRequest, limits: ValidationLimits) -> dict[str, Any]:
    """A kept email as today's rules see it: as it was when it passes them, else marked invalid with what
    they find (added to what was recorded). A recheck only takes validity away: what the rules cannot
    recompute without a model call (a judge's verdict, a failed repair) stays as recorded."""
    variant = EmailVariant.model_validate(data)
    draft = EmailDraft(
        subject=variant.subject,
        preheader=variant.preheader,
        body=variant.body,
        citations=[c.id for c in variant.citations],
    )
    today = validate_draft(draft, request, limits)  # the body as sent: cpo's greeting and sign-off included
    if today.valid:
        return data
    recorded = variant.validation
    note = ValidationIssue(
        code=RECHECKED,
        message="a kept email that fails today's checks on resume (edited on disk, or made under looser rules)",
    )
    issues = [*recorded.issues, *(i for i in today.issues if i not in recorded.issues)]
    report = today.model_copy(update={"valid": False, "issues": [*issues, *([] if not recorded.valid else [note])]})
    return variant.model_copy(update={"validation": report}).model_dump(mode="json")


class KeptEmails:
    """The `emails/` folder of a run directory: one JSON file per paid email, named by its request key."""

    def __init__(self, run_dir: Path) -> None:
        self.folder = Path(run_dir) / EMAILS

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The email kept for this request, or None."""
        path = self.path(key)
        if not path.is_file():
            return None
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data

    def keep(self, key: str, data: dict[str, Any]) -> None:
        """Write one email (call only once its costs are committed to the ledger)."""
        write_atomically(self.path(key), json.dumps(data))

    def all(self) -> dict[str, dict[str, Any]]:
        """Every kept email, by request key."""
        return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(self.folder.glob("*.json"))}

    def exists(self) -> bool:
        return self.folder.exists()
