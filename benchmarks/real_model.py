"""The email chain against a real local LLM: how many emails a small model gets right, and at what cost.

Stands up Qwen2.5-Coder-1.5B-Instruct (Q4_K_M) behind llama-cpp-python's OpenAI-compatible server on
127.0.0.1 (see benchmarks/local_llm.py; the model and the server are built and cached on first use,
about 20 minutes), then runs cpo's email chain, one email at a time, on a fixed set of requests:
two shipped segments x (urgent, informational, friendly, control). --quick runs 2 of them. --set NAME
runs the segments of benchmarks/segments/NAME.json instead (segments and offers written for issue 19's
labelled set, its held-out batch and its acceptance check, none of them the two shipped ones) x the
four tones.

Per email it prints: valid first time / valid after N repairs / invalid with reasons; valid before any
normalization; the normalizations; every model call (step, tokens in/out, seconds, repeated answer);
tokens; wall time. Then totals, with the seed, temperature, limits, prompt versions and model.
Every run also writes its figures as JSON to benchmarks/results/ (report every full run, not the best).

--record DIR writes the HTTP exchanges as VCR cassettes (one per email, api keys scrubbed), which
tests/test_real_model_replay.py replays offline. Recording uses a fixed port (8766) so the cassettes'
URLs are stable.

Usage: python benchmarks/real_model.py [--quick] [--set labelled|heldout|acceptance] [--temperature 0.2]
       [--seed 7] [--max-repairs 2] [--judge] [--record cassettes/real_model] [--cache DIR]
Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import local_llm

SEGMENTS = ("High-Value Recent", "New Customer")  # Gold tier credit, and the $9.99 a month / $99 a year plan
TONES = ("urgent", "informational", "friendly", "control")
QUICK = (("High-Value Recent", "urgent"), ("New Customer", "informational"))
RECORD_PORT = 8766
STEPS = ("draft", "rewrite", "fresh", "subject", "paragraph", "extend", "shorten", "judge")
RESULTS = Path(__file__).resolve().parent / "results"
SETS = Path(__file__).resolve().parent / "segments"


def segments_file(name: str | None) -> Path | None:
    """benchmarks/segments/<name>.json, or None for the shipped segments."""
    return SETS / f"{name}.json" if name else None


def requests_for(quick: bool, segment_set: str | None = None) -> list[tuple[str, str]]:
    if segment_set:
        names = [s["name"] for s in json.loads(segments_file(segment_set).read_text(encoding="utf-8"))]  # type: ignore[union-attr]
        return [(s, t) for s in names for t in TONES]
    return list(QUICK) if quick else [(s, t) for s in SEGMENTS for t in TONES]


def cassette_name(segment: str, tone: str) -> str:
    return f"{segment.lower().replace(' ', '-')}-{tone}.yaml"


def status_of(variant: Any) -> str:
    if variant.valid:
        return "valid first time" if variant.attempts == 1 else f"valid after {variant.attempts - 1} repair(s)"
    return "INVALID: " + "; ".join(variant.validation.reasons)


def describe(variant: Any, wall_s: float) -> list[str]:
    lines = [f"{variant.segment} / {variant.tone}: {status_of(variant)}"]
    lines.append(
        f"  valid before normalization: {'yes' if variant.valid_before_normalization else 'no'}; normalizations: "
        + (", ".join(n.code for n in variant.normalizations) or "none")
    )
    for step in variant.steps:
        flags = (" REPEATED" if step.repeated else "") + (" (varied)" if step.varied else "")
        failed = f" failed: {','.join(step.issues)}" if step.issues else ""
        error = f" error: {step.error}" if step.error else ""
        error += f" discarded: {step.discarded}" if step.discarded else ""
        lines.append(
            f"  {step.step:<8} {step.input_tokens:>5} in {step.output_tokens:>4} out {step.seconds:6.1f} s"
            f"{failed}{flags}{error}"
        )
    lines.append(
        f"  subject ({len(variant.subject)} chars): {variant.subject}\n"
        f"  body: {variant.validation.body_words} words; tokens {variant.usage.input_tokens} in + "
        f"{variant.usage.output_tokens} out; wall {wall_s:.1f} s"
    )
    return lines


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "cpo", "prompts"], capture_output=True, text=True)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    # A plain `kill` ends the run through the server's context manager, which stops the llama.cpp server: the
    # default SIGTERM action would leave it running, busy, on the same cores as the next run.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 requests instead of 8")
    parser.add_argument(
        "--set",
        dest="segment_set",
        choices=sorted(p.stem for p in SETS.glob("*.json")),
        help="the segments of benchmarks/segments/SET.json instead of the two shipped ones",
    )
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-repairs", type=int, default=2)
    parser.add_argument("--judge", action="store_true", help="also run the LLM grounding judge (same model)")
    parser.add_argument("--record", type=Path, metavar="DIR", help="write one VCR cassette per email to DIR")
    parser.add_argument("--cache", type=Path, help="model/server cache [CPO_BENCH_CACHE or ~/.cache/cpo-bench]")
    parser.add_argument("--timeout", type=float, default=300.0, help="CPO_LLM_TIMEOUT for the CPU model [300]")
    parser.add_argument("--prompts", type=Path, help="a prompts folder to try instead of prompts/ (CPO_PROMPTS_DIR)")
    args = parser.parse_args()

    model_path = local_llm.ensure_model(args.cache)
    python = local_llm.ensure_server_python(args.cache)
    port = RECORD_PORT if args.record else None
    with local_llm.LlamaServer(model_path, python, port=port, threads=2, seed=args.seed) as server:
        for key in [k for k in os.environ if k.startswith(("AZURE_OPENAI_", "OPENAI_", "CPO_"))]:
            del os.environ[key]
        os.environ.update(local_llm.environment_for(server))
        os.environ.update(
            {
                "CPO_LLM_TIMEOUT": str(args.timeout),
                "CPO_LLM_MAX_RETRIES": "1",
                "CPO_EMAIL_DEADLINE": str(args.timeout * 4),
                "CPO_LEDGER": "off",
            }
        )
        if args.prompts:
            os.environ["CPO_PROMPTS_DIR"] = str(args.prompts.resolve())
        return run(server, args)


def run(server: Any, args: argparse.Namespace) -> int:
    from cpo import ContentBundle, CostTracker, __version__
    from cpo.core.settings import Settings
    from cpo.email.chain import build_email_chain
    from cpo.email.template_control import template_variant
    from cpo.email.validation import ValidationLimits
    from cpo.llm.endpoints import EndpointNotes
    from cpo.llm.factory import build_chat_model

    settings = Settings()
    model = build_chat_model(settings, temperature=args.temperature, seed=args.seed)
    limits = ValidationLimits()
    chain = build_email_chain(
        model,
        settings=settings,
        limits=limits,
        max_repairs=args.max_repairs,
        offline_fallback=False,
        judge=args.judge,
        notes=EndpointNotes(),  # fresh: the first email pays for the method probe, as a new user's would
    )
    bundle = ContentBundle.load(segments_file=segments_file(args.segment_set))
    tracker = CostTracker(prices=chain.prices)
    recorder = None
    if args.record:
        import vcr  # type: ignore[import-untyped]

        args.record.mkdir(parents=True, exist_ok=True)
        recorder = vcr.VCR(
            record_mode="all",
            match_on=["method", "path", "body"],
            filter_headers=["authorization", "api-key", "x-api-key"],
            decode_compressed_response=True,
        )
    print(
        f"model {server.model_alias} on llama-cpp-python {local_llm.LLAMA_CPP_VERSION}, 2 threads; "
        f"temperature {args.temperature}, seed {args.seed}, max_repairs {args.max_repairs}, judge {args.judge}; "
        f"limits: subject <= {limits.subject_max_chars} chars, body {limits.body_min_words}-"
        f"{limits.body_max_words} words, >= {limits.min_citations} citations; cpo {__version__} ({git_commit()})",
        flush=True,
    )
    results = []
    started_all = time.perf_counter()
    for segment, tone in requests_for(args.quick, args.segment_set):
        request = bundle.request(segment, tone)
        started = time.perf_counter()
        if recorder is not None:
            cassette = args.record / cassette_name(segment, tone)
            cassette.unlink(missing_ok=True)  # record mode "all" appends to a cassette: start each one empty
            with recorder.use_cassette(str(cassette)):
                variant = chain.invoke(request, {"callbacks": [tracker]})
        else:
            variant = chain.invoke(request, {"callbacks": [tracker]})
        wall = time.perf_counter() - started
        print("\n".join(describe(variant, wall)), flush=True)
        results.append(
            {
                "cassette": cassette_name(segment, tone),
                "wall_s": round(wall, 2),
                "variant": json.loads(variant.model_dump_json()),
            }
        )

    # As `cpo run` does: a segment whose model control ended invalid gets cpo's own (free, source: template).
    # Reported beside the model's emails, never counted among them.
    templates = []
    for r in results:
        v = r["variant"]
        if v["tone"] == "control" and not v["validation"]["valid"]:
            own = template_variant(bundle.request(v["segment"], "control"), limits)
            state = "valid" if own.valid else "INVALID: " + "; ".join(own.validation.reasons)
            print(f"{v['segment']} / control: cpo's own (source: template, no call): {state}", flush=True)
            templates.append({"variant": json.loads(own.model_dump_json())})

    variants = [r["variant"] for r in results]
    valid = [v for v in variants if v["validation"]["valid"]]
    within = [v for v in valid if v["attempts"] - 1 <= 2]
    steps = [s for v in variants for s in v["steps"]]
    repeated = sum(s["repeated"] for s in steps)
    repeated_unvaried = sum(
        1
        for v in variants
        for before, after in zip(v["steps"], v["steps"][1:], strict=False)
        if before["repeated"] and not after["varied"]
    )
    totals = {
        "emails": len(variants),
        "valid": len(valid),
        "valid_first_time": sum(v["attempts"] == 1 for v in valid),
        "valid_within_2_repairs": len(within),
        "valid_before_normalization": sum(v["valid_before_normalization"] for v in variants),
        "normalized_emails": sum(bool(v["normalizations"]) for v in variants),
        "calls": tracker.session.calls,
        "refused_calls": tracker.session.refused_calls,
        "failed_calls": tracker.session.failed_calls,
        "input_tokens": tracker.session.input_tokens,
        "output_tokens": tracker.session.output_tokens,
        "repeated_answers": repeated,
        "repeats_asked_again_unvaried": repeated_unvaried,
        "steps": {k: n for k in STEPS if (n := sum(s["step"] == k for s in steps))},
        "wall_s": round(time.perf_counter() - started_all, 1),
        "method": chain.method,
    }
    # What one email cpo would send cost: every call and token of the run over the valid emails.
    tokens = tracker.session.input_tokens + tracker.session.output_tokens
    totals["calls_per_valid"] = round(tracker.session.calls / len(valid), 2) if valid else None  # none valid
    totals["tokens_per_valid"] = round(tokens / len(valid)) if valid else None
    print(
        f"\ntotals: {totals['valid']} of {totals['emails']} valid ({totals['valid_first_time']} first time, "
        f"{totals['valid_within_2_repairs']} within 2 repairs); {totals['valid_before_normalization']} valid with no "
        f"normalization; {totals['calls']} calls ({totals['refused_calls']} format refusals, {totals['failed_calls']} "
        f"failed), {totals['input_tokens']} in + {totals['output_tokens']} out tokens; steps {totals['steps']}; "
        f"{totals['repeated_answers']} repeated answers, {totals['repeats_asked_again_unvaried']} re-asked unvaried; "
        f"{totals['wall_s']} s; per valid email {totals['calls_per_valid']} calls and {totals['tokens_per_valid']} "
        f"tokens; structured output: {chain.method}; prompt versions "
        f"{sorted({v['prompt_version'] for v in variants})}"
    )
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    kind = args.segment_set or ("quick" if args.quick else "full")
    out = RESULTS / f"real_model-{kind}-r{args.max_repairs}-{stamp}.json"
    settings_used = {
        "model": server.model_alias,
        "base_url": server.base_url,
        "server": f"llama-cpp-python {local_llm.LLAMA_CPP_VERSION}, --n_threads 2",
        "temperature": args.temperature,
        "seed": args.seed,
        "max_repairs": args.max_repairs,
        "judge": args.judge,
        "segments": args.segment_set or "shipped",
        "prompts": str(args.prompts) if args.prompts else "prompts/",
        "commit": git_commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": " ".join(["python", "benchmarks/real_model.py", *sys.argv[1:]]),
    }
    totals["template_controls"] = len(templates)
    totals["template_controls_valid"] = sum(t["variant"]["validation"]["valid"] for t in templates)
    report = {"settings": settings_used, "totals": totals, "emails": results, "template_controls": templates}
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".txt").write_text(reading_sheet([*results, *templates]), encoding="utf-8")
    if args.record:
        (args.record / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")
    return 0


def reading_sheet(results: list[dict[str, Any]]) -> str:
    """Each email as the customer would read it, beside cpo's verdict: what a person labels (docs/sendable.md)."""
    out = []
    for r in results:
        v = r["variant"]
        verdict = (
            "valid"
            if v["validation"]["valid"]
            else "INVALID: " + "; ".join(i["code"] for i in v["validation"]["issues"])
        )
        source = " (cpo's own, source: template)" if v["source"] == "template" else ""
        out.append(
            f"=== {v['segment']} / {v['tone']}{source}: cpo says {verdict}\nSubject: {v['subject']}\n\n{v['body']}\n"
        )
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
