"""Real-model text, offline: the email chain replayed on what Qwen2.5-Coder-1.5B-Instruct really answered.

`benchmarks/real_model.py --record cassettes/real_model` ran the chain against llama-cpp-python's
OpenAI-compatible server on loopback (127.0.0.1:8766) and stored every HTTP exchange, one cassette per
email, and what the chain made of them in `summary.json`. This test replays those exchanges, in the
recorded order, through the current chain: it must send the very same requests (a changed prompt or
repair strategy fails here with "Can't overwrite existing cassette": re-record, see cassettes/README.md)
and reach the same emails, steps, normalizations and token counts from real, imperfect model text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cpo import ContentBundle, CostTracker, Settings, build_chat_model
from cpo.email.chain import build_email_chain
from cpo.llm.endpoints import EndpointNotes

FOLDER = Path(__file__).resolve().parent.parent / "cassettes" / "real_model"
SUMMARY = FOLDER / "summary.json"

pytestmark = pytest.mark.skipif(not SUMMARY.is_file(), reason="no real-model cassettes recorded")


def recorded() -> dict[str, Any]:
    return dict(json.loads(SUMMARY.read_text(encoding="utf-8")))


def replay_vcr() -> Any:
    import vcr  # type: ignore[import-untyped]

    return vcr.VCR(record_mode="none", match_on=["method", "path", "body"], decode_compressed_response=True)


def test_the_chain_reproduces_the_recorded_real_model_run() -> None:
    summary = recorded()
    settings_used = summary["settings"]
    settings = Settings(
        openai_base_url=settings_used["base_url"],
        openai_api_key="sk-local",
        model_name=settings_used["model"],
        timeout=300,
        max_retries=1,
        email_deadline=1200,
    )
    model = build_chat_model(settings, temperature=settings_used["temperature"], seed=settings_used["seed"])
    chain = build_email_chain(
        model,
        settings=settings,
        max_repairs=settings_used["max_repairs"],
        offline_fallback=False,
        notes=EndpointNotes(),
    )
    bundle = ContentBundle.load()
    tracker = CostTracker()
    recorder = replay_vcr()
    for email in summary["emails"]:
        expected = email["variant"]
        request = bundle.request(expected["segment"], expected["tone"])
        with recorder.use_cassette(str(FOLDER / email["cassette"])) as cassette:
            variant = chain.invoke(request, {"callbacks": [tracker]})
            assert cassette.all_played, f"{email['cassette']}: not every recorded exchange was replayed"
            served = [json.loads(r["body"]["string"]) for r in cassette.responses if r["status"]["code"] == 200]
        label = f"{variant.segment} / {variant.tone}"
        assert variant.subject == expected["subject"] and variant.body == expected["body"], label
        assert variant.validation.valid == expected["validation"]["valid"], label
        assert [i.code for i in variant.validation.issues] == [i["code"] for i in expected["validation"]["issues"]]
        assert [(s.step, s.repeated) for s in variant.steps] == [(s["step"], s["repeated"]) for s in expected["steps"]]
        assert [n.code for n in variant.normalizations] == [n["code"] for n in expected["normalizations"]], label
        # The tracker's tokens are the server's own usage figures, exactly.
        assert variant.usage.input_tokens == sum(r["usage"]["prompt_tokens"] for r in served), label
        assert variant.usage.output_tokens == sum(r["usage"]["completion_tokens"] for r in served), label
    assert chain.method == summary["totals"]["method"]


def test_the_recorded_run_is_the_one_the_readme_reports() -> None:
    """The summary is the benchmark's own output; its totals are recomputed here, not trusted."""
    summary = recorded()
    variants = [e["variant"] for e in summary["emails"]]
    totals = summary["totals"]
    assert totals["emails"] == len(variants)
    assert totals["valid"] == sum(v["validation"]["valid"] for v in variants)
    assert totals["valid_before_normalization"] == sum(v["valid_before_normalization"] for v in variants)
