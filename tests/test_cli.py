"""The `cpo` command line: what users run, with one-line errors and honest exit codes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from azure_server import email_drafter, error
from conftest import TEST_KEY

from cpo.campaign.rundir import OUTPUTS
from cpo.cli import main
from cpo.core.models import TONES
from cpo.core.resources import bundled


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def only_run_dir(root: Path = Path("runs")) -> Path:
    (run_dir,) = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
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


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    """`cpo run | head -1`: before, a BrokenPipeError traceback; now exit 141 (as a shell reports SIGPIPE), no
    traceback, and the run directory the command wrote is complete."""
    script = Path(sys.executable).parent / "cpo"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "OPENAI_", "CPO_"))}
    command = [str(script), "run", "--out", str(tmp_path / "runs")]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=env) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()  # the reader goes away after one line, like `head -1`
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=120)
    assert first.startswith(b"cpo run ") and code == 141 and "Traceback" not in err
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert (run_dir / "send_list.csv").is_file() and (run_dir / "costs.json").is_file()


def test_run_offline_writes_the_whole_campaign_and_its_costs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "run")
    assert code == 0, err
    assert "No LLM endpoint is configured" in err
    run_dir = only_run_dir()
    for name in (*OUTPUTS, "run.json", "log.jsonl"):
        assert (run_dir / name).is_file(), name
    variants = json.loads((run_dir / "variants.json").read_text())
    assert len(variants) == 5 * len(TONES)  # the sample's five segments, three tones and a control each
    assert all(v["validation"]["valid"] and v["source"] == "offline" for v in variants)
    costs = json.loads((run_dir / "costs.json").read_text())
    assert costs["session"]["calls"] == len(variants)
    (campaign,) = costs["runs"].values()  # every call lands on the campaign's root run
    assert campaign["name"] == f"campaign {run_dir.name}" and campaign["calls"] == 20
    assert sum(v["total_tokens"] for v in costs["variants"].values()) == costs["session"]["total_tokens"]
    assert "session: 20 calls" in out and "High-Value Recent" in out and "20 of 20" in out
    code, out, _ = run_cli(capsys, "costs", "--json")
    (session,) = json.loads(out)
    assert code == 0 and session["calls"] == 20 and session["runs"] == 1
    code, out, _ = run_cli(capsys, "costs", "--session", session["id"], "--emails", "--json")
    emails = json.loads(out)  # ... and the ledger keeps each email's calls too
    assert {e["id"] for e in emails} == {v["run_id"] for v in variants}
    assert {e["name"] for e in emails} >= {"email New Customer / urgent"} and all(e["calls"] == 1 for e in emails)


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
        (["generate", "--segment", "x", "--segments", "missing.json"], "error: segments file missing.json: No such"),
        (["generate", "--segment", "x", "--content", "nowhere"], "error: content directory nowhere does not exist"),
        (["run", "--customers", "missing.csv"], "error: customer file missing.csv does not exist"),
        (["run", "--config", "missing.yaml"], "error: campaign file missing.yaml does not exist"),
        (["run", "--suppress", "missing.txt"], "error: suppression file missing.txt does not exist"),
        (["run", "--resume", "runs/nothing"], "error: cannot resume runs/nothing: it has no run.json"),
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
    code, _, err = run_cli(capsys, "generate", "--segment", "Empty", "--segments", "segments.json")
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
    Path("limits.yaml").write_text("body_min_words: 100\nbody_max_words: 120\n")
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
    """The endpoint refuses every request after the first two: those emails are saved, the errors are listed,
    the campaign is still exported (control stands in where it can), exit 1, and --resume retries the rest."""
    answered: list[int] = []

    def two_then_refuse(request: dict[str, Any]) -> Any:
        answered.append(1)
        return email_drafter(request) if len(answered) <= 2 else error(400)

    live_server.responder = two_then_refuse
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", live_server.endpoint)
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT_NAME", "gpt-4o-mini")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", TEST_KEY)
    code, out, err = run_cli(capsys, "run", "--concurrency", "1")
    assert code == 1
    run_dir = only_run_dir()
    saved = json.loads((run_dir / "variants.json").read_text())
    bulk = "Business Bulk Buyer"
    assert [(v["segment"], v["tone"]) for v in saved] == [(bulk, "control"), (bulk, "urgent")]
    costs = json.loads((run_dir / "costs.json").read_text())
    assert len(costs["errors"]) == 18 and "Error code: 400" in err
    assert "High-Value Recent: 37 customer(s) get nothing: its control is not generated (see the errors below)" in out
    with (run_dir / "send_list.csv").open(encoding="utf-8") as handle:
        sent = {row["variant_id"] for row in csv.DictReader(handle)}
    assert sent == {saved[0]["variant_id"], saved[1]["variant_id"]}  # the bulk buyers get control or urgent

    live_server.responder = email_drafter
    requests_before = len(live_server.requests)
    code, out, err = run_cli(capsys, "run", "--resume", str(run_dir))
    assert code == 0, err
    assert len(live_server.requests) - requests_before == 18  # only the failed emails were tried again
    assert len(json.loads((run_dir / "variants.json").read_text())) == 20


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
    folder = Path("odd [x]")
    folder.mkdir()
    (folder / "rules.yaml").write_text(
        "segments:\n  - {name: 'Gold [/] Members [bold]', rule: \"tier = 'Gold'\"}\n"
        "  - {name: Others, rule: 'true'}\n  - {name: Nobody, rule: 'false'}\n",
        encoding="utf-8",
    )
    campaign = (bundled("data") / "campaign.yaml").read_text(encoding="utf-8")
    (folder / "campaign.yaml").write_text(campaign.replace("rules: segment_rules.yaml", "rules: rules.yaml"))
    code, out, err = run_cli(capsys, "run", "--config", str(folder / "campaign.yaml"), "--out", "odd [x]/runs")
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
            ["generate", "--segment", "x", "--segments", "segments.json"],
            "error: segments file segments.json: not UTF-8 text",
        ),
        (
            lambda: Path("customers.csv").write_bytes(b"customer_id,tier\nC1,Caf\xe9\n"),
            ["run", "--customers", "customers.csv"],
            "error: customer file customers.csv: not UTF-8 text",
        ),
        (
            lambda: Path("campaign.yaml").write_text("name: x\nrules: segment_rules.yaml\n"),
            ["run", "--config", "campaign.yaml"],
            "error: campaign file campaign.yaml: unsubscribe: Field required",
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
    ids=[
        "limits-yaml",
        "limits-key",
        "segments-utf8",
        "customers-utf8",
        "campaign-key",
        "dotenv-utf8",
        "out-unwritable",
    ],
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
    code, out, _ = run_cli(capsys, "costs", "--session", session["id"][:6], "--emails", "--json")
    emails = json.loads(out)
    assert code == 0 and len(emails) == 20 and {r["name"] for r in emails} >= {"email New Customer / urgent"}


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
    code, _, err = run_cli(capsys, "generate", "--segment", "New Customer", "--sender", str(sender))
    assert code == 2 and not Path("runs").exists()
    assert err.startswith(f"error: {sender}: greeting: the greeting must contain {{name}}")
    assert len(err.strip().splitlines()) == 1


def test_the_sender_signs_the_emails(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    sender = tmp_path / "sender.yaml"
    sender.write_text('brand: Acme\ngreeting: "Dear {name},"\nsign_off: "Cheers,\\nAcme"\n', encoding="utf-8")
    code, out, _ = run_cli(capsys, "generate", "--segment", "New Customer", "--sender", str(sender), "--json")
    body = json.loads(out)["body"]
    assert code == 0 and body.startswith('Dear {{ first_name | default: "there" }},') and body.endswith("Cheers,\nAcme")
