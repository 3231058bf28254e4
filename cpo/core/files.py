"""Reading a user's files with one-line errors, and writing files a reader (or a kill -9) never sees half of."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from cpo.core.errors import CpoError, InputError

M = TypeVar("M", bound=BaseModel)


def temporary_name(path: Path) -> Path:
    """Where `path` is written before it is renamed into place: hidden, beside it, named for this process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write (from Python or another writer such as DuckDB's COPY), renamed
    over `path` when the block ends: a reader, or a kill -9, sees the old file or the whole new one, never half.

    The temporary name carries the process id, so two processes writing the same file never share it; it is
    removed if the block fails.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomically(path: Path, data: str | bytes) -> None:
    """Replace `path` in one step with `data` (text is written as UTF-8): see `replacing`."""
    with replacing(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file, or one InputError line naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at {exc.start})") from None
    except OSError as exc:
        raise InputError(f"{what} {path}: {exc.strerror or exc}") from None


def load_yaml_model(path: Path, model: type[M], what: str, error: type[CpoError], *, empty_ok: bool = False) -> M:
    """`model` from the YAML in `path`; any problem is `error("<what> <path>: <reason>")` on one line.

    The reason names the line of a YAML syntax error, or the key and the rule of a schema error.
    """
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"{what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise error(f"{what} {path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        raise error(f"{what} {path} is not valid YAML{line}" + (f": {problem}" if problem else "")) from None
    if raw is None and empty_ok:
        raw = {}
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(part) for part in err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")  # a validator's own sentence, as written
        raise error(f"{what} {path}: {key + ': ' if key else ''}{message}") from None
