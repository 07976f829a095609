"""The sample files in the repository's ``data/`` folder (see ``data/README.md``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


CHARTS_DIR: Path = DATA_DIR / "charts"


def charts() -> list[dict[str, Any]]:
    """The labelled bar charts in ``data/charts/``: 30 samples, one question each.

    Each sample is a dict with ``image`` (the PNG's absolute path, a ``str``), ``question``,
    ``answers`` (a list with one reference answer, a number or a bar's name, as a ``str``) and
    ``type`` (``"value"``, ``"highest"``, ``"lowest"`` or ``"difference"``): the columns
    ``vltools.Experiment`` reads, ready for ``metric="relaxed_accuracy"``. The charts, made by
    ``data/make_charts.py``, and the data behind them (``data/charts/charts.json``) are
    described in ``data/README.md``.
    """
    labels = CHARTS_DIR / "labels.jsonl"
    if not labels.is_file():
        raise FileNotFoundError(
            f"No chart labels at {labels}. The charts live in the vltools repository's "
            "data/charts/ folder; run from a checkout, or write them with "
            "`python data/make_charts.py`."
        )
    samples = []
    with labels.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                samples.append({**row, "image": str(CHARTS_DIR / row["image"])})
    return samples
