"""The example notebooks (examples/*.ipynb) run top to bottom in a fresh kernel of this interpreter.

Each notebook checks its own results with assert statements (a plane with one point per member, a barrier
≥ 0, metrics recomputed by hand), so a wrong number fails here like an exception does. The kernel inherits
this process's environment (conftest's shared XLA cache) and runs in an empty temporary directory, so
nothing relies on the repository being the working directory.
"""

from __future__ import annotations

import os
import re

import nbclient
import nbformat
import pytest
from conftest import REPO

NOTEBOOKS = ("metrics.ipynb", "analyse_a_run.ipynb")
PIP_LINE = '!pip install -q "jaxens @ git+https://github.com/jaxens/jaxens"'


def _read(name):
    return nbformat.read(os.path.join(REPO, "examples", name), as_version=4)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_layout(name):
    """A markdown introduction, then the Colab-only install line; committed without outputs."""
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    first_code = next(cell for cell in nb.cells if cell.cell_type == "code")
    assert first_code is nb.cells[1]
    lines = [line.strip() for line in first_code.source.splitlines()]
    assert 'if "google.colab" in sys.modules:' in lines[lines.index(PIP_LINE) - 1]
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{name}: outputs committed"


def _slug(heading):
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_links(name):
    """Every docs/definitions.md#anchor a markdown cell links to names a heading there."""
    with open(os.path.join(REPO, "docs", "definitions.md")) as f:
        anchors = {_slug(line.lstrip("#")) for line in f if line.startswith("#")}
    text = "\n".join(cell.source for cell in _read(name).cells if cell.cell_type == "markdown")
    linked = set(re.findall(r"definitions\.md#([\w-]+)", text))
    assert linked, f"{name}: no link to docs/definitions.md"
    assert linked <= anchors, f"{name}: no such heading in docs/definitions.md: {sorted(linked - anchors)}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path, monkeypatch):
    """Every cell executes without error (nbclient raises CellExecutionError naming the cell otherwise)."""
    monkeypatch.setenv("CI", "true")  # No progress bars from the training subprocess.
    monkeypatch.delenv("MPLBACKEND", raising=False)  # The kernel's inline backend: figures need no display.
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # The run analyse_a_run.ipynb trains goes under tmp_path.
    nb = _read(name)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    errors = [out for cell in nb.cells for out in cell.get("outputs", []) if out.output_type == "error"]
    assert not errors
