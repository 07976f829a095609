"""``make demo``: what it says while it runs, and what its pages show a reader."""

from __future__ import annotations

import json

import nbformat
import pytest

from vltools import demo


def _notebook(path, *cells):
    nb = nbformat.v4.new_notebook()
    for kind, source in cells:
        make = nbformat.v4.new_markdown_cell if kind == "md" else nbformat.v4.new_code_cell
        nb.cells.append(make(source))
    nbformat.write(nb, path)
    return path


def test_the_summary_is_the_whole_first_paragraph_not_its_first_line(tmp_path):
    path = _notebook(
        tmp_path / "09_x.ipynb",
        (
            "md",
            "# 09 · Title\n\nFirst line of the paragraph\ncontinues `here` and\nends here.\n\nNext.",
        ),
    )
    title, summary = demo.title_and_summary(path)
    assert title == "09 · Title"
    assert summary == "First line of the paragraph continues `here` and ends here."


def test_every_shipped_notebook_summary_ends_a_sentence():
    for path in demo.notebooks():
        _, summary = demo.title_and_summary(path)
        assert summary.rstrip().endswith((".", ")", ":")), f"{path.name}: {summary!r}"


def test_the_index_renders_inline_markdown_instead_of_showing_backticks():
    rendered = demo.inline_html("Uses `TileGrid` and **bold** <script>")
    assert "<code>TileGrid</code>" in rendered and "<strong>bold</strong>" in rendered
    assert "`" not in rendered and "<script>" not in rendered
    assert not rendered.startswith("<p>")


def test_a_static_widget_picture_says_it_is_a_snapshot_and_how_to_get_the_live_control():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("w")
    cell.outputs = [
        nbformat.v4.new_output(
            "display_data",
            data={
                demo.WIDGET_MIME: {"model_id": "x", "version_major": 2, "version_minor": 0},
                "image/png": "iVBORw0KGgo=\n",
                "text/plain": "TileExplorer(...)",
            },
        )
    ]
    nb.cells.append(cell)
    nb.metadata["widgets"] = {"state": {}}
    data = demo.static_copy(nb).cells[0].outputs[0]["data"]
    assert demo.WIDGET_MIME not in data
    assert "snapshot" in data["text/html"] and "make lab" in data["text/html"]
    assert "data:image/png;base64,iVBORw0KGgo=" in data["text/html"]
    assert demo.WIDGET_MIME in nb.cells[0].outputs[0]["data"], "the original is left alone"


@pytest.mark.slow
def test_the_demo_announces_each_notebook_and_the_kernel_stays_quiet(tmp_path, monkeypatch, capfd):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    _notebook(folder / "01_one.ipynb", ("md", "# 01 · One\n\nA first notebook."), ("code", "1 + 1"))
    _notebook(folder / "02_two.ipynb", ("md", "# 02 · Two\n\nA second one."), ("code", "print(2)"))
    monkeypatch.setattr(demo, "NOTEBOOKS", folder)
    monkeypatch.setattr(demo, "OUT", tmp_path / "out")
    lines: list[str] = []
    built = demo.build(model="not-tiny", progress=lines.append)
    assert [b.cached for b in built] == [False, False]
    assert lines[0] == "[1/2] 01_one.ipynb: running ..."
    assert lines[1].startswith("[1/2] 01_one.ipynb: done in ")
    assert lines[3].startswith("[2/2] 02_two.ipynb: done in ")
    err = capfd.readouterr().err
    assert "without encryption" not in err and "WARNING" not in err, err
    again: list[str] = []
    demo.build(model="not-tiny", progress=again.append)
    assert again == [
        "[1/2] 01_one.ipynb: unchanged since the last run, kept",
        "[2/2] 02_two.ipynb: unchanged since the last run, kept",
    ]
    index = (tmp_path / "out" / "index.html").read_text()
    assert "A second one." in index
    assert json.loads((tmp_path / "out" / "02_two.ipynb").read_text())["cells"][1]["outputs"]


def test_the_index_says_which_model_each_page_ran_on(tmp_path, monkeypatch):
    folder, out = tmp_path / "notebooks", tmp_path / "out"
    folder.mkdir()
    out.mkdir()
    setup = "from vltools.notebook import setup\nenv = setup({})\nenv"
    for name, args in [("01_a", "model=False"), ("02_b", 'default="toy"'), ("03_c", "")]:
        _notebook(
            folder / f"{name}.ipynb",
            ("md", f"# {name}\n\nAbout {name}."),
            ("code", setup.format(args)),
        )
        (out / f"{name}.html").write_text("<html></html>")
    monkeypatch.setattr(demo, "NOTEBOOKS", folder)
    monkeypatch.setattr(demo, "OUT", out)
    assert [demo.declared_model(p) for p in demo.notebooks()] == [
        None,
        "toy",
        "OpenGVLab/InternVL2-1B",
    ]
    index = demo.write_index(model=None).read_text()
    assert "01_a</a> <small>(ran on no model)" in index
    assert "02_b</a> <small>(ran on the <code>toy</code> model)" in index
    assert "03_c</a> <small>(ran on the <code>OpenGVLab/InternVL2-1B</code> model)" in index
    assert "each notebook on its default offline model" in index
    forced = demo.write_index(model="tiny").read_text()
    assert forced.count("ran on the <code>tiny</code> model") == 3
    assert "against the tiny model (VLTOOLS_MODEL). tiny has random weights" in forced


@pytest.mark.slow
def test_a_notebook_run_on_its_default_sees_no_vltools_model_and_a_named_one_sees_it(
    tmp_path, monkeypatch
):
    path = _notebook(
        tmp_path / "01_env.ipynb",
        ("md", "# 01 · Env\n\nWhat the kernel sees."),
        ("code", "import os\nprint(repr(os.environ.get('VLTOOLS_MODEL')))"),
    )
    monkeypatch.setenv("VLTOOLS_MODEL", "from-the-shell")
    default = demo.execute(path, model=None)
    assert default.cells[1].outputs[0]["text"] == "None\n"
    named = demo.execute(path, model="tiny")
    assert named.cells[1].outputs[0]["text"] == "'tiny'\n"
    import os

    assert os.environ["VLTOOLS_MODEL"] == "from-the-shell", "this process's environment is restored"
