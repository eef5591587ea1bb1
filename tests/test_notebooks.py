"""Structure of the teaching notebooks (fast; executing them is `pytest --nbval-lax notebooks/`).

Each notebook is saved without outputs, declares the python3 kernel (so JupyterLab opens it
without asking), states its claims in assertion cells, and holds no credentials.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

#: the teaching notebooks of the notebook issue; later work may add more
EXPECTED = [
    "01_quickstart",
    "02_what_is_federation",
    "03_architecture",
    "04_vertical_horizontal_hybrid",
    "05_distribution_strategies",
    "06_cross_database_joins",
    "07_performance",
    "08_failures",
    "09_transactions",
    "10_implementations",
]
ALL = sorted({p.stem for p in NOTEBOOKS.glob("*.ipynb")} | set(EXPECTED))

# scheme://user:password@host, or a password/token/secret assigned a literal value
_CREDENTIALS = re.compile(
    r"://[^/\s:@'\"]+:[^/\s@'\"]+@|(password|passwd|token|secret)\s*[=:]\s*['\"][^'\"$]",
    re.IGNORECASE,
)


def _load(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def _code(cell: nbformat.NotebookNode) -> str:
    """The cell's Python, IPython magics and shell escapes blanked out."""
    if cell.source.lstrip().startswith("%%"):
        return ""  # a cell magic's body is not Python (%%federate holds SQL)
    lines = cell.source.splitlines()
    return "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in lines)


def test_the_seven_teaching_notebooks_are_there():
    found = {p.stem for p in NOTEBOOKS.glob("*.ipynb")}
    assert set(EXPECTED) <= found, f"missing: {sorted(set(EXPECTED) - found)}"


@pytest.mark.parametrize("name", ALL)
def test_notebook_is_valid_and_saved_clean(name):
    nb = _load(name)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    assert nb.metadata.kernelspec.language == "python"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: a code cell was saved with outputs"
            assert cell.execution_count is None, f"{name}: a code cell has an execution count"


@pytest.mark.parametrize("name", ALL)
def test_notebook_teaches_and_asserts(name):
    nb = _load(name)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith(f"# {name[:2]} ·")
    markdown = [c for c in nb.cells if c.cell_type == "markdown"]
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(markdown) >= 5, f"{name}: too little prose"
    asserting = [c for c in code if re.search(r"^\s*assert\b|assert_same_result", c.source, re.M)]
    assert len(asserting) >= 3, f"{name}: claims must be stated in assertion cells"
    assert any("%matplotlib inline" in c.source for c in code)


@pytest.mark.parametrize("name", ALL)
def test_notebook_code_parses_and_holds_no_credentials(name):
    nb = _load(name)
    for cell in nb.cells:
        assert not _CREDENTIALS.search(cell.source), f"{name}: credential-like text: {cell.source}"
        if cell.cell_type == "code":
            ast.parse(_code(cell), filename=f"{name}.ipynb")
