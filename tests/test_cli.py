"""The `cpo` command line: what users run, with one-line errors and honest exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from azure_server import error, ok
from conftest import TEST_KEY

from cpo import ContentBundle, ValidationLimits
from cpo.cli import main
from cpo.models import TONES
from cpo.offline import draft_email, read_brief
from cpo.prompts import PromptSet


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def only_run_dir(root: Path = Path("runs")) -> Path:
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    return run_dir


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for command in ("run", "generate", "try-prompts", "costs", "check"):
        assert f"\n    {command}" in out


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "cpo"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "try-prompts" in done.stdout


def test_run_offline_writes_variants_costs_and_ledger(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "run")
    assert code == 0, err
    assert "No LLM endpoint is configured" in err
    run_dir = only_run_dir()
    variants = json.loads((run_dir / "variants.json").read_text())
    segments = ContentBundle.load().segments
    assert len(variants) == len(segments) * len(TONES)
    assert all(v["validation"]["valid"] and v["source"] == "offline" for v in variants)
    costs = json.loads((run_dir / "costs.json").read_text())
    assert costs["session"]["calls"] == len(variants)
    assert sum(r["total_tokens"] for r in costs["runs"].values()) == costs["session"]["total_tokens"]
    assert {r["name"] for r in costs["runs"].values()} == {f"email {s.name} / {t}" for s in segments for t in TONES}
    assert "session: 20 calls" in out and "High-Value Recent" in out
    code, out, _ = run_cli(capsys, "costs", "--json")
    (session,) = json.loads(out)
    assert code == 0 and session["calls"] == 20 and session["runs"] == 20


def test_costs_without_a_ledger_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_cli(capsys, "costs")
    assert code == 2
    assert err.strip().count("\n") == 0 and err.startswith("error: no cost ledger at runs/ledger.sqlite")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "--segment", "Nobody"], "error: no segment named 'Nobody'"),
        (
            ["generate", "--segment", "New Customer", "--tone", "shouty"],
            "error: cpo generate: argument --tone: invalid",
        ),
        (["run", "--segments", "missing.json"], "error: segments file missing.json: No such file"),
        (["run", "--content", "nowhere"], "error: content directory nowhere does not exist"),
        (["run", "--prompts", "nowhere"], "error: prompts directory nowhere does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert err.startswith(message)
    assert err.strip().count("\n") == 0
    assert not Path("runs").exists()  # nothing half-made


def test_invalid_segments_file_names_the_segment(capsys: pytest.CaptureFixture[str]) -> None:
    Path("segments.json").write_text(json.dumps([{"name": "Empty", "features": {}, "offer": "x"}]))
    code, _, err = run_cli(capsys, "run", "--segments", "segments.json")
    assert code == 2
    assert "segments.json: segment 1: features" in err


def test_bad_configuration_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CPO_LLM_TIMEOUT", "-3")
    code, _, err = run_cli(capsys, "run")
    assert code == 2
    assert err.strip() == "error: CPO_LLM_TIMEOUT: Input should be greater than 0 (got '-3')"


def test_generate_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "generate", "--segment", "high-value recent", "--tone", "urgent", "--json")
    variant = json.loads(out)
    assert code == 0
    assert variant["tone"] == "urgent" and variant["validation"]["valid"]
    assert len(variant["citations"]) >= 2 and variant["citations"][0]["quote"]


def test_try_prompts_passes_offline(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "try-prompts")
    assert code == 0
    assert out.count("subject length:") == 3 and "✗" not in out
    assert "all 3 tones passed" in out


def test_try_prompts_fails_when_a_check_fails(capsys: pytest.CaptureFixture[str]) -> None:
    Path("limits.yaml").write_text("body_max_words: 120\n")
    code, out, _ = run_cli(capsys, "try-prompts", "--limits", "limits.yaml")
    assert code == 1
    assert "body word count:" in out and "✗" in out
    assert "3 of 3 tones failed" in out


def test_manual_prompt_test_script_wraps_try_prompts() -> None:
    script = Path(__file__).resolve().parent.parent / "scripts" / "manual_prompt_test.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "all 3 tones passed" in done.stdout


def test_check_offline_says_no_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "check")
    assert code == 1 and out.startswith("❌ no LLM endpoint is configured")


def test_check_against_a_live_endpoint(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, live_server: Any
) -> None:
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", live_server.endpoint)
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT_NAME", "gpt-4o-mini")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", TEST_KEY)
    code, out, _ = run_cli(capsys, "check")
    assert code == 0 and out.startswith("✅ Azure OpenAI") and "Connection successful" in out
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "wrong-key")
    code, out, _ = run_cli(capsys, "check")
    assert code == 1 and out.startswith("❌") and "401" in out


def test_a_run_that_fails_midway_keeps_what_it_produced(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, live_server: Any
) -> None:
    """The endpoint starts refusing after two emails: those two are saved, the errors are listed, exit 1."""
    bundle = ContentBundle.load()
    first = [bundle.request(bundle.segments[0].name, tone) for tone in TONES[:2]]
    drafts = [draft_email(read_brief(PromptSet.load().render(r, ValidationLimits()))) for r in first]  # type: ignore[arg-type]
    live_server.script("gpt-4o-mini", *[ok(tool_args=d) for d in drafts], *[error(400)] * 30)
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", live_server.endpoint)
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT_NAME", "gpt-4o-mini")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", TEST_KEY)
    code, _, err = run_cli(capsys, "run", "--concurrency", "1")
    assert code == 1
    run_dir = only_run_dir()
    saved = json.loads((run_dir / "variants.json").read_text())
    assert [(v["segment"], v["tone"]) for v in saved] == [(bundle.segments[0].name, t) for t in TONES[:2]]
    costs = json.loads((run_dir / "costs.json").read_text())
    assert len(costs["errors"]) == len(bundle.segments) * len(TONES) - 2
    assert "Error code: 400" in err


# -- input is data, never markup; every bad input is one line -------------------------------------------


def write_segments(path: Path, name: str) -> Path:
    path.write_text(
        json.dumps(
            [
                {
                    "name": name,
                    "features": {"tier": "Gold", "orders per year": 14},
                    "offer": "Upgrade to Northwind Plus.",
                    "snippets": ["member-discount", "plus-delivery"],
                }
            ]
        )
    )
    return path


def test_square_brackets_are_data_not_markup(capsys: pytest.CaptureFixture[str]) -> None:
    """Before: `--segment "[/oops]"` crashed with a MarkupError traceback."""
    code, _, err = run_cli(capsys, "generate", "--segment", "[/oops]")
    assert code == 2
    assert err.strip().startswith("error: no segment named '[/oops]'; known:")


def test_a_segment_name_with_markup_is_printed_as_is(capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a segment named `Gold [/] Members` generated and saved everything, then crashed printing the table."""
    Path("odd [x]").mkdir()
    segments = write_segments(Path("odd [x]") / "segments.json", "Gold [/] Members [bold]")
    code, out, err = run_cli(capsys, "run", "--segments", str(segments), "--out", "odd [x]/runs")
    assert code == 0, err
    assert "Gold [/] Members [bold]" in out
    assert "odd [x]/runs/" in out  # a path with brackets is printed whole


def test_the_entra_hint_names_the_extra(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "azure.identity", None)
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://r.openai.azure.com")
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT_NAME", "mini")
    code, _, err = run_cli(capsys, "generate", "--segment", "New Customer")
    assert code == 2 and "pip install 'cpo[azure]'" in err


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (
            lambda: Path("limits.yaml").write_text("body_max_words: [150\n"),
            ["run", "--limits", "limits.yaml"],
            "error: limits file limits.yaml is not valid YAML (line 2): expected ',' or ']', but got '<stream end>'",
        ),
        (
            lambda: Path("limits.yaml").write_text("body_max_wrds: 150\n"),
            ["run", "--limits", "limits.yaml"],
            "error: limits file limits.yaml: body_max_wrds: Extra inputs are not permitted",
        ),
        (
            lambda: Path("segments.json").write_bytes(b'[{"name": "Caf\xe9"}]'),
            ["run", "--segments", "segments.json"],
            "error: segments file segments.json: not UTF-8 text",
        ),
        (
            lambda: Path(".env").write_bytes(b"CPO_MODEL_NAME=caf\xe9\n"),
            ["run"],
            "error: .env: not UTF-8 text (byte 0xe9",
        ),
        (
            lambda: Path("afile").write_text("x"),
            ["run", "--out", "afile/runs"],
            "error: cannot create the runs directory afile/runs",
        ),
    ],
    ids=["limits-yaml", "limits-key", "segments-utf8", "dotenv-utf8", "out-unwritable"],
)
def test_bad_files_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], setup: Any, args: list[str], message: str
) -> None:
    setup()
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert err.startswith(message), err
    assert err.strip().count("\n") == 0


@pytest.mark.parametrize(
    ("ledger", "run_message", "costs_message"),
    [
        (
            lambda: Path("afile").write_text("x") and "afile/ledger.sqlite",
            "afile is not a directory",
            "no cost ledger at afile/ledger.sqlite",
        ),
        (
            lambda: Path("bad.sqlite").write_text("not a database " * 50) and "bad.sqlite",
            "file is not a database",
            "file is not a database",
        ),
    ],
    ids=["unwritable", "corrupt"],
)
def test_an_unusable_ledger_is_one_line_for_run_and_costs(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    ledger: Any,
    run_message: str,
    costs_message: str,
) -> None:
    monkeypatch.setenv("CPO_LEDGER", ledger())
    for command, message in (("run", run_message), ("costs", costs_message)):
        code, _, err = run_cli(capsys, command)
        assert code == 2, err
        assert err.startswith("error: ") and message in err and err.strip().count("\n") == 0


def test_costs_of_a_session_that_does_not_exist_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    """Before: an empty table and exit 0."""
    assert run_cli(capsys, "run")[0] == 0
    code, _, err = run_cli(capsys, "costs", "--session", "nonexistent")
    assert code == 2 and err.startswith("error: no session 'nonexistent' in the cost ledger")


def test_costs_accepts_an_id_prefix_and_names_the_session_after_the_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_cli(capsys, "run", "--concurrency", "8")[0] == 0
    code, out, _ = run_cli(capsys, "costs", "--json")
    (session,) = json.loads(out)
    assert session["name"] == "cpo run --concurrency 8"  # not one of its emails
    code, out, _ = run_cli(capsys, "costs", "--session", session["id"][:6], "--json")
    runs = json.loads(out)
    assert code == 0 and len(runs) == 20 and {r["name"] for r in runs} >= {"email New Customer / urgent"}


def test_the_ledger_follows_out_and_cpo_runs_dir(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger lives in the runs dir the run used, not wherever the current directory happens to be."""
    assert run_cli(capsys, "run", "--out", "campaign")[0] == 0
    assert Path("campaign/ledger.sqlite").is_file() and not Path("runs").exists()
    monkeypatch.setenv("CPO_RUNS_DIR", "elsewhere")
    assert run_cli(capsys, "run")[0] == 0
    assert Path("elsewhere/ledger.sqlite").is_file()
    code, out, _ = run_cli(capsys, "costs", "--json")
    assert code == 0 and len(json.loads(out)) == 1  # `cpo costs` reads the same default
    code, out, _ = run_cli(capsys, "costs", "--ledger", "campaign/ledger.sqlite", "--json")
    assert code == 0 and len(json.loads(out)) == 1


def test_version_and_flags_without_placeholders(capsys: pytest.CaptureFixture[str]) -> None:
    from cpo import __version__

    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"cpo {__version__}"
    code, out, _ = run_cli(capsys, "run", "--help")
    assert code == 0
    assert "<bool>" not in out and "  --strict " in out
    for key in ("subject_max_chars", "body_min_words", "min_citations", "urgency_phrases", "allowed_caps"):
        assert key in out


def test_help_does_not_import_langchain_or_the_openai_sdk() -> None:
    code = (
        "import sys; from cpo.cli import main; main(['--help']); "
        "print(sorted(m for m in ('openai', 'langchain_core', 'langchain_openai', 'rich') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.strip().splitlines()[-1] == "[]"
    for args in (["--version"], ["run", "--concurrency", "0"]):
        probe = f"import sys; from cpo.cli import main; main({args!r}); print('openai' in sys.modules)"
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
        assert done.stdout.strip().splitlines()[-1] == "False"


def test_generate_and_try_prompts_record_their_calls_in_the_ledger(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "generate", "--segment", "New Customer")[0] == 0
    assert run_cli(capsys, "try-prompts")[0] == 0
    code, out, _ = run_cli(capsys, "costs", "--json")
    assert code == 0
    sessions = {s["name"]: s["calls"] for s in json.loads(out)}
    assert sessions == {"cpo generate --segment 'New Customer'": 1, "cpo try-prompts": 3}


def test_judge_needs_a_real_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "generate", "--segment", "New Customer", "--judge")
    assert code == 2
    assert err.strip() == (
        "error: the offline drafting model cannot judge grounding; configure an endpoint to use --judge"
    )


def test_a_bad_sender_file_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    sender = tmp_path / "sender.yaml"
    sender.write_text('brand: Acme\ngreeting: "Hello,"\n', encoding="utf-8")
    code, _, err = run_cli(capsys, "run", "--sender", str(sender))
    assert code == 2 and not Path("runs").exists()
    assert err.startswith(f"error: {sender}: greeting: Value error, the greeting must contain {{name}}")
    assert len(err.strip().splitlines()) == 1


def test_the_sender_signs_the_emails(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    sender = tmp_path / "sender.yaml"
    sender.write_text('brand: Acme\ngreeting: "Dear {name},"\nsign_off: "Cheers,\\nAcme"\n', encoding="utf-8")
    code, out, _ = run_cli(capsys, "generate", "--segment", "New Customer", "--sender", str(sender), "--json")
    body = json.loads(out)["body"]
    assert code == 0 and body.startswith('Dear {{ first_name | default: "there" }},') and body.endswith("Cheers,\nAcme")
