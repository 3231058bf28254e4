"""`report.html`: a run's campaign report, opened in a real browser (headless Chromium, as the preview is). Without a
browser those tests skip with the reason, except in CI, where they fail.

One offline run of the sample campaign, analysed with simulated outcomes, is made once for the module; each test
works on its own copy of it.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import re
import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from test_preview_page import rendered_dom
from test_runner import the_run_dir

from cpo.campaign.agents.charts import CI_GID
from cpo.campaign.agents.report_tables import p_value, pct, points
from cpo.campaign.analysis import analyze_run
from cpo.campaign.report_page import REPORT_FILE, build_report
from cpo.cli import main
from cpo.core.errors import InputError

SVG = "{http://www.w3.org/2000/svg}"
IMAGE = re.compile(r'<img src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)" alt="([^"]*)"')


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample campaign run offline (hermetic: its own directory and id key) and analysed (simulated, seed 1)."""
    home = tmp_path_factory.mktemp("sample")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CPO_ID_KEY_FILE", str(home / "id-key"))
        patch.chdir(home)
        assert main(["run"]) == 0
        run_dir = the_run_dir().resolve()
    analyze_run(run_dir, simulate_seed=1)
    return run_dir


@pytest.fixture
def run_dir(sample_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / sample_run.name
    shutil.copytree(sample_run, copy, ignore=shutil.ignore_patterns(".lock"))
    return copy


def read(run_dir: Path, name: str) -> Any:
    return json.loads((run_dir / name).read_text(encoding="utf-8"))


def write(run_dir: Path, name: str, data: Any) -> None:
    (run_dir / name).write_text(json.dumps(data), encoding="utf-8")


def charts(page: str) -> list[tuple[ET.Element, str]]:
    """Each chart's SVG, parsed as XML (markup in a label would break it), with its alt text."""
    return [(ET.fromstring(base64.b64decode(data)), alt) for data, alt in IMAGE.findall(page)]


def error_bars(svg: ET.Element) -> int:
    return sum(1 for e in svg.iter() if re.fullmatch(CI_GID.format(r"\d+"), e.get("id") or ""))


def labels(svg: ET.Element) -> list[str]:
    return [e.text or "" for e in svg.iter(f"{SVG}text")]


def elements(page: str) -> list[tuple[str, dict[str, str]]]:
    """Every element of a page (tag, attributes), as an HTML parser reads it."""

    found: list[tuple[str, dict[str, str]]] = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.append((tag, {k: v or "" for k, v in attrs}))

    Tags().feed(page)
    return found


def inert(page: str) -> bool:
    """No script, no event handler, no image but an inline one: nothing on the page can run or fetch."""
    found = elements(page)
    return (
        all(tag not in ("script", "iframe", "object", "embed", "link") for tag, _ in found)
        and not any(name.startswith("on") for _, attrs in found for name in attrs)
        and all(a["src"].startswith("data:image/svg+xml;base64,") for tag, a in found if tag == "img")
    )


def section(page: str, name: str) -> str:
    match = re.search(rf'<section id="{name}">(.*?)</section>', page, re.S)
    assert match, f"no section {name}"
    return match.group(1)


def test_numbers_are_formatted_for_people() -> None:
    assert (pct(0.06779), pct(1.0), pct(None)) == ("6.8%", "100.0%", "n/a")
    assert (points(0.01695), points(-0.125), points(-0.0003)) == ("+1.7 pts", "-12.5 pts", "+0.0 pts")
    assert (p_value(0.030712), p_value(1.0), p_value(1.234e-7), p_value(None)) == ("0.0307", "1.00", "1.23e-07", "n/a")


def test_the_report_shows_the_verdict_charts_and_tables_in_a_browser(run_dir: Path) -> None:
    analysis = read(run_dir, "analysis.json")
    primary = analysis["verdict"]["primary_metric"]
    dom = rendered_dom(build_report(run_dir))

    assert html.escape(analysis["verdict"]["text"], quote=False) in section(dom, "verdict")
    assert "no rise in the unsubscribe rate" in dom and "no mismatch" in section(dom, "verdict")
    assert inert(dom)

    (rates, rate_alt), (lifts, _), (by_segment, _) = charts(dom)
    arms = list(analysis["arms"][primary])
    assert error_bars(rates) == len(arms) and all(arm in labels(rates) for arm in arms)
    assert all(f"{arm} {100 * c['rate']:.1f}%" in rate_alt for arm, c in analysis["arms"][primary].items())
    assert error_bars(lifts) == len(analysis["comparisons"])
    lifted = [(s, a) for s, m in analysis["segments"].items() for a, c in m[primary].items() if "abs_lift" in c]
    assert error_bars(by_segment) == len(lifted) and f"{lifted[0][0]} · {lifted[0][1]}" in labels(by_segment)

    arms_table = section(dom, "arms")
    assert re.findall(r'data-arm="([^"]+)"', arms_table) == arms
    assert pct(analysis["arms"][primary]["control"]["rate"]) in arms_table
    first = analysis["comparisons"][0]
    assert f"{points(first['abs_lift'])}</td>" in section(dom, "lifts")
    with (run_dir / "segments.csv").open(encoding="utf-8") as handle:
        segments = {row["segment"] for row in csv.DictReader(handle)}
    assert set(re.findall(r'data-segment="([^"]+)"', section(dom, "segments"))) == segments
    assert "description, not cause" in section(dom, "features")
    delivered = section(dom, "delivered")
    assert all(f"{v}: {n}" in delivered for d in analysis["delivered"].values() for v, n in d["variants"].items())
    assert "simulated" in section(dom, "provenance")

    templates = read(run_dir, "templates.json")
    assert set(re.findall(r'data-variant="([^"]+)"', dom)) == {t["variant_id"] for t in templates}
    assert all(html.escape(t["subject"], quote=False) in dom for t in templates)
    tokens = read(run_dir, "costs.json")["session"]["total_tokens"]
    assert f"{tokens:,}" in section(dom, "costs")
    assert f"screened: {len(templates)} variant(s)" in section(dom, "safety")


def test_simulated_data_is_named_in_the_title_and_the_heading(run_dir: Path) -> None:
    def title_and_heading() -> str:
        page = build_report(run_dir).read_text(encoding="utf-8")
        return "".join(re.findall(r"<title>.*?</title>|<h1>.*?</h1>", page, re.S))

    assert title_and_heading().count("Simulated data") == 2
    analysis = read(run_dir, "analysis.json")
    analysis["data"].update(source="observed", file="export.csv", file_sha256="ab" * 32)
    write(run_dir, "analysis.json", analysis)
    assert "Simulated data" not in title_and_heading()
    assert "ab" * 32 in (run_dir / REPORT_FILE).read_text(encoding="utf-8")


def test_a_sample_ratio_mismatch_and_a_tripped_guardrail_stand_out(run_dir: Path) -> None:
    analysis = read(run_dir, "analysis.json")
    analysis["srm"].update(chi2=31.5, p_value=6.7e-7, flagged=True)
    analysis["guardrail"].update(tripped=True, arms=["urgent"], text="unsubscribe rate rose significantly in urgent")
    write(run_dir, "analysis.json", analysis)
    verdict = section(build_report(run_dir).read_text(encoding="utf-8"), "verdict")
    assert (
        '<span class="no">MISMATCH: the arms&#39; sizes are not the planned allocation (chi-square 31.5, p = 6.70e-07'
        in verdict
    )
    assert '<span class="no">tripped</span>: unsubscribe rate rose significantly in urgent' in verdict


def test_text_from_files_and_models_is_shown_as_text_never_as_markup(run_dir: Path) -> None:
    """A subject and a segment name carrying tags are escaped on the page, and a segment name in a chart is text
    in an SVG image (with `$...$` shown as written, not parsed as a formula)."""
    subject, segment = "<img src=x onerror=alert(1)> hi", r"$\frac$ <script>alert(1)</script>"
    templates = read(run_dir, "templates.json")
    templates[0]["subject"] = subject
    write(run_dir, "templates.json", templates)
    analysis = read(run_dir, "analysis.json")
    analysis["segments"][segment] = analysis["segments"].pop("Lapsed")
    write(run_dir, "analysis.json", analysis)

    page = build_report(run_dir).read_text(encoding="utf-8")
    dom = rendered_dom(run_dir / REPORT_FILE)
    for text in (page, dom):
        assert inert(text) and sum(tag == "img" for tag, _ in elements(text)) == 3  # the charts alone
        assert html.escape(subject, quote=False) in text and html.escape(segment, quote=False) in text
    by_segment = charts(page)[2][0]
    assert any(label.startswith(segment) for label in labels(by_segment))


def test_a_run_not_yet_analyzed_reports_no_results_yet_with_its_variants(run_dir: Path) -> None:
    (run_dir / "analysis.json").unlink()
    page = build_report(run_dir).read_text(encoding="utf-8")
    assert f"No results yet: run `cpo analyze {run_dir} --simulate` or `--outcomes FILE`" in page
    assert "<img" not in page and "Simulated data" not in page
    assert page.count('class="variant"') == len(read(run_dir, "templates.json"))
    assert "screened: 20 variant(s) by local-policy; 0 blocked" in page


def test_the_same_run_gives_the_same_report_byte_for_byte(run_dir: Path) -> None:
    first = build_report(run_dir).read_bytes()
    assert build_report(run_dir).read_bytes() == first


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{not json", "analysis.json is unreadable"),
        ("[]", "analysis.json is not a JSON object"),
        ('{"arms": {}}', "analysis.json has no comparisons"),
        ('{"arms": {}, "comparisons": [], "srm": {}, "segments": {}, "mde": [], "guardrail": {}, "verdict": {},'
         ' "data": {}}', "analysis.json is malformed"),
    ],
)  # fmt: skip
def test_a_broken_analysis_is_one_line(run_dir: Path, content: str, says: str) -> None:
    (run_dir / "analysis.json").write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=says) as caught:
        build_report(run_dir)
    assert "\n" not in str(caught.value)
    assert not (run_dir / REPORT_FILE).exists()


def test_a_directory_that_is_not_a_run_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a cpo run directory"):
        build_report(tmp_path)
