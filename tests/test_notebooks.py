"""The notebooks: committed clean, each on a stated offline default model (toy where a trained
model teaches something, tiny where random weights do), and each one executes headless on that
default, as ``make demo`` and ``make lab`` run it."""

from __future__ import annotations

import json

import pytest

from vltools import demo
from vltools.notebook import chosen_model

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


# Where random weights are the point, or a trained model teaches more (issue 18).
DEFAULTS = {
    "01": None,  # tiling: no model
    "02": "toy",
    "03": "toy",
    "04": "toy",
    "05": "tiny",  # video: toy knows single pictures of shapes, not videos or frame numbers
    "06": "toy",
    "07": "toy",
    "08": "toy",
    "09": "toy",
}


def test_every_notebook_states_an_offline_default_that_vltools_model_overrides():
    found = {p.name[:2]: demo.declared_model(p) for p in NOTEBOOKS}
    assert found == DEFAULTS, "a notebook's setup(default=...) changed; update DEFAULTS and say why"


def test_the_model_is_the_name_then_vltools_model_then_the_notebooks_default(monkeypatch):
    monkeypatch.delenv("VLTOOLS_MODEL", raising=False)
    assert chosen_model(default="toy") == "toy"
    monkeypatch.setenv("VLTOOLS_MODEL", "")
    assert chosen_model(default="toy") == "toy", "an empty VLTOOLS_MODEL counts as unset"
    monkeypatch.setenv("VLTOOLS_MODEL", "tiny")
    assert chosen_model(default="toy") == "tiny"
    assert chosen_model(name="OpenGVLab/InternVL2-1B", default="toy") == "OpenGVLab/InternVL2-1B"
    with pytest.raises(ValueError, match="default='' is not a model name"):
        chosen_model(default="")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_headless_on_its_default_model(path, tiny_path):
    nb = demo.execute(path, model=None, timeout=demo.TIMEOUT_S)
    expected = DEFAULTS[path.name[:2]]
    if expected is not None:  # the setup banner names the model that ran
        banner = "".join(
            nb.cells[next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")].outputs[0][
                "data"
            ]["text/plain"]
        )
        assert f"model: {expected}\n" in banner, banner
    errors = [
        output
        for cell in nb.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors, f"{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
