"""The notebooks run top to bottom offline, as CI executes them: the generation playground and the experiment
analysis.

The kernel subprocess inherits the hermetic environment from conftest (no AZURE_OPENAI_*/OPENAI_*/CPO_*
variables, cwd in a tmp dir), so the notebook uses the offline drafting model and needs no network.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOK = NOTEBOOKS / "generation_playground.ipynb"
ANALYSIS = NOTEBOOKS / "experiment_analysis.ipynb"
TONES = ("urgent", "informational", "friendly", "control")


def _output_text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output.get("text", ""))
        for value in output.get("data", {}).values():
            parts.append(value if isinstance(value, str) else "")
    return "\n".join(parts)


def _cell(nb: nbformat.NotebookNode, cell_id: str) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if c.get("id") == cell_id)


@pytest.mark.parametrize("path", [NOTEBOOK, ANALYSIS], ids=lambda p: p.stem)
def test_committed_notebook_has_no_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"cell {cell.id} has stored outputs"


@pytest.mark.waits
def test_notebook_runs_offline(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError (with the traceback) if any cell fails

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors

    text = _output_text(_cell(nb, "variants-table"))
    assert text, "the variants DataFrame cell produced no output"
    missing = [tone for tone in TONES if tone not in text]
    assert not missing, f"variants table does not mention {missing}:\n{text[:2000]}"
    assert "offline drafting model" in _output_text(_cell(nb, "setup"))


@pytest.mark.waits
def test_the_experiment_analysis_notebook_runs_offline_and_says_its_data_is_simulated(tmp_path: Path) -> None:
    nb = nbformat.read(ANALYSIS, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert _output_text(_cell(nb, "analyze")).startswith("Simulated data: ")
    plot = _cell(nb, "lift-plot")
    assert any("image/png" in o.get("data", {}) for o in plot.outputs), "the lift plot drew nothing"
    table = _output_text(_cell(nb, "segment-table"))
    for segment in ("Business Bulk Buyer", "High-Value Recent", "Lapsed", "New Customer", "Regular"):
        assert segment in table
    (run_dir,) = [p for p in (tmp_path / "notebook-runs").iterdir() if p.is_dir()]
    assert (run_dir / "analysis.json").is_file() and (run_dir / "report.html").is_file()
