"""The control cpo writes itself when the model's ends invalid: valid, readable, grounded prose for every shipped
and benchmark segment; in a campaign it is marked `source: template`, costs nothing, is sent to the control
arm, screened and audited, can be rejected in review, and a resumed run neither writes it twice nor pays for it.
"""

from __future__ import annotations

import csv
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from test_oversight import audit_rows, run_dir

from cpo.campaign import nodes
from cpo.campaign.agents.export import plan_delivery
from cpo.campaign.kept import request_key
from cpo.campaign.state import ordered_variants
from cpo.cli import main
from cpo.core.models import EmailDraft, EmailRequest
from cpo.core.resources import bundled
from cpo.email.content import build_request, load_segments, load_snippets
from cpo.email.grounding.text import sentences
from cpo.email.normalize import GREETING, body_as_sent, paragraphs, word_count
from cpo.email.template_control import CLOSING, FILLERS, OPENING, template_control, template_variant
from cpo.email.validation import ValidationLimits, validate_draft
from cpo.llm import offline

ROOT = Path(__file__).resolve().parent.parent
SEGMENT_FILES = [ROOT / "data" / "segments.json", *sorted((ROOT / "benchmarks" / "segments").glob("*.json"))]
CASES = [(f.stem, s) for f in SEGMENT_FILES for s in load_segments(f)]
LIMITS = ValidationLimits()
LAPSED_OFFER = "Come back with Northwind Plus"  # the shipped campaign's offer for its Lapsed segment


def control_request(segment: Any) -> EmailRequest:
    return build_request(segment, "control", load_snippets())


@pytest.mark.parametrize(("source", "segment"), CASES, ids=[f"{f}:{s.name}" for f, s in CASES])
def test_the_template_control_is_valid_prose_for_every_shipped_and_benchmark_segment(source: str, segment: Any) -> None:
    request = control_request(segment)
    draft = template_control(request)
    sent = EmailDraft(subject=draft.subject, body=body_as_sent(request, draft.body), citations=draft.citations)

    report = validate_draft(sent, request, LIMITS)

    assert report.valid, report.reasons
    assert LIMITS.body_min_words <= word_count(sent.body) <= LIMITS.body_max_words
    text = f"{draft.subject}\n{draft.body}"
    assert not re.search(r"[\[\]{}<>]|https?:|www\.", text)  # no snippet ids, placeholders, tags or links
    sources = " ".join(s.text for s in request.snippets)
    assert not any(s.id in text for s in request.snippets if s.id not in sources)  # "price-match" is also a word
    assert segment.name not in text and "control" not in text.lower()
    assert not GREETING.match(paragraphs(draft.body)[0].split(".")[0])  # cpo adds the greeting
    assert sent.body.count(request.sender.sign_off) == 1 and request.sender.sign_off not in draft.body
    assert draft.subject.count("!") <= 1 and not draft.subject.endswith(".") and len(draft.subject) <= 60
    # Grounded by construction: every sentence is the frame (no facts), the offer, or a cited snippet's own.
    frame = {OPENING, CLOSING, *FILLERS, request.offer}
    quoted = {w.strip() for s in request.snippets if s.id in draft.citations for _, w in sentences(s.text)}
    said = [w.strip() for _, w in sentences(draft.body)]
    assert set(said) <= frame | quoted
    assert len(said) == len(set(said))  # no sentence said twice
    assert len(draft.citations) >= LIMITS.min_citations


def test_a_sentence_that_is_not_true_for_every_reader_is_left_out() -> None:
    """Gold readers are not told Platinum's $50 credit; Platinum readers are not told Gold's $25, nor "Both tiers"
    without the sentence it points back to."""
    ids = ["plus-pricing", "gold-platinum-perks", "member-discount"]
    for tier, other in (("Gold", "$50"), ("Platinum", "$25")):
        segment = next(s for _, s in CASES if s.name == "High-Value Recent").model_copy(
            update={"features": {"tier": tier}, "snippets": ids}
        )
        body = template_control(control_request(segment)).body
        assert other not in body and "Both tiers" not in body
        assert f"{tier} members" in body  # its own tier's line is used


def test_the_template_variant_is_marked_template_and_costs_nothing() -> None:
    variant = template_variant(control_request(CASES[0][1]))

    assert variant.valid and variant.source == "template" and variant.tone == "control"
    assert variant.usage.total_tokens == 0 and variant.usage.calls == 0 and variant.usage.cost_usd == 0
    assert variant.attempts == 0 and variant.steps == [] and variant.model == "cpo-template"
    assert variant.to_row()["source"] == "template"


def test_an_offer_not_true_for_every_reader_gives_an_invalid_template_that_is_not_sent() -> None:
    """The offer is quoted as it is: one that speaks to Gold readers as Platinum cannot be made true, so the
    template fails the audience rule, with the reason, and nothing is sent."""
    offer = "Platinum members: join Northwind Plus and get a $50 welcome credit on your first order."
    segment = CASES[0][1].model_copy(update={"offer": offer, "features": {"tier": "Gold"}})
    variant = template_variant(control_request(segment))

    assert not variant.valid and "wrong_audience" in variant.validation.codes
    assert any("speaks to the reader as Platinum" in r for r in variant.validation.reasons)
    delivery = plan_delivery([variant], ("control", "urgent"), [segment.name])
    assert delivery.unsent == [segment.name] and set(delivery.plan.values()) == {""}


# In a campaign: the offline drafter's control for the Lapsed segment is made invalid, whatever it is asked.


@pytest.fixture
def invalid_lapsed_control(monkeypatch: pytest.MonkeyPatch) -> None:
    real = offline.draft_email

    def draft(brief: Any) -> dict[str, Any]:
        if brief.tone == "control" and brief.offer.startswith(LAPSED_OFFER):
            return {"subject": "Come back", "body": "See [Link] for details.", "citations": []}
        return real(brief)

    monkeypatch.setattr(offline, "draft_email", draft)


def variants_of(folder: Path) -> list[dict[str, Any]]:
    return list(json.loads((folder / "variants.json").read_text(encoding="utf-8")))


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def ledger_calls() -> int:
    with sqlite3.connect("runs/ledger.sqlite") as conn:
        return int(conn.execute("SELECT count(*) FROM calls").fetchone()[0])


def lapsed_controls(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the model's Lapsed control, the template controls written for Lapsed)."""
    lapsed = [v for v in variants_of(folder) if v["segment"] == "Lapsed" and v["tone"] == "control"]
    return next(v for v in lapsed if v["source"] != "template"), [v for v in lapsed if v["source"] == "template"]


@pytest.mark.usefixtures("invalid_lapsed_control")
def test_a_campaign_whose_model_control_is_invalid_sends_the_template_control(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run"]) == 0  # every customer gets an email
    out = capsys.readouterr().out
    folder = run_dir()
    model, templates = lapsed_controls(folder)

    assert not model["validation"]["valid"]
    assert len(templates) == 1 and templates[0]["validation"]["valid"]
    template = templates[0]["variant_id"]
    assert templates[0]["usage"]["total_tokens"] == 0 and templates[0]["steps"] == []
    assert json.loads((folder / "costs.json").read_text())["variants"][template]["total_tokens"] == 0
    exported = {t["variant_id"]: t for t in json.loads((folder / "templates.json").read_text(encoding="utf-8"))}
    assert exported[template]["source"] == "template" and exported[template]["sendable"] is True
    assert exported[model["variant_id"]]["sendable"] is False
    controls = [r for r in csv_rows(folder / "assignments.csv") if r["segment"] == "Lapsed" and r["arm"] == "control"]
    assert controls and {r["delivered_variant"] for r in controls} == {template}
    sent = {r["customer_id"]: r for r in csv_rows(folder / "send_list.csv")}
    assert all(sent[r["customer_id"]]["source"] == "template" for r in controls)
    assert {r["source"] for r in sent.values()} == {"offline", "template"}
    screened = [r for r in audit_rows(folder) if r["variant_id"] == template]
    assert [r["decision"] for r in screened] == ["pass"]  # screened and audited like any variant
    assert "cpo wrote one itself" in out and "Lapsed" in out
    assert main(["audit", "verify", str(folder)]) == 0


@pytest.mark.usefixtures("invalid_lapsed_control")
def test_the_template_control_can_be_rejected_in_review_and_a_resume_neither_rewrites_nor_pays_for_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "--review"]) == 4  # paused for review, the template control among the variants
    folder = run_dir()
    _, templates = lapsed_controls(folder)
    assert len(templates) == 1
    template = templates[0]["variant_id"]
    calls = ledger_calls()

    assert main(["review", str(folder), "--reject", template, "--reviewer", "ana", "--reason", "too plain"]) == 0
    assert main(["review", str(folder), "--approve-rest", "--reviewer", "ana"]) == 0
    capsys.readouterr()
    assert main(["run", "--resume", str(folder)]) == 1  # the Lapsed control arm gets nothing
    err = capsys.readouterr()

    assert ledger_calls() == calls  # nothing paid again
    assert [t["variant_id"] for t in lapsed_controls(folder)[1]] == [template]  # not written twice
    exported = {t["variant_id"]: t for t in json.loads((folder / "templates.json").read_text(encoding="utf-8"))}
    assert exported[template]["sendable"] is False and "rejected in review" in exported[template]["withheld"]
    assert template not in {r["variant_id"] for r in csv_rows(folder / "send_list.csv")}
    assert "Lapsed" in err.out and "get nothing" in err.out
    assert main(["audit", "verify", str(folder)]) == 0


def test_the_template_step_writes_one_control_per_invalid_model_control_and_the_same_one_again(tmp_path: Path) -> None:
    """Only the segment whose control ended invalid gets one; running the step again (a resume that comes back
    to it) gives the same key and content, so the state holds one."""
    tools = nodes.Tools(chain=offline_chain())
    state: Any = {
        "inputs": {
            "customers": str(bundled("data") / "customers.csv"),
            "campaign": None,
            "suppress": None,
            "seed": 7,
            "run_dir": str(tmp_path),
        }
    }
    state.update(nodes.load_segment(state, tools))
    state.update(nodes.retrieve_content(state, tools))
    requests = [EmailRequest.model_validate(r) for r in state["requests"]]
    variants = {}
    for request in requests:
        draft = template_control(request)  # stands in for a model's valid email
        variant = template_variant(request).model_copy(update={"source": "offline"})
        assert draft.subject == variant.subject
        variants[request_key(request)] = variant.model_dump(mode="json")
    lapsed = next(r for r in requests if r.segment.name == "Lapsed" and r.tone == "control")
    broken = variants[request_key(lapsed)]
    broken["validation"] = {**broken["validation"], "valid": False}
    state["variants"] = variants

    first = nodes.write_templates(state, tools)["templates"]
    again = nodes.write_templates(state, tools)["templates"]

    assert list(first) == [request_key(lapsed)] and first == again
    state["templates"] = {**first, **again}
    lapsed_controls = [v for v in ordered_variants(state) if v.segment == "Lapsed" and v.tone == "control"]
    assert [v.source for v in lapsed_controls] == ["offline", "template"]
    assert nodes.write_templates({**state, "inputs": {**state["inputs"], "per_customer": True}}, tools) == {
        "templates": {}
    }


def offline_chain() -> Any:
    from cpo.email.chain import build_email_chain
    from cpo.llm.offline import OfflineChatModel

    return build_email_chain(OfflineChatModel())
