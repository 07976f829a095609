"""The project's copy of the reference vectors: nothing edited silently, nothing missing."""

from __future__ import annotations

import hashlib


def _listed(reference_dir) -> dict[str, str]:
    lines = (reference_dir / "SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, name in (line.split(maxsplit=1) for line in lines if line)}


def test_every_reference_file_has_the_checksum_it_was_committed_with(reference_dir):
    changed = [
        name
        for name, digest in _listed(reference_dir).items()
        if hashlib.sha256((reference_dir / name).read_bytes()).hexdigest() != digest
    ]
    assert not changed, f"edited since it was recorded: {changed} (see tests/reference/README.md)"


def test_every_file_in_the_folder_is_listed_and_described(reference_dir):
    present = {
        p.relative_to(reference_dir).as_posix()
        for p in reference_dir.rglob("*")
        if p.is_file() and p.name not in {"SHA256SUMS", "README.md"}
    }
    assert present == set(_listed(reference_dir)), "SHA256SUMS and the folder disagree"
    readme = (reference_dir / "README.md").read_text()
    top_level = {name.split("/")[0] for name in present}
    undescribed = [n for n in sorted(top_level) if f"`{n}" not in readme]
    assert not undescribed, f"tests/reference/README.md does not describe {undescribed}"
