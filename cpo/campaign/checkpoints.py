"""Where the campaign graph keeps its checkpoints: SQLite in the run directory, or Postgres shared between machines.

Resuming a thread re-runs only its unfinished tasks; the async saver is used because the sync driver
was measured to lose finished tasks across a kill -9.
"""

from __future__ import annotations

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

    # A generous busy timeout: a stopped run's last checkpoint writes may hold the file for a moment.
    async with aiosqlite.connect(run_dir / CHECKPOINTS, timeout=30) as conn:
        yield AsyncSqliteSaver(conn)
