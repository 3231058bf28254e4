"""`scripts/mutate.py` stays usable: every mutation still names code that occurs exactly once, its mutant
compiles, and the tests it points at exist (a refactor that moves the code must move the mutation with it)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_every_mutation_applies_to_todays_code(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("mutate", ROOT / "scripts" / "mutate.py")
    assert spec is not None and spec.loader is not None
    mutate = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "mutate", mutate)  # dataclasses look their module up there
    spec.loader.exec_module(mutate)
    assert len(mutate.MUTATIONS) >= 21 and len({m.name for m in mutate.MUTATIONS}) == len(mutate.MUTATIONS)
    for m in mutate.MUTATIONS:
        source = (ROOT / m.path).read_text(encoding="utf-8")
        assert source.count(m.old) == 1, f"{m.name}: its code occurs {source.count(m.old)} times in {m.path}"
        assert m.old != m.new and all((ROOT / t).is_file() for t in m.tests), m.name
        # A mutant that does not compile is "caught" by any test: it must break a promise, not the syntax.
        compile(source.replace(m.old, m.new), m.path, "exec")
