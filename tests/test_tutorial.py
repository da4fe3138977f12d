"""docs/tutorial.ipynb: committed without outputs, and runs top to bottom in a Jupyter kernel of this environment.

The notebook's own cells assert what must hold (array shapes and the one-step shift, the masked accuracy checks,
that training lowers the loss); an assertion or any other error in a cell fails the test with its traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "tutorial.ipynb"


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    assert [i for i, cell in enumerate(code) if cell.outputs or cell.execution_count is not None] == []


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # The kernel inherits these: one intra-op thread, as conftest.py sets for the other tests (on a shared 2-core
    # machine PyTorch's threads wait on each other), and IPython's and Jupyter's files out of the home directory.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    work = tmp_path / "work"
    work.mkdir()
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(work)}})
    client.execute()

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    # The install cell found charmt importable, so it installed nothing and printed nothing.
    assert "CHARMT_REPOSITORY" in code[0].source and code[0].outputs == []
    figures = [cell.source.splitlines()[-1] for cell in code if any("image/png" in o.get("data", {})
                                                                   for o in cell.outputs)]
    assert figures == [
        'charmt.training_figure(seed.history, title="seed")',
        'charmt.training_figure(tiny.history, title="tiny")',
        "charmt.attention_figure(source_chars, output_chars, weights)",
        'charmt.length_figure(greedy.by_length, title="tiny, greedy, validation sentences")',
    ]
    for model in ("tutorial-seed", "tutorial-tiny"):
        assert (work / "models" / model / "model.safetensors").is_file()
