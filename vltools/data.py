"""The sample files in the repository's ``data/`` folder (see ``data/README.md``)."""

from __future__ import annotations

from pathlib import Path

DATA_DIR: Path = Path(__file__).resolve().parent.parent / "data"


def sample(name: str) -> Path:
    """Path of the sample file ``name`` in ``data/`` (for example ``"panorama.png"``)."""
    path = DATA_DIR / name
    if not path.is_file():
        available = sorted(p.name for p in DATA_DIR.glob("*") if p.suffix != ".md")
        raise FileNotFoundError(
            f"No sample file {name!r} in {DATA_DIR}. Available: {', '.join(available) or 'none'}. "
            "The samples live in the vltools repository's data/ folder; run from a checkout."
        )
    return path
