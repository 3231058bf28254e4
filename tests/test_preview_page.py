"""`preview.html`: the campaign's variants side by side, opened in a real browser (headless Chromium, Debian's
`chromium` package, which `.ci/run` installs). Without a browser the test skips with its reason, except in CI,
where it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_runner import the_run_dir

from cpo.cli import main

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser() -> str:
    found = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no headless browser installed: .ci/run installs Debian's chromium")
        pytest.skip("no headless browser installed (apt-get install -y chromium)")
    return found


def rendered_dom(page: Path) -> str:
    """The page's DOM after Chromium has loaded and laid it out (no network: a file URL, no script)."""
    done = subprocess.run(
        [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


def test_the_sample_campaigns_preview_shows_every_sent_variant_in_a_browser() -> None:
    assert main(["run"]) == 0
    run_dir = the_run_dir()
    dom = rendered_dom(run_dir / "preview.html")

    templates = json.loads((run_dir / "templates.json").read_text(encoding="utf-8"))
    sent = {t["variant_id"] for t in templates if t["sendable"]}
    shown = set(re.findall(r'data-variant="([^"]+)"', dom))
    assert sent and sent <= shown  # every sendable variant is on the page
    assert dom.count("<iframe") == len(shown)  # each with its email rendered
    segments = set(re.findall(r'data-segment="([^"]+)"', dom))
    with (run_dir / "segments.csv").open(encoding="utf-8") as handle:
        assert segments == {line.split(",")[0] for line in list(handle)[1:] if line.strip()}
    for template in templates:
        assert template["subject"].replace("&", "&amp;") in dom


def test_text_from_a_model_is_shown_as_text_never_as_markup(tmp_path: Path) -> None:
    """A subject carrying a tag is escaped on the page, and the email frame is sandboxed (no script runs)."""
    from cpo.campaign.agents.preview_page import write_preview
    from cpo.campaign.campaign_file import default_campaign_file, load_campaign
    from cpo.core.models import EmailVariant

    assert main(["run"]) == 0
    first = json.loads((the_run_dir() / "variants.json").read_text(encoding="utf-8"))[0]
    variant = EmailVariant.model_validate(first)
    hostile = variant.model_copy(update={"subject": '<script>alert("x")</script> & <b>bold</b>'})
    cell = (hostile.segment, "control")
    page = write_preview(
        tmp_path, [hostile.segment], ["control"], [hostile], {cell: hostile.variant_id}, {cell: 3}, {},
        load_campaign(default_campaign_file()),
    )  # fmt: skip
    text = page.read_text(encoding="utf-8")
    assert "<script>" not in text and "&lt;script&gt;" in text and "<b>bold</b>" not in text
    assert '<iframe sandbox=""' in text
    assert "<script>alert" not in rendered_dom(page).split("<iframe")[0]
