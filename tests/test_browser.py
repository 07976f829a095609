"""The widgets proven in a real browser: JupyterLab on localhost driven by the system Chromium.

Starts JupyterLab (random free port, token auth, no browser of its own) on a copy of the
notebooks, drives Debian's Chromium with Playwright (``executable_path``; never a downloaded
browser), runs every cell, checks that each explorer renders and reacts, and saves a
screenshot of each under ``build/screenshots/``. Without Chromium the test skips and says how
to install it, except in CI (``CI=true``), where a missing browser is a failure. The server
is always shut down, also when the test fails.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCREENSHOTS = REPO / "build" / "screenshots"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
RUN_TIMEOUT_MS = 300_000

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    message = (
        "Chromium is not installed. Install the system browser with "
        "`sudo apt-get install chromium` (Debian/Ubuntu); vltools never downloads one."
    )
    if os.environ.get("CI") == "true":
        pytest.fail("CI=true and " + message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory, tiny_path):
    """A JupyterLab server on a copy of the notebooks; yields (base_url, token, root)."""
    root = tmp_path_factory.mktemp("lab")
    for nb in (REPO / "notebooks").glob("*.ipynb"):
        shutil.copy(nb, root / nb.name)
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "VLTOOLS_MODEL": "tiny",
        "HF_HUB_OFFLINE": "1",
        "MPLBACKEND": "agg",
        # keep the user's Jupyter settings, workspaces and runtime files out of the test
        "JUPYTER_CONFIG_DIR": str(root / ".jupyter-config"),
        "JUPYTER_RUNTIME_DIR": str(root / ".jupyter-runtime"),
        "JUPYTERLAB_WORKSPACES_DIR": str(root / ".jupyter-workspaces"),
        "JUPYTERLAB_SETTINGS_DIR": str(root / ".jupyter-settings"),
    }
    # Answer JupyterLab's first-run "get notified about news?" question (no), so that its
    # popup does not cover the screenshots.
    news = root / ".jupyter-settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    log_dir = tmp_path_factory.mktemp("lab-log")  # outside root: not in the file browser
    log = open(log_dir / "server.log", "w")  # noqa: SIM115 - closed in finally
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            f"--port={port}",
            "--ip=127.0.0.1",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            "--ServerApp.open_browser=False",
            "--allow-root",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=root,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(
                        "JupyterLab did not start:\n" + (log_dir / "server.log").read_text()[-3000:]
                    )
                time.sleep(0.5)
        yield base, token, root
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def _run_all(browser, lab, name: str):
    """Open ``name`` in JupyterLab, run all cells, wait until the kernel is idle; return the page."""
    base, token, _ = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(f"{base}/lab/tree/{name}?reset&token={token}")  # reset: no restored tabs
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    # the kernel is connected once the status bar names it and says Idle
    _wait_idle(page)
    page.wait_for_timeout(1000)
    for _attempt in range(3):  # a Run All sent while the session still settles can be dropped
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        try:
            page.wait_for_function(
                "() => [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputArea-prompt')]"
                ".some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))",
                timeout=20_000,
                polling=500,
            )
            break
        except Exception:
            continue
    # the run is over when the kernel is idle and no cell waits: either every code cell has its
    # execution count, or a cell failed (Run All stops there) and the error check reports it
    try:
        page.wait_for_function(
            """() => {
                const prompts = [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputArea-prompt')];
                const ind = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator');
                if (!ind || ind.getAttribute('data-status') !== 'idle' || prompts.length === 0) return false;
                if (prompts.some(p => p.textContent.includes('*'))) return false;
                const failed = document.querySelector(".jp-NotebookPanel:not(.lm-mod-hidden) [data-mime-type='application/vnd.jupyter.stderr']");
                return failed !== null || prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
            }""",
            timeout=RUN_TIMEOUT_MS,
            polling=1000,
        )
    except Exception:
        _shot(page, name.removesuffix(".ipynb") + "-timeout")
        raise
    return page


def _assert_no_cell_error(page, name: str):
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    texts = [errors.nth(i).inner_text() for i in range(errors.count())]
    tracebacks = [
        t for t in texts if "Traceback" in t or re.search(r"^\w+(Error|Exception)\b", t, re.M)
    ]
    assert not tracebacks, f"{name}: a cell failed:\n{tracebacks[0][:2000]}"


def _shot(page, name: str, locator=None) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:  # let the widget finish redrawing before the picture is taken
        page.wait_for_selector(
            ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator[data-status='idle']",
            timeout=30_000,
        )
    except Exception:
        pass
    path = SCREENSHOTS / f"{name}.png"
    if locator is not None:
        locator.scroll_into_view_if_needed()
    page.screenshot(path=str(path), full_page=False)
    return path


def _summary_text(widget) -> str:
    return widget.locator(".vltools-summary").first.inner_text()


def _nudge_slider(page, widget, label: str, key: str, presses: int = 1):
    slider = widget.locator(
        ".widget-slider", has=page.locator(".widget-label", has_text=re.compile(rf"^{label}"))
    )
    handle = slider.first.locator(".noUi-handle").first
    handle.focus()
    for _ in range(presses):
        handle.press(key)


def _wait_idle(page, timeout: int = 90_000) -> None:
    """Wait until JupyterLab's status bar says the kernel is Idle."""
    page.wait_for_function(
        "() => /\\|\\s*Idle/.test(document.querySelector('.jp-StatusBar-Widget, #jp-main-statusbar')?.innerText || '')",
        timeout=timeout,
        polling=500,
    )


def _explore(
    browser, lab, notebook: str, widget_class: str, slider: str, key: str, presses: int = 1
):
    """Run ``notebook``, find its explorer, move one slider; return (widget, before, after)."""
    name = notebook.removesuffix(".ipynb")
    page = _run_all(browser, lab, notebook)
    try:
        _assert_no_cell_error(page, name)
        widget = page.locator(f".{widget_class}").first
        widget.wait_for()
        assert widget.locator("img").count() >= 1, f"{name}: the explorer shows no picture"
        sliders = widget.locator(".widget-slider").count()
        before = _summary_text(widget)
        _nudge_slider(page, widget, slider, key, presses=presses)
        page.wait_for_function(
            "([sel, before]) => document.querySelector(sel).innerText !== before",
            arg=[f".{widget_class} .vltools-summary", before],
            timeout=30_000,
        )
        after = _summary_text(widget)
        _wait_idle(page, timeout=30_000)  # the picture redraws after the summary: shoot it done
        _shot(page, name, widget)
        return sliders, before, after
    finally:
        page.close()


def test_tile_explorer_renders_and_follows_its_max_num_slider(browser, lab):
    sliders, before, after = _explore(
        browser, lab, "01_dynamic_tiling.ipynb", "vltools-tile-explorer", "max_num", "Home"
    )
    assert sliders >= 2
    assert re.search(r"\d+ tiles?", after) and after != before, (before, after)


def test_frame_strip_renders_and_resamples(browser, lab):
    _, before, after = _explore(
        browser, lab, "05_video.ipynb", "vltools-frame-strip", "segments", "ArrowLeft", presses=2
    )
    assert after != before


def test_attention_explorer_renders_and_steps_through_tokens(browser, lab):
    _, before, after = _explore(
        browser, lab, "07_attention_maps.ipynb", "vltools-attention-explorer", "token", "ArrowRight"
    )
    assert after != before
