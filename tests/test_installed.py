"""vltools installed from its wheel, not run from a checkout: the documented calls still work.

Builds the wheel from a copy of the package's sources, installs it (no dependencies) into a
fresh virtual environment that borrows this environment's packages (torch, PIL, ...), and
runs the calls from a folder outside the repository, checking that the installed copy, not
the source tree, was imported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

CHECK = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import vltools
    import vltools.demo
    from vltools.data import charts

    venv = Path(sys.argv[1]).resolve()
    assert venv in Path(vltools.__file__).resolve().parents, vltools.__file__
    print(vltools.sample("photo_cat.jpg"))  # the top-level name, as documented
    tiled = vltools.load_image(vltools.data.sample("photo_cat.jpg"), max_num=2)
    assert tiled.pixel_values.shape == (3, 3, 448, 448), tiled
    rows = charts()
    assert len(rows) == 30 and all(Path(r["image"]).is_file() for r in rows)
    assert venv in Path(rows[0]["image"]).resolve().parents
    assert vltools.data.sample("sample_video.mp4").stat().st_size > 0
    try:
        vltools.demo.notebooks()
    except FileNotFoundError as e:
        assert "checkout" in str(e), e
    else:
        raise AssertionError("the demo found notebooks in an installed vltools")
    print("ok")
    """
)


@pytest.mark.slow
def test_the_installed_wheel_ships_the_samples_and_says_the_demo_needs_a_checkout(tmp_path):
    src = tmp_path / "src"  # a clean copy: no stale build/ or egg-info from the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "vltools", src / "vltools", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    run = {"check": True, "capture_output": True, "text": True}
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)], **run
    )
    (wheel,) = dist.glob("vltools-*.whl")

    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        **run,
    )
    python = venv / "bin" / "python"
    # borrow this environment's packages (torch, PIL, ...) after the venv's own: a venv made
    # from a venv's python sees only the base interpreter's site-packages
    purelib = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            **run,
        ).stdout.strip()
    )
    (purelib / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", str(wheel)], **run)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    out = subprocess.run(
        [str(python), "-c", CHECK, str(venv)],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.split()
    assert lines[-1] == "ok"
    assert Path(lines[0]).name == "photo_cat.jpg" and Path(lines[0]).is_relative_to(venv)


def test_every_sample_file_is_declared_as_package_data():
    import fnmatch
    import tomllib

    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["vltools"]
    package = REPO / "vltools"
    files = [
        p.relative_to(package).as_posix()
        for p in (package / "samples").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    assert len(files) >= 40  # 8 images and the video, 30 charts with their labels and values
    left_out = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert not left_out, f"not in the wheel: {left_out}; add them to [tool.setuptools.package-data]"


def test_the_demo_says_it_needs_a_checkout_where_there_are_no_notebooks(tmp_path, monkeypatch):
    from vltools import demo

    monkeypatch.setattr(demo, "NOTEBOOKS", tmp_path / "notebooks")
    monkeypatch.setattr(demo, "OUT", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="Clone the repository and run `make demo`"):
        demo.build()
    assert not (tmp_path / "out").exists()  # nothing written before the check
