"""notebooks/quickstart.ipynb executes headlessly, start to end, on synthetic data (a Jupyter kernel
of this interpreter, as a user's would run it)."""
import json
import pathlib

import nbclient
import nbformat

NOTEBOOK = pathlib.Path(__file__).parent.parent / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKSTART_RESULTS_DIR", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "commit it without outputs"
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the plot cell shows no figure"
    # the sweep: 3 learning rates × 2 seeds, each with its record and its checkpoint
    study = tmp_path / "quickstart"
    records = [json.loads(f.read_text()) for f in (study / "runs").glob("*.json")]
    assert len(records) == 6 and {r["status"] for r in records} <= {"done", "diverged"}
    assert len([d for d in (study / "checkpoints").iterdir() if (d / "metadata.json").is_file()]) == 6
    # the restore cell's own check (restored test accuracy = recorded) ran and printed
    text = "".join(o.get("text", "") for o in outputs)
    assert "restored" in text and "recorded" in text
