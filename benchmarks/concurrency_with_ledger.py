"""benchmarks/concurrency.py with every tracker writing to a cost ledger (the shipped script turns it off)."""
import importlib.util
import sys
import tempfile
from pathlib import Path

repo = Path(sys.argv[1])
spec = importlib.util.spec_from_file_location("bench", repo / "benchmarks" / "concurrency.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
from cpo.accounting.ledger import Ledger
from cpo import CostTracker
import cpo
assert str(Path(cpo.__file__).resolve()).startswith(str(repo.resolve())), cpo.__file__
ledger = Ledger(Path(tempfile.mkdtemp()) / "ledger.sqlite")
bench.CostTracker = lambda: CostTracker(ledger=ledger)
code = bench.main(sys.argv[2:])
ledger.flush()
print("ledger rows:", sum(r["calls"] for r in ledger.sessions(10**6)), "late starts:", getattr(ledger, "late_starts", "n/a"))
sys.exit(code)
