"""The Azure AI Search content index and the Azure AI Content Safety screen, through the real SDKs, against
the loopback emulators in `tests/azure_services.py` (no Azure, no network beyond 127.0.0.1)."""

from __future__ import annotations

import subprocess
import sys
import time
import types
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.credentials import AzureKeyCredential
from azure_services import ContentSafetyEmulator, SearchEmulator, closed_port_endpoint, parse_any_filter

from cpo.campaign.backends.azure_safety import (
    CATEGORIES,
    MAX_TEXT,
    AzureContentSafety,
    ScreeningUnavailable,
    split_text,
)
from cpo.campaign.backends.azure_search import AzureSearchIndex, SearchUnavailable, audience_filter, plain_query
from cpo.core.errors import ConfigError
from cpo.core.models import Snippet

# Fail fast: no retries and short timeouts (production defaults are 3 retries, 10 s / 60 s).
FAST: dict[str, Any] = {"retry_total": 0, "connection_timeout": 2.0, "read_timeout": 5.0}
INDEX = "approved-content"
ENV_VARS = (
    "AZURE_SEARCH_ENDPOINT",
    "AZURE_SEARCH_INDEX",
    "AZURE_SEARCH_KEY",
    "AZURE_CONTENT_SAFETY_ENDPOINT",
    "AZURE_CONTENT_SAFETY_KEY",
)

SNIPPETS = [
    Snippet(id="plus-overview", title="Northwind Plus overview", section="Plans", text="Gold members upgrade to Plus."),
    Snippet(
        id="gold-shipping",
        title="Gold shipping",
        section="Shipping",
        text="Gold upgrade: free 2-day shipping on every Gold order.",
        audience=("Gold",),
    ),
    Snippet(
        id="platinum-concierge",
        title="Platinum concierge",
        section="Service",
        text="Platinum gold gold gold upgrade upgrade concierge.",
        audience=("Platinum",),
    ),
    Snippet(
        id="annual-plan",
        title="Annual plan",
        section="Pricing",
        text="Pay yearly and save 20% on the upgrade.",
        audience=("all",),
    ),
    Snippet(id="returns", title="Returns", section="Policy", text="Thirty-day returns on everything."),
]


@pytest.fixture(autouse=True)
def _no_azure_service_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def search_service() -> Iterator[SearchEmulator]:
    with SearchEmulator() as service:
        yield service


@pytest.fixture
def safety_service() -> Iterator[ContentSafetyEmulator]:
    triggers = {
        "hatred": {"Hate": 4},
        "brawl": {"Violence": 3},
        "massacre": {"Violence": 6, "Hate": 2},
        "explicit": {"Sexual": 5},
        "selfharm": {"SelfHarm": 7},
    }
    with ContentSafetyEmulator(triggers=triggers) as service:
        yield service


def search_index(service: SearchEmulator, key: str | None = None, **kwargs: Any) -> AzureSearchIndex:
    credential = AzureKeyCredential(key or service.api_key)
    return AzureSearchIndex(service.endpoint, INDEX, credential, **{**FAST, **kwargs})


def safety(service: ContentSafetyEmulator, key: str | None = None, **kwargs: Any) -> AzureContentSafety:
    return AzureContentSafety(service.endpoint, AzureKeyCredential(key or service.api_key), **{**FAST, **kwargs})


# --- Azure AI Search -----------------------------------------------------------------------------------------


def test_build_creates_the_index_schema_and_uploads_every_snippet(search_service: SearchEmulator) -> None:
    index = search_index(search_service)
    assert index.name == "azure-ai-search"
    index.build(SNIPPETS)

    put = search_service.requests[0]
    assert (put.method, put.path) == ("PUT", f"/indexes('{INDEX}')")
    assert put.query["api-version"]
    fields = {f["name"]: f for f in put.body["fields"]}
    assert set(fields) == {"id", "title", "section", "text", "audience"}
    assert fields["id"]["key"] is True and fields["id"]["type"] == "Edm.String"
    assert all(fields[n]["searchable"] for n in ("title", "section", "text"))
    assert fields["audience"]["type"] == "Collection(Edm.String)" and fields["audience"]["filterable"] is True

    upload = search_service.requests[1]
    assert (upload.method, upload.path) == ("POST", f"/indexes('{INDEX}')/docs/search.index")
    assert {a["@search.action"] for a in upload.body["value"]} == {"mergeOrUpload"}
    stored = search_service.documents[INDEX]
    assert set(stored) == {s.id for s in SNIPPETS}
    assert stored["gold-shipping"] == {
        "id": "gold-shipping",
        "title": "Gold shipping",
        "section": "Shipping",
        "text": "Gold upgrade: free 2-day shipping on every Gold order.",
        "audience": ["Gold"],
    }


def test_search_for_a_tier_keeps_general_and_tier_content_ranked_by_score(search_service: SearchEmulator) -> None:
    index = search_index(search_service)
    index.build(SNIPPETS)

    hits = index.search("gold upgrade", audience="Gold", top=5)

    ids = [h.id for h in hits]
    assert "platinum-concierge" not in ids  # the best match by words, but Platinum-only
    assert ids == ["gold-shipping", "plus-overview", "annual-plan"]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].score > hits[-1].score > 0
    assert hits[0].title == "Gold shipping" and hits[0].section == "Shipping" and hits[0].audience == ["Gold"]
    sent = search_service.searches()[-1]
    assert sent["filter"] == "audience/any(a: a eq 'all' or a eq 'Gold')"
    assert sent["search"] == "gold upgrade"
    assert sent["top"] == 5


def test_search_without_a_tier_sees_only_content_for_everyone(search_service: SearchEmulator) -> None:
    index = search_index(search_service)
    index.build(SNIPPETS)

    hits = index.search("gold upgrade", audience=None, top=10)

    assert [h.id for h in hits] == ["plus-overview", "annual-plan"]
    assert search_service.searches()[-1]["filter"] == "audience/any(a: a eq 'all')"


def test_top_limits_the_hits(search_service: SearchEmulator) -> None:
    index = search_index(search_service)
    index.build(SNIPPETS)
    assert [h.id for h in index.search("gold upgrade", audience="Gold", top=1)] == ["gold-shipping"]


def test_quotes_in_a_tier_are_doubled_in_the_filter(search_service: SearchEmulator) -> None:
    index = search_index(search_service)
    odd = Snippet(id="odd", title="Odd tier", text="Upgrade news.", audience=("O'Brien",))
    index.build([*SNIPPETS, odd])

    hits = index.search("upgrade", audience="O'Brien", top=10)

    assert search_service.searches()[-1]["filter"] == "audience/any(a: a eq 'all' or a eq 'O''Brien')"
    assert "odd" in [h.id for h in hits] and "gold-shipping" not in [h.id for h in hits]


def test_filter_and_query_helpers() -> None:
    assert audience_filter(None) == "audience/any(a: a eq 'all')"
    assert audience_filter("Platinum") == "audience/any(a: a eq 'all' or a eq 'Platinum')"
    assert parse_any_filter(audience_filter("it's")) == ("audience", {"all", "it's"})
    assert plain_query('"free" 2-day (shipping) +gold*') == "free 2 day shipping gold"


def test_a_blank_query_asks_nothing(search_service: SearchEmulator) -> None:
    index = search_index(search_service)
    index.build(SNIPPETS)
    before = len(search_service.requests)
    assert index.search("  ()  ", audience="Gold", top=5) == []
    assert len(search_service.requests) == before


def test_rebuild_replaces_the_documents(search_service: SearchEmulator) -> None:
    index = search_index(search_service)
    index.build(SNIPPETS)
    kept = [s for s in SNIPPETS if s.id != "gold-shipping"]

    index.build(kept)

    assert set(search_service.documents[INDEX]) == {s.id for s in kept}
    assert "gold-shipping" not in [h.id for h in index.search("gold upgrade", audience="Gold", top=5)]


def test_a_document_the_service_rejects_fails_the_build(search_service: SearchEmulator) -> None:
    search_service.reject_keys = {"returns"}
    with pytest.raises(SearchUnavailable) as caught:
        search_index(search_service).build(SNIPPETS)
    message = str(caught.value)
    assert "\n" not in message and "1 document(s) failed" in message and "'returns'" in message


@pytest.mark.parametrize("status", [401, 403])
def test_a_wrong_key_is_a_one_line_config_error_without_the_key(search_service: SearchEmulator, status: int) -> None:
    search_service.auth_status = status
    wrong = "wrong-key-0123456789abcdef"
    index = search_index(search_service, key=wrong)

    with pytest.raises(ConfigError) as caught:
        index.build(SNIPPETS)

    message = str(caught.value)
    assert "\n" not in message
    assert wrong not in message and search_service.api_key not in message
    assert "127.0.0.1" in message and f"HTTP {status}" in message and "AZURE_SEARCH_KEY" in message
    assert caught.value.exit_code == 2
    with pytest.raises(ConfigError, match="AZURE_SEARCH_KEY"):
        index.search("gold", audience="Gold", top=3)


def test_an_unreachable_endpoint_is_one_line_naming_the_host() -> None:
    endpoint = closed_port_endpoint()
    index = AzureSearchIndex(endpoint, INDEX, AzureKeyCredential("secret-search-key"), **FAST)

    started = time.monotonic()
    with pytest.raises(SearchUnavailable) as caught:
        index.search("gold", audience="Gold", top=3)

    message = str(caught.value)
    assert time.monotonic() - started < 5
    assert "\n" not in message and "secret-search-key" not in message
    assert "Azure AI Search at 127.0.0.1 is unreachable" in message and "connection refused" in message
    assert caught.value.exit_code == 1
    with pytest.raises(SearchUnavailable, match=r"127\.0\.0\.1"):
        index.build(SNIPPETS)


def test_a_server_error_is_search_unavailable(search_service: SearchEmulator) -> None:
    index = search_index(search_service)
    index.build(SNIPPETS)
    search_service.fail_status = 503
    with pytest.raises(SearchUnavailable, match=r"^Azure AI Search at 127\.0\.0\.1 answered HTTP 503 while searching"):
        index.search("gold", audience="Gold", top=3)


def test_a_missing_index_is_search_unavailable_with_the_service_message(search_service: SearchEmulator) -> None:
    with pytest.raises(SearchUnavailable, match=r"HTTP 404.*The index 'approved-content'.*was not found"):
        search_index(search_service).search("gold", audience="Gold", top=3)


def test_a_hanging_service_times_out(search_service: SearchEmulator) -> None:
    index = search_index(search_service, read_timeout=0.3)
    index.build(SNIPPETS)
    search_service.delay = 3.0
    started = time.monotonic()
    with pytest.raises(SearchUnavailable, match=r"did not answer.*timed out"):
        index.search("gold", audience="Gold", top=3)
    assert time.monotonic() - started < 2.5


def test_search_from_env_with_a_key(search_service: SearchEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_SEARCH_ENDPOINT", search_service.endpoint)
    monkeypatch.setenv("AZURE_SEARCH_INDEX", INDEX)
    monkeypatch.setenv("AZURE_SEARCH_KEY", search_service.api_key)
    index = AzureSearchIndex.from_env(**FAST)
    index.build(SNIPPETS)
    assert [h.id for h in index.search("returns", audience=None, top=3)] == ["returns"]
    assert search_service.requests[0].headers["api-key"] == search_service.api_key
    assert search_service.api_key not in repr(index)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "AZURE_SEARCH_ENDPOINT"),
        ({"AZURE_SEARCH_ENDPOINT": "https://x.search.windows.net"}, "AZURE_SEARCH_INDEX"),
        ({"AZURE_SEARCH_ENDPOINT": "x.search.windows.net", "AZURE_SEARCH_INDEX": "i"}, "AZURE_SEARCH_ENDPOINT"),
        (
            {"AZURE_SEARCH_ENDPOINT": "https://x.search.windows.net", "AZURE_SEARCH_INDEX": "Bad Name"},
            "AZURE_SEARCH_INDEX",
        ),
    ],
)
def test_search_settings_missing_or_malformed(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AZURE_SEARCH_KEY", "k")
    with pytest.raises(ConfigError) as caught:
        AzureSearchIndex.from_env()
    assert variable in str(caught.value) and "\n" not in str(caught.value)


def test_without_a_key_entra_id_needs_azure_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_SEARCH_ENDPOINT", "https://x.search.windows.net")
    monkeypatch.setenv("AZURE_SEARCH_INDEX", INDEX)
    monkeypatch.setenv("AZURE_CONTENT_SAFETY_ENDPOINT", "https://x.cognitiveservices.azure.com")
    monkeypatch.setitem(sys.modules, "azure.identity", None)  # as if azure-identity were not installed
    with pytest.raises(ConfigError, match=r"AZURE_SEARCH_KEY is not set.*pip install 'cpo\[azure\]'"):
        AzureSearchIndex.from_env()
    with pytest.raises(ConfigError, match=r"AZURE_CONTENT_SAFETY_KEY is not set.*pip install 'cpo\[azure\]'"):
        AzureContentSafety.from_env()


class _FakeTokenCredential:
    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken("token", int(time.time()) + 3600)


def test_without_a_key_entra_id_is_default_azure_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Any] = []

    def default_azure_credential() -> _FakeTokenCredential:
        made.append(_FakeTokenCredential())
        return made[-1]

    fake = types.ModuleType("azure.identity")
    fake.DefaultAzureCredential = default_azure_credential  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "azure.identity", fake)
    monkeypatch.setenv("AZURE_SEARCH_ENDPOINT", "https://x.search.windows.net")
    monkeypatch.setenv("AZURE_SEARCH_INDEX", INDEX)
    monkeypatch.setenv("AZURE_CONTENT_SAFETY_ENDPOINT", "https://x.cognitiveservices.azure.com")
    AzureSearchIndex.from_env()
    AzureContentSafety.from_env()
    assert len(made) == 2


def test_importing_cpo_and_the_backends_does_not_import_the_sdks() -> None:
    code = (
        "import sys, cpo, cpo.campaign.backends.azure_search, cpo.campaign.backends.azure_safety\n"
        "loaded = [m for m in sys.modules if m.startswith(('azure.search', 'azure.ai.contentsafety'))]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- Azure AI Content Safety ---------------------------------------------------------------------------------


def test_severities_per_category(safety_service: ContentSafetyEmulator) -> None:
    screen = safety(safety_service)
    assert screen.name == "azure-content-safety"

    assert screen.analyze("A calm note about shipping.") == {"Hate": 0, "Violence": 0, "SelfHarm": 0, "Sexual": 0}
    assert screen.analyze("Hatred and a brawl, explicit too.") == {"Hate": 4, "Violence": 3, "SelfHarm": 0, "Sexual": 5}

    request = safety_service.requests[-1]
    assert (request.method, request.path) == ("POST", "/contentsafety/text:analyze")
    assert request.query["api-version"]
    assert request.body["outputType"] == "EightSeverityLevels"
    assert sorted(request.body["categories"]) == sorted(CATEGORIES)
    assert request.headers["ocp-apim-subscription-key"] == safety_service.api_key


def test_a_long_text_is_sent_in_pieces_and_the_highest_severity_wins(safety_service: ContentSafetyEmulator) -> None:
    filler = "lorem ipsum dolor sit amet " * 400  # 10,800 characters
    text = "hatred " + filler + " brawl " + filler + " massacre " + filler + " brawl"

    severities = safety(safety_service).analyze(text)

    assert severities == {"Hate": 4, "Violence": 6, "SelfHarm": 0, "Sexual": 0}
    sent = safety_service.texts()
    assert len(sent) == 4 and all(len(piece) <= MAX_TEXT for piece in sent)
    words = set(text.split())
    assert all(set(piece.split()) <= words for piece in sent)  # cut at whitespace: no word is broken
    assert "hatred" in sent[0] and any("massacre" in piece for piece in sent[1:])


def test_split_text_covers_the_text() -> None:
    assert split_text("") == [] and split_text("   ") == []
    assert split_text("short") == ["short"]
    text = " ".join(f"w{i}" for i in range(5000))
    pieces = split_text(text, limit=1000, overlap=50)
    assert all(len(p) <= 1000 for p in pieces)
    assert pieces[0].startswith("w0 ") and pieces[-1].endswith("w4999")
    seen = set().union(*(p.split() for p in pieces))
    assert seen == set(text.split())
    unbroken = "x" * 2500
    assert "".join(split_text(unbroken, limit=1000, overlap=0)) == unbroken


def test_empty_text_asks_nothing(safety_service: ContentSafetyEmulator) -> None:
    assert safety(safety_service).analyze("  ") == dict.fromkeys(CATEGORIES, 0)
    assert safety_service.requests == []


def test_a_server_error_is_screening_unavailable(safety_service: ContentSafetyEmulator) -> None:
    safety_service.fail_status = 500
    with pytest.raises(ScreeningUnavailable) as caught:
        safety(safety_service).analyze("hello")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("Azure AI Content Safety at 127.0.0.1 answered HTTP 500")
    assert len(safety_service.requests) == 1  # retry_total=0


def test_connection_refused_is_screening_unavailable() -> None:
    screen = AzureContentSafety(closed_port_endpoint(), AzureKeyCredential("secret-safety-key"), **FAST)
    with pytest.raises(ScreeningUnavailable) as caught:
        screen.analyze("hello")
    message = str(caught.value)
    assert message == "Azure AI Content Safety at 127.0.0.1 is unreachable: connection refused"


def test_a_hanging_service_is_screening_unavailable(safety_service: ContentSafetyEmulator) -> None:
    safety_service.delay = 3.0
    started = time.monotonic()
    with pytest.raises(ScreeningUnavailable, match="did not answer: timed out"):
        safety(safety_service, read_timeout=0.3).analyze("hello")
    assert time.monotonic() - started < 2.5


def test_a_wrong_key_is_screening_unavailable_without_the_key(safety_service: ContentSafetyEmulator) -> None:
    wrong = "wrong-safety-key-0123456789"
    with pytest.raises(ScreeningUnavailable) as caught:
        safety(safety_service, key=wrong).analyze("hello")
    message = str(caught.value)
    assert "\n" not in message and wrong not in message and safety_service.api_key not in message
    assert "HTTP 401" in message and "AZURE_CONTENT_SAFETY_KEY" in message


def test_an_answer_without_a_category_is_screening_unavailable(
    safety_service: ContentSafetyEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = safety_service._answer

    def without_violence(request: Any) -> tuple[int, Any]:
        status, body = answer(request)
        body["categoriesAnalysis"] = [c for c in body["categoriesAnalysis"] if c["category"] != "Violence"]
        return status, body

    monkeypatch.setattr(safety_service, "_answer", without_violence)
    with pytest.raises(ScreeningUnavailable, match=r"gave no severity .* for Violence"):
        safety(safety_service).analyze("hello")


def test_safety_from_env(safety_service: ContentSafetyEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="AZURE_CONTENT_SAFETY_ENDPOINT is not set"):
        AzureContentSafety.from_env()
    monkeypatch.setenv("AZURE_CONTENT_SAFETY_ENDPOINT", safety_service.endpoint)
    monkeypatch.setenv("AZURE_CONTENT_SAFETY_KEY", safety_service.api_key)
    assert AzureContentSafety.from_env(**FAST).analyze("a brawl")["Violence"] == 3


# --- a whole campaign on the Azure backends ------------------------------------------------------------------


def campaign_env(monkeypatch: pytest.MonkeyPatch, search: SearchEmulator, screen: ContentSafetyEmulator) -> None:
    monkeypatch.setenv("AZURE_SEARCH_ENDPOINT", search.endpoint)
    monkeypatch.setenv("AZURE_SEARCH_INDEX", INDEX)
    monkeypatch.setenv("AZURE_SEARCH_KEY", search.api_key)
    monkeypatch.setenv("AZURE_CONTENT_SAFETY_ENDPOINT", screen.endpoint)
    monkeypatch.setenv("AZURE_CONTENT_SAFETY_KEY", screen.api_key)
    for cls in (AzureSearchIndex, AzureContentSafety):  # no retries: a failing service fails at once
        original = cls.from_settings.__func__  # type: ignore[attr-defined]
        monkeypatch.setattr(cls, "from_settings", classmethod(lambda c, settings, _o=original: _o(c, settings, **FAST)))


def test_cpo_run_retrieves_from_azure_search_and_screens_with_content_safety(
    search_service: SearchEmulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import csv
    import json
    from pathlib import Path

    from cpo.cli import main

    with ContentSafetyEmulator(triggers={"Platinum": {"Hate": 4}}) as screen:
        campaign_env(monkeypatch, search_service, screen)
        assert main(["index"]) == 0
        assert "uploaded 29 snippets to Azure AI Search index approved-content" in capsys.readouterr().out
        assert main(["run"]) == 1  # the blocked controls leave their segments' customers with nothing
        out, err = capsys.readouterr()
        assert "customers in the campaign get no email" in err
        (run_dir,) = [p for p in Path("runs").iterdir() if p.is_dir() and not p.name.startswith(".")]
        retrieval = json.loads((run_dir / "retrieval.json").read_text())
        assert {r["backend"] for r in retrieval.values()} == {"azure-ai-search"}
        assert all(r["hits"] for r in retrieval.values())
        screening = json.loads((run_dir / "screening.json").read_text())
        assert {d["backend"] for d in screening.values()} == {"azure-content-safety"}
        blocked = {v: d for v, d in screening.items() if d["blocked"]}
        assert blocked and all(d["severities"]["Hate"] == 4 for d in blocked.values())
        assert f"screened: 20 variants (azure-content-safety), {len(blocked)} blocked" in out
        assert len(screen.texts()) == 20  # subject, body and footer of each variant: one request each
        with (run_dir / "send_list.csv").open(encoding="utf-8") as handle:
            assert not {row["variant_id"] for row in csv.DictReader(handle)} & set(blocked)


def test_an_unavailable_content_safety_service_blocks_everything(
    search_service: SearchEmulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    from pathlib import Path

    from cpo.cli import main

    with ContentSafetyEmulator() as screen:
        screen.fail_status = 500
        campaign_env(monkeypatch, search_service, screen)
        assert main(["index"]) == 0
        assert main(["run"]) == 1  # fail closed: nothing goes out, and the exit code says so
        out, err = capsys.readouterr()
        (run_dir,) = [p for p in Path("runs").iterdir() if p.is_dir() and not p.name.startswith(".")]
        screening = json.loads((run_dir / "screening.json").read_text())
        assert all(d["blocked"] and d["reasons"][0].startswith("screening unavailable") for d in screening.values())
        assert "screened: 20 variants (azure-content-safety), 20 blocked" in out
        assert out.count("get nothing: its control is blocked by screening: screening unavailable") == 5
        assert "not sent: 241 of 241 customers in the campaign get no email" in err
