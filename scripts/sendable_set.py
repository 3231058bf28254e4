"""Build and score the labelled sendability sets (issue 19): real-model emails a person labels by reading.

`extract` takes result files of `benchmarks/real_model.py --set NAME` and appends every email in them (its
subject and body as sent, its citations and the request it answered, rebuilt from the set's segments file)
to a labels file, unlabelled (`"sendable": null`). A person then reads each email against
`docs/sendable.md` and writes `sendable` (true/false) and `why`. `score` validates each stored email with
today's rules and prints, against the labels, the precision (of the emails cpo calls valid, the share
labelled sendable) and the recall (of the sendable ones, the share cpo calls valid).

Usage: python scripts/sendable_set.py extract RESULT.json [...] --out tests/sendable/labelled.json
       python scripts/sendable_set.py score tests/sendable/labelled.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def extract(results: list[Path], out: Path) -> int:
    from cpo.email.content import ContentBundle

    existing: list[dict[str, Any]] = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else []
    seen = {e["id"] for e in existing}
    added = 0
    for path in results:
        report = json.loads(path.read_text(encoding="utf-8"))
        settings = report["settings"]
        segment_set = settings.get("segments", "shipped")
        segments = None if segment_set == "shipped" else ROOT / "benchmarks" / "segments" / f"{segment_set}.json"
        bundle = ContentBundle.load(segments_file=segments)
        stage = "first draft" if settings["max_repairs"] == 0 else f"after up to {settings['max_repairs']} repairs"
        for email in report["emails"]:
            variant = email["variant"]
            key = f"{path.stem}/{variant['segment']}/{variant['tone']}"
            if key in seen:
                continue
            request = bundle.request(variant["segment"], variant["tone"])
            existing.append(
                {
                    "id": key,
                    "stage": stage,
                    "model": settings["model"],
                    "seed": settings["seed"],
                    "request": json.loads(request.model_dump_json()),
                    "subject": variant["subject"],
                    "body": variant["body"],
                    "citations": [c["id"] for c in variant["citations"]],
                    "valid_when_made": variant["validation"]["valid"],
                    "sendable": None,
                    "why": "",
                }
            )
            added += 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(existing, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{out}: {added} emails added, {len(existing)} in all")
    return 0


def verdicts(path: Path) -> list[tuple[dict[str, Any], bool]]:
    """Each labelled email and whether today's rules call it valid."""
    from cpo.core.models import EmailDraft, EmailRequest
    from cpo.email.validation import validate_draft

    out = []
    for entry in json.loads(path.read_text(encoding="utf-8")):
        if entry["sendable"] is None:
            continue
        draft = EmailDraft(subject=entry["subject"], body=entry["body"], citations=entry["citations"])
        report = validate_draft(draft, EmailRequest.model_validate(entry["request"]))
        out.append((entry, report.valid))
    return out


@dataclass(frozen=True)
class Figures:
    """A labelled set scored by today's rules."""

    labelled: int
    sendable: int  # by reading
    valid: int  # by cpo's rules
    valid_and_sendable: int
    valid_but_rejected: list[str]  # ids: what the reading rejects and cpo would send

    @property
    def precision(self) -> float:
        """Of the emails cpo calls valid, the share sendable (nan when cpo calls none valid)."""
        return self.valid_and_sendable / self.valid if self.valid else float("nan")

    @property
    def recall(self) -> float:
        """Of the sendable emails, the share cpo calls valid (nan when none is sendable)."""
        return self.valid_and_sendable / self.sendable if self.sendable else float("nan")


def figures(path: Path) -> Figures:
    found = verdicts(path)
    return Figures(
        labelled=len(found),
        sendable=sum(bool(e["sendable"]) for e, _ in found),
        valid=sum(ok for _, ok in found),
        valid_and_sendable=sum(ok and bool(e["sendable"]) for e, ok in found),
        valid_but_rejected=[e["id"] for e, ok in found if ok and not e["sendable"]],
    )


def score(path: Path) -> int:
    f = figures(path)
    print(
        f"{path}: {f.labelled} labelled, {f.sendable} sendable by reading, {f.valid} valid by cpo "
        f"({f.valid_and_sendable} of them sendable); precision {f.precision:.2f}, recall {f.recall:.2f}"
    )
    for key in f.valid_but_rejected:
        print(f"  valid but not sendable: {key}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("extract")
    ex.add_argument("results", type=Path, nargs="+")
    ex.add_argument("--out", type=Path, required=True)
    sc = sub.add_parser("score")
    sc.add_argument("labels", type=Path)
    args = parser.parse_args()
    if args.command == "extract":
        return extract(args.results, args.out)
    return score(args.labels)


if __name__ == "__main__":
    sys.exit(main())
