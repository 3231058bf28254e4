"""The campaign pipeline as a LangGraph graph: the sample campaign end to end, and resume after a failure."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.runnables import RunnableLambda

from cpo.accounting.tracker import CostTracker
from cpo.campaign.checkpoints import open_checkpointer
from cpo.campaign.graph import build_pipeline
from cpo.campaign.nodes import Tools
from cpo.core.models import EmailRequest, EmailVariant
from cpo.core.resources import bundled
from cpo.email.chain import build_email_chain
from cpo.llm.offline import OfflineChatModel

CUSTOMERS = str(bundled("data") / "customers.csv")


def inputs(run_dir: Path) -> dict[str, Any]:
    return {"customers": CUSTOMERS, "campaign": None, "suppress": None, "seed": 7, "run_dir": str(run_dir)}


async def run_graph(run_dir: Path, chain: Any, tracker: CostTracker, *, resume: bool = False) -> Any:
    async with open_checkpointer(run_dir) as saver:
        graph = build_pipeline(Tools(chain), saver)
        config = {"configurable": {"thread_id": "run-1"}, "callbacks": [tracker]}
        return await graph.ainvoke(None if resume else {"inputs": inputs(run_dir)}, config)


def test_the_sample_campaign_runs_end_to_end(tmp_path: Path) -> None:
    tracker = CostTracker()
    out = asyncio.run(run_graph(tmp_path, build_email_chain(OfflineChatModel()), tracker))
    assert len(out["variants"]) == 20 and tracker.session.calls == 20  # 5 segments x 4 arms
    assert out["assignment"]["total"] == 241 and out["delivery"] == {
        "substituted": [],
        "unsent": [],
        "unsent_customers": {},
        "address_dropped": {},
        "rendered": None,
        "withheld": {},
    }
    for name in ("segments.csv", "assignments.csv", "send_list.csv", "templates.json"):
        assert (tmp_path / name).is_file(), name
    with (tmp_path / "assignments.csv").open(encoding="utf-8") as handle:
        assert sum(1 for _ in csv.DictReader(handle)) == 241
    # Customer rows stay out of graph state: only summaries, requests and variants are checkpointed.
    assert "first_name" not in str(out["segments"]) and "C000001" not in str(out)


class Crash(BaseException):
    """Stands in for the process dying: not an email's error (those fail one email), it stops the graph."""


class Flaky:
    """A chain whose 6th call crashes once 5 emails are done: the graph stops with some emails generated."""

    def __init__(self) -> None:
        self.inner = build_email_chain(OfflineChatModel())
        self.calls = 0
        self.done: list[str] = []

    async def __call__(self, request: EmailRequest) -> EmailVariant:
        self.calls += 1
        if self.calls == 6:
            while len(self.done) < 5:
                await asyncio.sleep(0.01)
            raise Crash("the process died")
        variant = await self.inner.ainvoke(request)
        self.done.append(f"{variant.segment}/{variant.tone}")
        return variant


def test_resume_re_runs_only_the_emails_that_did_not_finish(tmp_path: Path) -> None:
    flaky = Flaky()
    first = RunnableLambda(lambda r: r, afunc=flaky)
    with pytest.raises(Crash):
        asyncio.run(run_graph(tmp_path, first, CostTracker()))
    kept = {
        f"{v['segment']}/{v['tone']}"
        for v in (json.loads(p.read_text(encoding="utf-8")) for p in (tmp_path / "emails").glob("*.json"))
    }
    assert 0 < len(kept) < 20  # the emails that finished before the failure were kept as they finished

    again: list[str] = []
    inner = build_email_chain(OfflineChatModel())

    async def counting(request: EmailRequest) -> EmailVariant:
        variant = await inner.ainvoke(request)
        again.append(f"{variant.segment}/{variant.tone}")
        return variant

    out = asyncio.run(run_graph(tmp_path, RunnableLambda(lambda r: r, afunc=counting), CostTracker(), resume=True))
    assert len(out["variants"]) == 20
    assert not set(again) & kept  # no kept email was generated (paid for) again
    assert sorted(again + sorted(kept)) == sorted(f"{v['segment']}/{v['tone']}" for v in out["variants"].values())
    assert (tmp_path / "send_list.csv").is_file()


def test_resume_refuses_changed_inputs(tmp_path: Path) -> None:
    from cpo.campaign.rundir import check_resume, input_fingerprint, record_run
    from cpo.core.errors import InputError

    customers = tmp_path / "customers.csv"
    customers.write_bytes(Path(CUSTOMERS).read_bytes())
    run_inputs = {**inputs(tmp_path), "customers": str(customers)}
    fingerprint = input_fingerprint(run_inputs)  # type: ignore[arg-type]
    record_run(tmp_path, run_inputs, fingerprint)  # type: ignore[arg-type]
    check_resume(tmp_path, run_inputs, input_fingerprint(run_inputs))  # type: ignore[arg-type]

    original = customers.read_bytes()
    customers.write_bytes(original + b"C999999,Zed,30,Austin,Gold,9,100,5,0.3,0.05,true\n")
    with pytest.raises(InputError, match="its customers changed since the run started; start a new run instead"):
        check_resume(tmp_path, run_inputs, input_fingerprint(run_inputs))  # type: ignore[arg-type]
    customers.write_bytes(original)
    changed_seed = {**run_inputs, "seed": 8}
    with pytest.raises(InputError, match="its seed changed"):
        check_resume(tmp_path, changed_seed, input_fingerprint(changed_seed))  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"has no run\.json"):
        check_resume(tmp_path / "elsewhere", run_inputs, fingerprint)  # type: ignore[arg-type]


def test_the_readmes_python_campaign_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's campaign snippet is executed as written, so it stays true."""
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    (example,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "build_pipeline" in b]
    exec(compile(example, "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out.strip()
    assert "'control':" in out and out.endswith("{} 20")  # arms, nothing withheld, 20 emails
    assert Path("runs/from-python/send_list.csv").is_file()


def test_a_failed_run_does_not_leave_the_checkpoint_file_locked_for_the_next_connection(tmp_path: Path) -> None:
    """A cancelled checkpoint write can leave its cursor in a reference cycle: SQLite keeps the closed
    connection (and its write lock) alive until the cycle is collected, and a resume in the same process
    waited the busy timeout for every write. This builds that state on purpose; the next write must not wait."""
    import gc

    class Crash(Exception):
        pass

    insert = (
        "INSERT INTO writes (thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel) "
        "VALUES (?, '', 'c', 'task', ?, 'x')"
    )

    async def crash_with_a_write_in_flight() -> None:
        async with open_checkpointer(tmp_path) as saver:
            await saver.setup()
            for idx in range(3):
                await saver.conn.execute(insert, ("seed", idx))
            await saver.conn.commit()
            reading = await saver.conn.execute("SELECT idx FROM writes WHERE thread_id = 'seed'")
            await reading.fetchone()  # a read left part-way, as a cancelled checkpoint read leaves it
            await saver.conn.execute(insert, ("t", 0))  # and a write transaction, never committed
            cycle: list[Any] = [reading]
            cycle.append(cycle)  # only the cycle collector can free the cursor (and finalize its statement)
            del reading, cycle
            raise Crash

    async def write_again() -> None:
        async with open_checkpointer(tmp_path) as saver:
            await saver.setup()
            await saver.conn.execute(insert, ("t", 1))
            await saver.conn.commit()

    gc.disable()  # as if the collector had not run yet (it runs when it likes; the failure was intermittent)
    try:
        with pytest.raises(Crash):
            asyncio.run(crash_with_a_write_in_flight())
        asyncio.run(asyncio.wait_for(write_again(), timeout=5))  # the busy timeout is 30 s: this waited for it
    finally:
        gc.enable()
