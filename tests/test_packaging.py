"""The package's promises about itself: dependencies declared once, and a cheap import."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parent.parent
CONDA_TO_PIP = {"pytorch": "torch", "ray-data": "ray"}
NOT_RUNTIME = {"python", "pip"}


def _pyproject_requirements() -> dict[str, SpecifierSet]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {
        Requirement(r).name.lower().replace("-", "_"): Requirement(r).specifier
        for r in project["dependencies"]
    }


def _conda_requirements() -> dict[str, SpecifierSet]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    found = {}
    for entry in env["dependencies"]:
        if isinstance(entry, dict):  # the pip: section
            assert entry == {"pip": ["-e ."]}, f"unexpected pip section {entry}"
            continue
        name, _, spec = entry.partition(" ")
        name = CONDA_TO_PIP.get(name, name).lower().replace("-", "_")
        if name not in NOT_RUNTIME:
            found[name] = SpecifierSet(spec.replace(" ", ""))
    return found


def test_environment_yml_and_pyproject_declare_the_same_runtime_dependencies():
    pip, conda = _pyproject_requirements(), _conda_requirements()
    assert sorted(pip) == sorted(conda), (
        f"only in pyproject.toml: {sorted(set(pip) - set(conda))}; "
        f"only in environment.yml: {sorted(set(conda) - set(pip))}"
    )
    differing = {
        name: (str(pip[name]), str(conda[name])) for name in pip if pip[name] != conda[name]
    }
    assert not differing, f"version ranges differ (pyproject, environment.yml): {differing}"


def test_environment_yml_names_who_needs_each_dependency():
    text = (REPO / "environment.yml").read_text()
    block = text[text.index("dependencies:") :].splitlines()[1:]
    entries = [line.strip() for line in block if line.strip().startswith("- ")]
    runtime = [e for e in entries if not e.startswith(("- pip", "- -e", "- python "))]
    uncommented = [e for e in runtime if "#" not in e]
    assert runtime and not uncommented, (
        f"dependencies without a comment naming their user: {uncommented}"
    )


def test_environment_yml_installs_vltools_itself_with_pip():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert {"pip": ["-e ."]} in env["dependencies"]
    assert env["channels"] == ["conda-forge"]


HEAVY = ["transformers", "decord", "av", "ipywidgets", "matplotlib", "torch"]


def _modules_after(code: str) -> set[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_vltools_imports_nothing_heavy():
    loaded = _modules_after("import vltools")
    assert not [m for m in HEAVY if m in loaded], (
        f"'import vltools' imported {[m for m in HEAVY if m in loaded]}"
    )


def test_public_names_resolve_lazily_and_are_all_listed():
    import vltools

    for name in vltools.__all__:
        assert getattr(vltools, name) is not None, name


@pytest.mark.parametrize(
    ("code", "still_absent"),
    [
        (
            "import vltools; vltools.plan_tiles",
            ["transformers", "decord", "av", "ipywidgets", "matplotlib"],
        ),
        (
            "import vltools; vltools.sample_frame_indices",
            ["transformers", "decord", "av", "ipywidgets", "matplotlib"],
        ),
        ("import vltools.viz", ["transformers", "decord", "av", "ipywidgets", "matplotlib"]),
    ],
)
def test_heavy_modules_wait_until_they_are_used(code, still_absent):
    loaded = _modules_after(code)
    assert not [m for m in still_absent if m in loaded], [m for m in still_absent if m in loaded]


def test_a_missing_optional_dependency_says_what_to_install():
    from vltools._optional import require

    with pytest.raises(ImportError, match=r"pip install 'not_a_real_package_xyz'"):
        require("not_a_real_package_xyz", purpose="This test")
