"""Reading a user's YAML file into a pydantic model, with the one-line errors every such file gets."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from cpo.errors import CpoError

M = TypeVar("M", bound=BaseModel)


def load_yaml_model(path: Path, model: type[M], what: str, error: type[CpoError], *, empty_ok: bool = False) -> M:
    """`model` from the YAML in `path`; any problem is `error("<what> <path>: <reason>")` on one line.

    The reason names the line of a YAML syntax error, or the key and the rule of a schema error.
    """
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
        key = ".".join(str(part) for part in err["loc"]) or "(top level)"
        raise error(f"{what} {path}: {key}: {err['msg']}") from None
