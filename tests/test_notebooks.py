"""The notebooks: committed clean, and each one executes headless against the tiny model."""

from __future__ import annotations

import json

import pytest

from vltools import demo

NOTEBOOKS = demo.notebooks()
SETUP_LINES = ("from vltools.notebook import setup", "env = setup(")


def test_there_is_a_numbered_sequence_of_notebooks():
    assert NOTEBOOKS, f"no notebooks in {demo.NOTEBOOKS}"
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert numbers == sorted(set(numbers)), f"numbers repeat or are out of order: {numbers}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_carries_no_outputs_counts_or_widget_state(path):
    nb = json.loads(path.read_text())
    dirty = [
        i
        for i, cell in enumerate(nb["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count"))
    ]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs or execution counts"
    assert "widgets" not in nb.get("metadata", {}), f"{path.name} carries widget state"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_opens_with_title_purpose_and_the_setup_cell(path):
    cells = json.loads(path.read_text())["cells"]
    first_md = "".join(cells[0]["source"])
    assert cells[0]["cell_type"] == "markdown" and first_md.startswith("# "), path.name
    assert len(first_md.strip().splitlines()) >= 2, f"{path.name}: title without a purpose"
    first_code = next(c for c in cells if c["cell_type"] == "code")
    source = "".join(first_code["source"])
    assert all(line in source for line in SETUP_LINES), (
        f"{path.name}: first code cell is not the setup"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_keeps_its_logic_in_the_package(path):
    cells = json.loads(path.read_text())["cells"]
    defs = [
        i
        for i, c in enumerate(cells)
        if c["cell_type"] == "code"
        and any(line.lstrip().startswith(("def ", "class ")) for line in c["source"])
    ]
    assert not defs, (
        f"{path.name}: cells {defs} define functions or classes; move them into vltools"
    )


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_headless_against_the_tiny_model(path, tiny_path):
    nb = demo.execute(path, model="tiny", timeout=demo.TIMEOUT_S)
    errors = [
        output
        for cell in nb.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors, f"{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
