"""Modules talk through public names: no vltools module reaches into another's underscore names.

An underscore name that another module imports is an interface in disguise (STYLE.md, "Split by
concept, not by size"). This walks the syntax tree of every ``vltools/*.py`` and reports each
import or attribute access of another vltools module's private name, and each import of a
private module that is not listed below with its reason.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vltools"

# Private modules any vltools module may import, with the reason they are private.
ALLOWED_PRIVATE_MODULES: dict[str, str] = {
    "_optional": "the lazy-import helper (require); an implementation detail of every module, "
    "not something a user imports",
}


@dataclass(frozen=True)
class Crossing:
    """``importer`` uses ``owner``'s private ``name`` at ``line``."""

    importer: str
    owner: str
    name: str
    line: int

    def __str__(self) -> str:
        return f"vltools/{self.importer}.py:{self.line} uses {self.owner}.{self.name}"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _owner(module: str | None, level: int) -> str | None:
    """The vltools module an ``import``/``from`` statement names, or None for another package."""
    if level:  # relative: from .images import x, from . import images
        return (module or "").split(".")[0] or "vltools"
    if module == "vltools":
        return "vltools"
    if module and module.startswith("vltools."):
        return module.split(".")[1]
    return None


def crossings(source: str, importer: str, modules: set[str]) -> list[Crossing]:
    """Every use in ``source`` (module ``importer``) of another vltools module's private name."""
    tree = ast.parse(source)
    found: list[Crossing] = []
    aliases: dict[str, str] = {}  # local name -> the vltools module it is bound to

    def report(owner: str, name: str, node: ast.AST) -> None:
        if owner != importer and _private(name):
            found.append(Crossing(importer, owner, name, node.lineno))

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            owner = _owner(node.module, node.level)
            if owner is None:
                continue
            if owner != "vltools":
                if _private(owner) and owner not in ALLOWED_PRIVATE_MODULES:
                    found.append(Crossing(importer, owner, "<private module>", node.lineno))
                for a in node.names:
                    report(owner, a.name, node)
                continue
            for a in node.names:  # from vltools import images [as im], _optional
                if a.name in modules:
                    aliases[a.asname or a.name] = a.name
                    if _private(a.name) and a.name not in ALLOWED_PRIVATE_MODULES:
                        found.append(Crossing(importer, a.name, "<private module>", node.lineno))
                else:
                    report("vltools", a.name, node)
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] != "vltools" or len(parts) < 2:
                    continue
                if _private(parts[1]) and parts[1] not in ALLOWED_PRIVATE_MODULES:
                    found.append(Crossing(importer, parts[1], "<private module>", node.lineno))
                if a.asname:
                    aliases[a.asname] = parts[1]
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        value = node.value
        if isinstance(value, ast.Name) and value.id in aliases:
            report(aliases[value.id], node.attr, node)
        elif (  # vltools.images._open after `import vltools`
            isinstance(value, ast.Attribute)
            and isinstance(value.value, ast.Name)
            and value.value.id == "vltools"
            and value.attr in modules
        ):
            report(value.attr, node.attr, node)
    return found


def package_crossings() -> list[Crossing]:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    out = []
    for path in sorted(PACKAGE.glob("*.py")):
        out += crossings(path.read_text(encoding="utf-8"), path.stem, modules)
    return out


def test_no_vltools_module_uses_another_modules_private_names():
    offending = package_crossings()
    assert not offending, (
        "Make these names public in their owner module (documented, in __all__), or move the "
        "helper into a module of its own with public names:\n"
        + "\n".join(str(c) for c in offending)
    )


MODULES = {"images", "tiling", "video", "decoding", "_optional", "_hidden"}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from vltools.images import _cut", [("images", "_cut")]),
        ("from .images import _cut, load_image", [("images", "_cut")]),
        ("def f():\n    from vltools.images import _open", [("images", "_open")]),
        ("from vltools import images\nimages._open(1)", [("images", "_open")]),
        ("import vltools.images as im\nim._pool()", [("images", "_pool")]),
        ("import vltools\nvltools.images._open(1)", [("images", "_open")]),
        ("from vltools import _hidden", [("_hidden", "<private module>")]),
        ("from vltools._hidden import x", [("_hidden", "<private module>")]),
        ("from vltools import __version__", []),
        ("from vltools._optional import require", []),
        ("from vltools.images import load_image\nload_image._cache", []),
        ("from vltools.video import _check_int", []),  # the module's own private name
        ("import numpy as np\nnp._core", []),
    ],
)
def test_the_checker_finds_private_imports_and_accesses_and_allows_public_ones(source, expected):
    found = crossings(source, "video", MODULES)
    assert [(c.owner, c.name) for c in found] == expected
