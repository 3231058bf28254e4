"""The labelled sendability sets (tests/sendable/*.json): real-model emails, each labelled by reading against
docs/sendable.md, scored by today's rules on every run.

The goal (issue 19): of the emails cpo calls valid, the share a reader would send (precision) is 1.00 and
never below 0.97; the share of sendable emails cpo calls valid (recall) is reported beside it. Both are
recomputed from the stored texts and labels, so a rule change that lets a rejected email through fails here.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETS = sorted((ROOT / "tests" / "sendable").glob("*.json"))
PRECISION_GOAL = 0.97


def _scorer():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("sendable_set", ROOT / "scripts" / "sendable_set.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sendable_set"] = module
    spec.loader.exec_module(module)
    return module


SCORER = _scorer()


@pytest.mark.parametrize("path", SETS, ids=[p.stem for p in SETS])
def test_every_email_in_the_set_is_labelled_with_a_reason(path: Path) -> None:
    entries = json.loads(path.read_text(encoding="utf-8"))
    assert len({e["id"] for e in entries}) == len(entries)
    for entry in entries:
        assert entry["sendable"] in (True, False), entry["id"]
        assert entry["why"].strip(), entry["id"]
        assert entry["model"] and entry["body"] and entry["request"]["offer"]


# Known shortfalls, kept visible (strict: it fails the day the rules meet the goal, so this is updated).
# The first held-out batch (heldout.json) had 2 valid emails, both rejected by the reading (precision 0.00);
# one of them led to the offer_condition rule, so that batch no longer measures the rules: heldout-2 does.
# The two guided sets are the runs made while guided composition was built, kept as the reading found them:
# what made their valid emails unsendable is in how they were made, not in a rule a validator can decide
# (the model's own framing sentences; then an offer restated by a snippet, a price for a membership the offer
# does not name, tone lines echoing each other, closing lines stacked as padding). The assembly no longer
# makes those (tests/test_guided.py). acceptance-2's first two runs were all sendable; its next two and heldout-3,
# made after the restatement rule, showed that rule leaving out the sentence that prices the plans, and an
# offer's clause said again; fixed in the assembly, and measured again on acceptance-3, made after.
SHORT_OF_GOAL: dict[str, str] = {
    "guided-first-form": "the small model's own opening and closing sentences: 10 valid, 0 sendable",
    "guided": "restated offers, a price left out or for an unnamed membership, echoing lines: 36 valid, 18 sendable",
    "acceptance-2": "its second two runs lost the plans' price sentence as a restatement: 48 valid, 32 sendable",
    "heldout-3": "the plans' price sentence left out; an offer's clause said again: 16 valid, 0 sendable",
    "guided-current": "an offer naming no membership, beside membership snippets: 28 valid, 24 sendable",
    "heldout-5": "a sentence saying the offer again with a detail added: 24 valid, 8 sendable",
}


def _scored(paths: list[Path]) -> list[object]:
    return [
        pytest.param(p, marks=pytest.mark.xfail(strict=True, reason=SHORT_OF_GOAL[p.stem]))
        if p.stem in SHORT_OF_GOAL
        else p
        for p in paths
    ]


@pytest.mark.parametrize("path", _scored(SETS), ids=[p.stem for p in SETS])
def test_what_cpo_calls_valid_a_reader_would_send(path: Path) -> None:
    f = SCORER.figures(path)
    print(
        f"{path.name}: {f.labelled} labelled, {f.sendable} sendable by reading, {f.valid} valid by cpo; "
        f"precision {f.precision:.2f}, recall {f.recall:.2f}"
    )
    assert f.labelled >= 20
    if f.valid:
        assert f.precision >= PRECISION_GOAL, f"valid but a reader would not send: {f.valid_but_rejected}"
    else:
        assert math.isnan(f.precision)


def test_the_sets_hold_at_least_80_labelled_and_20_held_out_emails() -> None:
    sizes = {p.stem: len(json.loads(p.read_text(encoding="utf-8"))) for p in SETS}
    assert sizes.get("labelled", 0) >= 80
    assert sizes.get("heldout", 0) >= 20 and sizes.get("heldout-2", 0) >= 20
