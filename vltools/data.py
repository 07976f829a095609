"""The sample files that ship with vltools, in ``vltools/samples/`` (package data).

They are installed with the package (``pip install .`` as well as an editable install), so
``vltools.sample("photo_cat.jpg")`` and :func:`charts` work without a checkout. Where each
file comes from and its licence: ``data/README.md`` in the repository, next to the scripts
that generated them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SAMPLES_DIR: Path = Path(__file__).resolve().parent / "samples"


def sample(name: str) -> Path:
    """Path of the sample file ``name`` shipped with vltools (for example ``"panorama.png"``)."""
    path = SAMPLES_DIR / name
    if not path.is_file():
        available = sorted(p.name for p in SAMPLES_DIR.glob("*") if p.is_file())
        raise FileNotFoundError(
            f"No sample file {name!r} in {SAMPLES_DIR}. Available: "
            f"{', '.join(available) or 'none'}. Pass one of these names; for a file of your "
            "own, pass its path to load_image/load_video directly."
        )
    return path


CHARTS_DIR: Path = SAMPLES_DIR / "charts"


def charts() -> list[dict[str, Any]]:
    """The labelled bar charts in ``vltools/samples/charts/``: 30 samples, one question each.

    Each sample is a dict with ``image`` (the PNG's absolute path, a ``str``), ``question``,
    ``answers`` (a list with one reference answer, a number or a bar's name, as a ``str``) and
    ``type`` (``"value"``, ``"highest"``, ``"lowest"`` or ``"difference"``): the columns
    ``vltools.Experiment`` reads, ready for ``metric="relaxed_accuracy"``. The charts, made by
    ``data/make_charts.py``, and the data behind them (``charts/charts.json``) are described
    in the repository's ``data/README.md``.
    """
    labels = CHARTS_DIR / "labels.jsonl"
    if not labels.is_file():
        raise FileNotFoundError(
            f"No chart labels at {labels}. The charts ship with vltools in "
            "vltools/samples/charts/; reinstall vltools, or in a checkout write them with "
            "`python data/make_charts.py`."
        )
    samples = []
    with labels.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                samples.append({**row, "image": str(CHARTS_DIR / row["image"])})
    return samples
