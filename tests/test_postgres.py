"""Campaign checkpoints in Postgres (CPO_CHECKPOINT_URL): a run, and a resume after a crash, on a real server.

A throwaway Postgres cluster is started on a loopback port when the machine has its binaries (Debian's
`postgresql` package: initdb and pg_ctl); otherwise the tests are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.runnables import RunnableLambda
from test_pipeline import Crash, Flaky, inputs

from cpo.accounting.tracker import CostTracker
from cpo.campaign.checkpoints import open_checkpointer
from cpo.campaign.graph import build_pipeline
from cpo.campaign.kept import KeptEmails
from cpo.campaign.nodes import Tools
from cpo.cli import main
from cpo.email.chain import build_email_chain
from cpo.llm.offline import OfflineChatModel


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(versions[-1]) if versions else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("no Postgres binaries (initdb, pg_ctl) on this machine: install Debian's postgresql to run this")
    # Postgres refuses to run as root: run it as the `postgres` user when we are root.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start Postgres as another user")
    base = Path(tempfile.mkdtemp(prefix="cpo-pg-"))
    data = base / "data"
    if as_user:
        shutil.chown(base, "postgres")
    port = _free_port()
    try:
        subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "cpo"], check=True, capture_output=True)
        options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={base}"
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", str(base / "log"), "-w", "start"],
            check=True,
            capture_output=True,
            timeout=60,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"could not start a Postgres cluster: {exc}")
    try:
        yield f"postgresql://cpo@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


async def _graph_run(run_dir: Path, url: str, chain: Any, thread: str, *, resume: bool = False) -> Any:
    async with open_checkpointer(run_dir, url) as saver:
        graph = build_pipeline(Tools(chain), saver)
        config = {"configurable": {"thread_id": thread}, "callbacks": [CostTracker()]}
        return await graph.ainvoke(None if resume else {"inputs": inputs(run_dir)}, config)


@pytest.mark.waits
def test_a_crashed_run_resumes_from_its_postgres_checkpoint(postgres_url: str, tmp_path: Path) -> None:
    flaky = Flaky()
    with pytest.raises(Crash):
        asyncio.run(_graph_run(tmp_path, postgres_url, RunnableLambda(lambda r: r, afunc=flaky), "pg-crash"))
    assert not (tmp_path / "checkpoints.sqlite").exists()  # the checkpoints went to Postgres
    # Kept: the emails whose files were written before the crash. (`flaky.done` also counts emails the crash
    # cancelled between the chain's answer and the file: those are generated again, as they must be.)
    kept = {f"{v['segment']}/{v['tone']}" for v in KeptEmails(tmp_path).all().values()}
    assert 0 < len(kept) < 20
    again: list[str] = []
    inner = build_email_chain(OfflineChatModel())

    async def counting(request: Any) -> Any:
        variant = await inner.ainvoke(request)
        again.append(f"{variant.segment}/{variant.tone}")
        return variant

    chain = RunnableLambda(lambda r: r, afunc=counting)
    out = asyncio.run(_graph_run(tmp_path, postgres_url, chain, "pg-crash", resume=True))
    assert len(out["variants"]) == 20 and len(again) == 20 - len(kept)  # only the unkept ones ran
    assert not set(again) & kept  # no kept email was paid for again
    assert (tmp_path / "send_list.csv").is_file()


@pytest.mark.waits
def test_cpo_run_checkpoints_in_postgres_when_the_url_is_set(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CPO_CHECKPOINT_URL", postgres_url)
    assert main(["run"]) == 0
    (run_dir,) = [p for p in Path("runs").iterdir() if p.is_dir() and not p.name.startswith(".")]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["checkpointer"] == "postgres" and postgres_url not in json.dumps(record)  # no URL, no password
    assert not (run_dir / "checkpoints.sqlite").exists()
    assert main(["run", "--resume", str(run_dir)]) == 0  # the finished thread is found in Postgres again
    assert "20 of 20" in capsys.readouterr().out
