"""``make demo``: execute every notebook headless on the offline models and write HTML.

``python -m vltools.demo [--only 01 05] [--force]`` builds the offline tiny checkpoint, runs each
``notebooks/NN_*.ipynb`` with nbclient, writes the executed notebook and its HTML under
``build/notebooks/`` with an ``index.html``, and prints where they are. Each notebook runs on
its own default (its setup cell's ``setup(default=...)``: ``toy`` where a trained model teaches
something, ``tiny`` where random weights do) unless ``VLTOOLS_MODEL`` names one model for all.
A notebook whose inputs (its own cells, the vltools sources and data files) have not changed
since its last successful run is not executed again, so the second run is fast.

Widgets carry a static picture of their state (``image/png`` beside the live view, see
``vltools.widgets.StaticFallback``); the HTML keeps that picture and drops the live view,
which would need a kernel, so the pages are useful offline.

The demo runs the repository's notebooks, so it needs a checkout (``git clone``, then ``make
demo``); an installed vltools has no ``notebooks/`` folder and says so.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vltools.constants import DEFAULT_MODEL, MODEL_ENV

PACKAGE = Path(__file__).resolve().parent
REPO = PACKAGE.parent  # the checkout (an installed vltools has no notebooks/ beside it)
NOTEBOOKS = REPO / "notebooks"
OUT = REPO / "build" / "notebooks"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
TIMEOUT_S = 300


@dataclass(frozen=True)
class Built:
    """One notebook of the demo: where its HTML is, and whether it ran or came from the cache."""

    notebook: Path
    html: Path
    title: str
    summary: str
    seconds: float
    cached: bool


def notebooks(only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks in order, optionally only those whose name starts with ``only``.

    Raises ``FileNotFoundError`` where there is no notebooks folder: an installed vltools,
    not a checkout of the repository.
    """
    if not NOTEBOOKS.is_dir():
        raise FileNotFoundError(
            f"No notebooks folder at {NOTEBOOKS}: the demo runs the notebooks of a vltools "
            "checkout, and an installed vltools does not ship them. Clone the repository and "
            "run `make demo` (or `python -m vltools.demo`) from its root."
        )
    found = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        found = [p for p in found if any(p.name.startswith(prefix) for prefix in only)]
        if not found:
            raise ValueError(f"No notebook in {NOTEBOOKS} starts with any of {only}.")
    return found


def declared_model(notebook: Path) -> str | None:
    """The model ``notebook`` runs on by default: its setup cell's ``setup(default=...)``.

    None for a notebook that loads no model (``setup(model=False)``) or has no setup cell;
    ``OpenGVLab/InternVL2-1B`` for a bare ``setup()``.
    """
    for cell in json.loads(notebook.read_text())["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] != "code" or "setup(" not in source:
            continue
        if re.search(r"setup\([^)]*model\s*=\s*False", source):
            return None
        found = re.search(r"setup\([^)]*default\s*=\s*[\"']([^\"']+)[\"']", source)
        return found.group(1) if found else DEFAULT_MODEL
    return None


def inputs_key(notebook: Path, model: str | None) -> str:
    """A hash of everything a notebook's output depends on: its cells, vltools (sources, sample
    files, the toy weights), model (None: each notebook's default)."""
    digest = hashlib.sha256(("\0default" if model is None else model).encode())
    digest.update(notebook.read_bytes())
    files = (p for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in sorted(files):
        digest.update(path.relative_to(PACKAGE).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def execute(notebook: Path, *, model: str | None = None, timeout: int = TIMEOUT_S):
    """Run ``notebook`` in a fresh kernel with ``VLTOOLS_MODEL=model``; return the executed node.

    ``model=None`` runs it on its own default: the kernel gets no ``VLTOOLS_MODEL`` (one set
    in this process is left out), so the setup cell's ``setup(default=...)`` decides.
    Raises ``nbclient.exceptions.CellExecutionError`` naming the failing cell on any error.
    """
    import nbformat
    from nbclient import NotebookClient
    from traitlets.config import Config

    nb = nbformat.read(notebook, as_version=4)
    env = {**os.environ, "MPLBACKEND": "agg", "HF_HUB_OFFLINE": "1"}
    env.pop(MODEL_ENV, None)
    if model is not None:
        env[MODEL_ENV] = model
    # IPC sockets (files only this user can open) instead of TCP on localhost: nothing crosses
    # the network stack, and the kernel has no reason to warn about unencrypted TCP.
    sockets = tempfile.mkdtemp(prefix="vltools-kernel-")
    config = Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(sockets, "k")}})
    client = NotebookClient(
        nb,
        config=config,
        kernel_name="python3",
        timeout=timeout,
        resources={"metadata": {"path": str(notebook.parent)}},
        record_timing=False,
    )
    previous = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(previous)
        shutil.rmtree(sockets, ignore_errors=True)
    return nb


SNAPSHOT_NOTE = (
    "A snapshot of the live widget as the notebook left it. To move its controls, open the "
    "notebook in JupyterLab: <code>make lab</code>."
)


def static_copy(nb):
    """A copy of an executed notebook for HTML: live widget views replaced by their pictures.

    Each picture is captioned as a snapshot with the way to the live control, since the text
    around it talks about moving sliders that a static page cannot move.
    """
    import copy

    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_MIME not in data:
                continue
            data.pop(WIDGET_MIME)
            png = data.get("image/png")
            if png:
                src = "data:image/png;base64," + "".join(png.split())
                data["text/html"] = (
                    f"<figure style='margin:0'><img src='{src}' alt='widget snapshot'>"
                    f"<figcaption style='color:#555;font-size:90%'>{SNAPSHOT_NOTE}"
                    "</figcaption></figure>"
                )
            else:
                data["text/plain"] = "(interactive widget: open the notebook in JupyterLab)"
    return nb


def to_html(nb) -> str:
    """The notebook as a standalone HTML page (JupyterLab look, no network needed)."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(static_copy(nb))
    return body


def title_and_summary(notebook: Path) -> tuple[str, str]:
    """The first markdown cell's heading and its first paragraph, whole (Markdown source)."""
    cells = json.loads(notebook.read_text())["cells"]
    for cell in cells:
        if cell["cell_type"] == "markdown":
            text = "".join(cell["source"]).strip().splitlines()
            title = text[0].lstrip("# ").strip() if text else notebook.stem
            paragraph: list[str] = []
            for line in text[1:]:
                if line.strip():
                    paragraph.append(line.strip())
                elif paragraph:
                    break
            return title, " ".join(paragraph)
    return notebook.stem, ""


def inline_html(markdown: str) -> str:
    """One paragraph of Markdown as inline HTML (code, emphasis, links), without the ``<p>``."""
    import mistune

    rendered = mistune.create_markdown(escape=True)(markdown).strip()  # raw HTML is escaped
    return rendered.removeprefix("<p>").removesuffix("</p>")


def build(
    *,
    only: list[str] | None = None,
    force: bool = False,
    model: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Built]:
    """Execute (or reuse) each notebook and write its HTML and the index. Returns what was built.

    ``model=None`` runs each notebook on its own default (``toy`` or ``tiny``); a name runs
    every notebook on that model.

    ``progress``, if given, receives one line as each notebook starts and one as it finishes.
    """
    say = progress or (lambda line: None)
    import nbformat

    from vltools.testing import tiny_checkpoint

    todo = notebooks(only)  # first: an installed vltools has none, and says so
    OUT.mkdir(parents=True, exist_ok=True)
    if model in (None, "tiny"):
        tiny_checkpoint()  # built once, before any kernel needs it
    built = []
    for number, notebook in enumerate(todo, 1):
        step = f"[{number}/{len(todo)}] {notebook.name}"
        html_path = OUT / f"{notebook.stem}.html"
        key_path = OUT / f".{notebook.stem}.key"
        key = inputs_key(notebook, model)
        title, summary = title_and_summary(notebook)
        if not force and html_path.exists() and key_path.exists() and key_path.read_text() == key:
            built.append(Built(notebook, html_path, title, summary, 0.0, cached=True))
            say(f"{step}: unchanged since the last run, kept")
            continue
        say(f"{step}: running ...")
        start = time.perf_counter()
        nb = execute(notebook, model=model)
        nbformat.write(nb, OUT / notebook.name)
        html_path.write_text(to_html(nb), encoding="utf-8")
        key_path.write_text(key)
        seconds = time.perf_counter() - start
        built.append(Built(notebook, html_path, title, summary, seconds, False))
        say(f"{step}: done in {seconds:.0f} s")
    write_index(model=model)
    return built


def _executed_on(model: str | None) -> str:
    """The index's first sentences: which model(s) the pages ran on, and what that means."""
    offline = {
        "toy": "toy is trained on synthetic scenes (coloured shapes): its answers about them "
        "can be checked against the expected ones; about a real photo they are meaningless.",
        "tiny": "tiny has random weights: its answers are random text; tiles, frames, prompts "
        "and token counts are real.",
    }
    if model is None:
        return (
            "Executed headless, each notebook on its default offline model. "
            + " ".join(offline.values())
            + f" For the real model: {MODEL_ENV}={DEFAULT_MODEL} make demo."
        )
    return f"Executed headless against the {model} model ({MODEL_ENV}). " + offline.get(model, "")


def write_index(*, model: str | None) -> Path:
    """``build/notebooks/index.html``: every notebook with HTML, in order, with what it teaches."""
    items = ""
    for notebook in notebooks():
        page_path = OUT / f"{notebook.stem}.html"
        if not page_path.exists():
            continue
        title, summary = title_and_summary(notebook)
        used = model or declared_model(notebook)
        runs_on = "no model" if used is None else f"the <code>{html.escape(used)}</code> model"
        items += (
            f"<li><a href='{html.escape(page_path.name)}'>{html.escape(title)}</a>"
            f" <small>(ran on {runs_on})</small>"
            f"<br><span>{inline_html(summary)}</span></li>"
        )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>vltools notebooks</title>"
        "<style>body{font-family:sans-serif;max-width:760px;margin:2em auto;line-height:1.5}"
        "li{margin:.8em 0}span{color:#555}</style></head><body>"
        "<h1>vltools: the notebooks, executed</h1>"
        f"<p>{html.escape(_executed_on(model))} Open the notebooks live with "
        "<code>make lab</code>.</p>"
        f"<ol style='list-style:none;padding:0'>{items}</ol></body></html>"
    )
    index = OUT / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="notebook number prefixes, e.g. 01 05")
    parser.add_argument("--force", action="store_true", help="execute even if nothing changed")
    args = parser.parse_args(argv)
    model = os.environ.get(MODEL_ENV) or None
    if model is None:
        print("Executing the notebooks, each on its default model (toy or tiny):", flush=True)
    else:
        print(f"Executing the notebooks against the {model!r} model ({MODEL_ENV}):", flush=True)
    start = time.perf_counter()
    try:
        build(
            only=args.only,
            force=args.force,
            model=model,
            progress=lambda line: print("  " + line, flush=True),
        )
    except Exception as e:  # the demo's user wants the failing notebook and cell, not a trace
        print(f"make demo failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"All done in {time.perf_counter() - start:.0f} s.")
    print(f"\nThe executed notebooks are in {OUT}/ — open {OUT / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
