"""Send-ready exports: `cpo run --platform NAME` / `cpo export RUN_DIR --platform NAME` write, per platform, each
sendable variant's HTML and text template in that platform's merge syntax, an audience CSV in its import columns,
and a manifest. Each template is rendered here with the platform's own syntax engine (python-liquid, pybars3, or
Mailchimp's documented merge tags), as `docs/platforms.md` describes. Every test runs the real `cpo run` on the
sample with the offline drafter, as a user would.
"""

from __future__ import annotations

import csv
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from test_runner import the_run_dir
from test_who_gets_emailed import campaign, no_run_left, sample_rows, send_list, write_customers

from cpo.campaign.agents.export import message_from_template
from cpo.campaign.mail.layout import html_part, text_part
from cpo.campaign.mail.platforms import MAILCHIMP_TAGS, PLATFORMS, TemplateCheckError, check_template, render
from cpo.cli import main
from cpo.cli.parser import PLATFORM_NAMES

UNSUBSCRIBE = {
    "liquid": "{{ unsubscribe_url }}",
    "braze": "{{${set_user_to_unsubscribed_url}}}",
    "customerio": "{% unsubscribe_url %}",
    "iterable": "{{unsubscribeUrl}}",
    "sendgrid": "{{{unsubscribe}}}",
    "mailchimp": "*|UNSUB|*",
}
ID_COLUMN = {"liquid": "customer_id", "braze": "external_id", "customerio": "id", "iterable": "userId",
             "sendgrid": "external_id", "mailchimp": "Customer ID"}  # fmt: skip
EMAIL_COLUMN = {"mailchimp": "Email Address"}
VARIANT_COLUMN = {"liquid": "variant_id", "iterable": "cpoVariantId", "mailchimp": "CPO Variant"}


class Links(HTMLParser):
    """Every <a href> of a page, with its class."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            found = dict(attrs)
            self.links.append((found.get("class") or "", found.get("href") or ""))


def links(page: str) -> list[tuple[str, str]]:
    parser = Links()
    parser.feed(page)
    return parser.links


def exported(run_dir: Path, platform: str) -> tuple[Path, dict[str, object]]:
    folder = run_dir / "exports" / platform
    return folder, json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def test_the_cli_names_every_platform_cpo_exports_to() -> None:
    assert set(PLATFORM_NAMES) == set(PLATFORMS)


@pytest.mark.parametrize("platform", list(PLATFORMS))
def test_each_platforms_templates_render_in_its_engine_with_the_tracked_link_and_its_unsubscribe_tag(
    platform: str,
) -> None:
    assert main(["run", "--platform", platform]) == 0
    run_dir = the_run_dir()
    folder, manifest = exported(run_dir, platform)
    templates = {t["variant_id"]: t for t in json.loads((run_dir / "templates.json").read_text(encoding="utf-8"))}
    listed = manifest["templates"]
    assert isinstance(listed, list)
    assert {t["variant_id"] for t in listed} == {v for v, t in templates.items() if t["sendable"]}
    for item in listed:
        template = templates[item["variant_id"]]
        assert item["subject"] == template["subject"] and item["preheader"] == template["preheader"]
        page = (folder / item["html_file"]).read_text(encoding="utf-8")
        text = (folder / item["text_file"]).read_text(encoding="utf-8")
        assert UNSUBSCRIBE[platform] in page and UNSUBSCRIBE[platform] in text
        if platform == "mailchimp":  # every merge tag is one Mailchimp documents
            assert set(re.findall(r"\*\|([^|*]*)\|\*", page + text)) <= MAILCHIMP_TAGS
        shown = render(PLATFORMS[platform], page, "Ada", "https://u.example/x?t=1", as_html=True)
        assert "Hi Ada," in shown and "{{" not in shown and "*|" not in shown
        found = links(shown)
        assert ("", "https://u.example/x?t=1") in found  # the unsubscribe link, filled by the engine
        (cta,) = [href for kind, href in found if kind == "button"]
        query = parse_qs(urlsplit(cta).query)
        assert cta.startswith("https://example.com/account/upgrade?")
        assert query["utm_content"] == [item["variant_id"]] and query["utm_term"] == [template["arm"]]
        assert query["utm_medium"] == ["email"] and query["utm_source"] == ["cpo"]
        assert query["utm_campaign"] == ["northwind-plus-upgrade-spring-2027"]
        assert len(found) == 2  # the call to action and the unsubscribe link are the only links
        plain = render(PLATFORMS[platform], text, "", "https://u.example/x?t=1", as_html=False)
        assert plain.startswith("Hi there,") and f"Upgrade from your account: {cta}" in plain
        assert plain.rstrip().endswith("Northwind Supply, 100 Example Street, Springfield, IL 62701, USA")

    with (folder / "audience.csv").open(encoding="utf-8", newline="") as handle:
        audience = list(csv.DictReader(handle))
    sent = send_list(run_dir)
    assert len(audience) == len(sent) == manifest["audience"]["rows"]  # type: ignore[index]
    email = EMAIL_COLUMN.get(platform, "email")
    assert {r[ID_COLUMN[platform]] for r in audience} == {r["customer_id"] for r in sent}
    assert {r[email] for r in audience} == {r["email"] for r in sent}
    variant = VARIANT_COLUMN.get(platform, "cpo_variant_id")
    assert {r[variant] for r in audience} <= {t["variant_id"] for t in listed}
    assert main(["audit", "verify", str(run_dir)]) == 0


def test_an_edited_export_or_audience_fails_the_audit_and_a_tampered_run_is_not_exported(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run"]) == 0
    run_dir = the_run_dir()
    assert main(["export", str(run_dir), "--platform", "braze"]) == 0
    assert "exported for Braze:" in capsys.readouterr().out
    folder, manifest = exported(run_dir, "braze")
    assert main(["audit", "verify", str(run_dir)]) == 0
    page = folder / manifest["templates"][0]["html_file"]  # type: ignore[index]
    original = page.read_text(encoding="utf-8")
    page.write_text(original.replace("Upgrade from your account", "Claim your free gift"), encoding="utf-8")
    assert main(["audit", "verify", str(run_dir)]) != 0
    assert f"exports/braze: {manifest['templates'][0]['html_file']} is not what cpo export writes" in (  # type: ignore[index]
        capsys.readouterr().err
    )
    page.write_text(original, encoding="utf-8")
    assert main(["audit", "verify", str(run_dir)]) == 0
    # the audience, the manifest and the folder are bound too: a changed address, subject or an added file fails
    audience = folder / "audience.csv"
    rows = audience.read_bytes()
    first = send_list(run_dir)[0]["email"].encode()
    for path, edit in (
        (audience, lambda data: data.replace(first, b"attacker@evil.example", 1)),
        (folder / "manifest.json", lambda data: data.replace(b'"subject": "', b'"subject": "Re: ', 1)),
    ):
        before = path.read_bytes()
        path.write_bytes(edit(before))
        assert main(["audit", "verify", str(run_dir)]) != 0, path.name
        assert f"{path.name} is not what cpo export writes" in capsys.readouterr().err
        path.write_bytes(before)
    (folder / "templates" / "extra.html").write_text("<a href='https://evil.example'>win</a>", encoding="utf-8")
    assert main(["audit", "verify", str(run_dir)]) != 0
    assert "templates/extra.html is not what cpo export writes" in capsys.readouterr().err
    (folder / "templates" / "extra.html").unlink()
    assert audience.read_bytes() == rows and main(["audit", "verify", str(run_dir)]) == 0

    templates = run_dir / "templates.json"
    text = templates.read_text(encoding="utf-8")
    first = json.loads(text)[0]["subject"]
    templates.write_text(text.replace(first, "You won a prize", 1), encoding="utf-8")
    assert main(["export", str(run_dir), "--platform", "iterable"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nothing exported" in err and len(err.strip().splitlines()) == 1
    assert not (run_dir / "exports" / "iterable").exists()
    assert (folder / "manifest.json").is_file()  # the earlier export is still there


@pytest.mark.parametrize("platform", ["mailchimp", "sendgrid"])
def test_a_platform_keyed_on_email_refuses_a_file_without_addresses_in_one_line(
    platform: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--customers", write_customers(sample_rows(), rename={"email": ""})]) == 0
    run_dir = the_run_dir()
    capsys.readouterr()
    assert main(["export", str(run_dir), "--platform", platform]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no email column" in err
    assert not (run_dir / "exports").exists() and (run_dir / "send_list.csv").is_file()
    assert main(["export", str(run_dir), "--platform", "braze"]) == 0  # keyed on the external id: fine


def test_an_edited_send_list_fails_the_audit_and_is_not_exported(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == 0
    run_dir = the_run_dir()
    path = run_dir / "send_list.csv"
    original = path.read_bytes()
    first = send_list(run_dir)[0]["email"].encode()
    path.write_bytes(original.replace(first, b"attacker@evil.example", 1))
    capsys.readouterr()
    assert main(["audit", "verify", str(run_dir)]) != 0
    assert "send_list.csv is not the file the run wrote and its audit binds" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--platform", "mailchimp"]) != 0
    assert not (run_dir / "exports").exists()
    path.write_bytes(original)
    assert main(["export", str(run_dir), "--platform", "mailchimp"]) == 0


def test_the_audience_checks_addresses_again(tmp_path: Path) -> None:
    """A send list written before it was bound in the audit may have been edited: the audience checks again."""
    from cpo.campaign.platform_export import _audience

    rows = [
        {"customer_id": "C1", "email": "a@example.com", "arm": "control", "variant_id": "v1", "first_name": "A",
         "segment": "S", "source": "offline"},
        {"customer_id": "C2", "email": "A@EXAMPLE.COM", "arm": "control", "variant_id": "v1", "first_name": "B",
         "segment": "S", "source": "offline"},
        {"customer_id": "C3", "email": "nobody", "arm": "control", "variant_id": "v1", "first_name": "C",
         "segment": "S", "source": "offline"},
        {"customer_id": "'-C4", "email": "'-d@example.com", "arm": "control", "variant_id": "v1",
         "first_name": "'-D", "segment": "S", "source": "offline"},
    ]  # fmt: skip
    with (tmp_path / "send_list.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    header, out, left = _audience(tmp_path, PLATFORMS["mailchimp"], {"v1"})
    assert left == {"not an address": 1, "an earlier customer's": 1}
    kept = [dict(zip(header, r, strict=True)) for r in out]
    assert [r["Customer ID"] for r in kept] == ["C1", "-C4"]  # the id and address as the customer file had them
    assert kept[1]["Email Address"] == "-d@example.com" and kept[1]["First Name"] == "'-D"  # a name stays safe


def test_a_hostile_first_name_stays_data_in_every_platform(capsys: pytest.CaptureFixture[str]) -> None:
    rows = sample_rows()
    for row in rows:
        row["first_name"] = "<img src=x onerror=alert(1)>{{ 7*7 }}*|UNSUB|*"
    assert main(["run", "--customers", write_customers(rows), "--platform", "liquid"]) == 0
    run_dir = the_run_dir()
    _, manifest = exported(run_dir, "liquid")
    item = manifest["templates"][0]  # type: ignore[index]
    template = next(
        t for t in json.loads((run_dir / "templates.json").read_text()) if t["variant_id"] == item["variant_id"]
    )
    message = message_from_template(template)
    for name, platform in PLATFORMS.items():
        page = html_part(message, platform.merge)
        shown = render(platform, page, rows[0]["first_name"], "https://u.example/x", as_html=True)
        assert "<img" not in shown, name  # escaped in the HTML part
        assert "49" not in shown.split("Hi ", 1)[1][:80], name  # the name's tag is not run
    # a template that forgets to escape is caught before it is written
    for name in ("liquid", "braze", "customerio"):
        platform = PLATFORMS[name]
        page = html_part(message, platform.merge).replace(" | escape", "")
        with pytest.raises(TemplateCheckError, match="escape"):
            check_template(platform, message, page, text_part(message, platform.merge))
    for name in ("iterable", "sendgrid"):
        platform = PLATFORMS[name]
        merge = platform.merge
        page = html_part(message, merge)
        page = page.replace('{{defaultIfEmpty firstName "there"}}', '{{{defaultIfEmpty firstName "there"}}}')
        page = page.replace("{{#if first_name}}{{first_name}}", "{{#if first_name}}{{{first_name}}}")
        with pytest.raises(TemplateCheckError, match="escape"):
            check_template(platform, message, page, text_part(message, merge))


@pytest.mark.parametrize(
    ("replace", "error"),
    [
        (
            {"url: https://example.com/account/upgrade": "url: http://example.com/account/upgrade"},
            "cta.url: 'http://example.com/account/upgrade' is not an https URL with a host",
        ),
        (
            {"url: https://example.com/account/upgrade": "url: https://example.com/u?utm_source=x"},
            "cta.url: the URL has its own utm_source: cpo adds the UTM parameters per variant",
        ),
        (
            {"text: Upgrade from your account": "text: Visit https://evil.example now"},
            "cta.text: the call to action's text must be plain words",
        ),
        (
            {"url: https://example.com/account/upgrade": "url: https://ex\u0430mple.com/account/upgrade"},
            "cta.url: the URL's host has letters outside ASCII (a look-alike?)",
        ),
        (
            {"Unsubscribe: {{ unsubscribe_url }}": "Archive: *|ARCHIVE|* Unsubscribe: {{ unsubscribe_url }}"},
            "unsubscribe: the footer: has a template tag",
        ),
        (
            {"Unsubscribe: {{ unsubscribe_url }}": "Visit https://evil.example.com Unsubscribe: {{ unsubscribe_url }}"},
            "unsubscribe: the footer: has a link or web address",
        ),
        ({"    The Northwind Plus team": "    The Northwind Plus team {{ x }}"}, "sender.sign_off: has a template tag"),
        (
            {"  postal_address: Northwind Supply, 100 Example Street, Springfield, IL 62701, USA": ""},
            "sender: postal_address is required",
        ),
    ],
)
def test_a_campaigns_call_to_action_and_postal_address_are_checked_before_anything_runs(
    replace: dict[str, str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = campaign(**replace)
    assert main(["run", "--config", path]) != 0
    err = capsys.readouterr().err
    assert f"error: campaign file {path}: {error}" in err and len(err.strip().splitlines()) == 1
    assert no_run_left()
    assert main(["run", "--config", path, "--dry-run"]) != 0


def test_a_per_customer_run_exports_each_customers_own_email_for_a_transactional_api(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = [r for r in sample_rows() if r["email_opt_in"] == "true"][:12]
    assert main(["run", "--customers", write_customers(rows), "--per-customer", "--platform", "iterable"]) == 0
    assert "transactional API" in capsys.readouterr().out
    run_dir = the_run_dir()
    folder, manifest = exported(run_dir, "iterable")
    assert manifest["mode"] == "per_customer"
    with (folder / "messages.csv").open(encoding="utf-8", newline="") as handle:
        messages = list(csv.DictReader(handle))
    sent = {r["customer_id"]: r for r in send_list(run_dir)}
    assert {m["customer_id"] for m in messages} == set(sent) and len(messages) == manifest["messages"]["rows"]  # type: ignore[index]
    for m in messages:
        assert m["variant_id"] == sent[m["customer_id"]]["variant_id"]
        eml = (folder / m["eml"]).read_text(encoding="utf-8")
        assert f"To: {m['email']}" in eml and f"Hi {sent[m['customer_id']]['first_name']}," in eml
        assert (folder / m["html_file"]).is_file() and (folder / m["text_file"]).is_file()
    assert main(["audit", "verify", str(run_dir)]) == 0


def test_the_columns_a_campaign_lists_reach_the_send_list_and_every_audience_as_they_are(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = sample_rows()
    for n, row in enumerate(rows):
        row["Home Store"] = f"=store {n % 3}" if n == 0 else f"Store {n % 3}"  # a formula-like cell stays data
        row["order"] = str(n)  # an SQL keyword as a column name is data too
    path = campaign(**{"offers:": "audience_columns: [Home Store, ORDER]\noffers:"})
    assert main(["run", "--config", path, "--customers", write_customers(rows), "--platform", "braze"]) == 0
    run_dir = the_run_dir()
    sent = send_list(run_dir)
    assert list(sent[0])[-3:] == ["home_store", "order", "source"]
    by_id = {r["customer_id"]: r for r in rows}
    for row in sent:
        original = by_id[row["customer_id"]]
        assert row["order"] == original["order"]
        assert row["home_store"] == ("'" if original["Home Store"].startswith("=") else "") + original["Home Store"]
    folder, _ = exported(run_dir, "braze")
    with (folder / "audience.csv").open(encoding="utf-8", newline="") as handle:
        audience = list(csv.DictReader(handle))
    assert {(r["external_id"], r["home_store"], r["order"]) for r in audience} == {
        (r["customer_id"], r["home_store"], r["order"]) for r in sent
    }

    capsys.readouterr()
    missing = campaign("other.yaml", **{"offers:": "audience_columns: [Region]\noffers:"})
    assert main(["run", "--config", missing, "--customers", write_customers(rows)]) != 0
    err = capsys.readouterr().err.strip()
    assert "no column 'region', which the campaign passes to the send list" in err and len(err.splitlines()) == 1
    own = campaign("own.yaml", **{"offers:": "audience_columns: [E-mail]\noffers:"})
    assert main(["run", "--config", own]) != 0
    assert "is a column cpo writes itself" in capsys.readouterr().err


def test_an_out_folder_that_is_not_an_export_is_never_replaced(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == 0
    run_dir = the_run_dir()
    extension = Path("myext")  # a folder of someone's own that happens to hold a manifest.json
    (extension / "src").mkdir(parents=True)
    (extension / "manifest.json").write_text('{"manifest_version": 3}', encoding="utf-8")
    (extension / "src" / "bg.js").write_text("code", encoding="utf-8")
    capsys.readouterr()
    assert main(["export", str(run_dir), "--platform", "braze", "--out", str(extension)]) != 0
    assert "is not empty and not a cpo export" in capsys.readouterr().err
    assert (extension / "src" / "bg.js").read_text(encoding="utf-8") == "code"
    Path("a-file").write_text("x", encoding="utf-8")
    assert main(["export", str(run_dir), "--platform", "braze", "--out", "a-file"]) != 0
    err = capsys.readouterr().err.strip()
    assert err == "error: a-file is a file, not a folder: choose another --out"
    assert main(["export", str(run_dir), "--platform", "braze", "--out", "mine"]) == 0
    assert main(["export", str(run_dir), "--platform", "iterable", "--out", "mine"]) != 0  # not over another's
    assert "holds the braze export" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--platform", "braze", "--out", "mine"]) == 0  # its own: replaced


def test_a_run_paused_for_review_exports_for_its_platform_when_it_goes_on(capsys: pytest.CaptureFixture[str]) -> None:
    main(["run", "--review", "--platform", "customerio"])
    run_dir = the_run_dir()
    assert not (run_dir / "exports").exists()  # nothing is exported before the review
    assert main(["review", str(run_dir), "--approve-rest", "--reviewer", "Ana"]) == 0
    assert main(["run", "--resume", str(run_dir)]) == 0
    assert "exported for Customer.io:" in capsys.readouterr().out
    _, manifest = exported(run_dir, "customerio")
    assert manifest["templates"] and main(["audit", "verify", str(run_dir)]) == 0
