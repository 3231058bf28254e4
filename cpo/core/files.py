"""Reading a user's files with one-line errors, and writing files a reader (or a kill -9) never sees half of."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from cpo.core.errors import CpoError, InputError

M = TypeVar("M", bound=BaseModel)


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` in one step: write a temporary file beside it, then rename it over `path`.

    The temporary name carries the process id, so two processes writing the same file never share it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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
