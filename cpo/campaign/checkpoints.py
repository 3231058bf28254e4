"""Where the campaign graph keeps its checkpoints: SQLite in the run directory, or Postgres shared between machines.

Resuming a thread re-runs only its unfinished tasks; the async saver is used because the sync driver
was measured to lose finished tasks across a kill -9.

A graph that fails while checkpoint writes are in flight can leave a cancelled write's cursor in a
reference cycle: its SQLite statement stays unfinalized, so the connection, closed from Python, stays
open inside SQLite holding its write lock until the cycle is collected. The next connection to the file
in the same process (a resume from Python, a notebook) then waits on the busy timeout for every write
(measured: a resume stuck for 9 minutes). So the garbage is collected after a failure (the lock is then
released for other processes too) and before a connection opens (the failed run's cursors may have been
reachable from its exception until then).
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from cpo.core.errors import ConfigError

CHECKPOINTS = "checkpoints.sqlite"


@asynccontextmanager
async def open_checkpointer(run_dir: Path, url: str | None = None) -> AsyncIterator[Any]:
    """Postgres when `url` is given (runs shared between machines), else SQLite in the run directory."""
    if url:
        try:
            from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        except ImportError:
            raise ConfigError("CPO_CHECKPOINT_URL needs the postgres extra: pip install 'cpo[postgres]'") from None
        async with AsyncPostgresSaver.from_conn_string(url) as saver:
            await saver.setup()
            yield saver
        return
    import aiosqlite
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    gc.collect()
    try:
        # A generous busy timeout: a stopped run's last checkpoint writes may hold the file for a moment.
        async with aiosqlite.connect(run_dir / CHECKPOINTS, timeout=30) as conn:
            yield AsyncSqliteSaver(conn)
    except BaseException:
        gc.collect()  # finalize the statements of cancelled writes: their connection's lock goes with them
        raise
