"""The labelled bar charts in vltools/samples/charts/: what the script regenerates, well-formed labels,
answers that follow from the charts' values, and ``vltools.data.charts()``."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
from PIL import Image

from vltools import data, metrics

REPO = Path(__file__).resolve().parent.parent
CHARTS = REPO / "vltools" / "samples" / "charts"


@pytest.fixture(scope="module")
def make_charts():
    """data/make_charts.py, imported as a module (data/ is not a package)."""
    spec = importlib.util.spec_from_file_location("make_charts", REPO / "data" / "make_charts.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_charts"] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules["make_charts"]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _facts() -> dict[str, dict]:
    return {c["image"]: c for c in json.loads((CHARTS / "charts.json").read_text("utf-8"))}


def test_labels_and_facts_are_what_the_script_regenerates(make_charts):
    charts = make_charts.make_charts()
    assert _jsonl(CHARTS / "labels.jsonl") == make_charts.label_rows(charts)
    assert json.loads((CHARTS / "charts.json").read_text("utf-8")) == json.loads(
        json.dumps(make_charts.chart_facts(charts))
    )


def test_the_script_is_deterministic_and_its_seed_matters(make_charts):
    assert make_charts.make_charts() == make_charts.make_charts()
    assert make_charts.make_charts(seed=1) != make_charts.make_charts()


def test_the_folder_holds_exactly_the_labelled_images_within_the_size_budget():
    rows = _jsonl(CHARTS / "labels.jsonl")
    images = sorted(p.name for p in CHARTS.glob("*.png"))
    assert images == sorted(r["image"] for r in rows)
    assert len(rows) == 30
    assert sum(p.stat().st_size for p in CHARTS.iterdir()) < 1.5 * 1024 * 1024
    for name in images:
        with Image.open(CHARTS / name) as image:
            assert image.format == "PNG"
            assert image.size in {(640, 480), (600, 400)}, (name, image.size)


def test_every_label_is_well_formed():
    for row in _jsonl(CHARTS / "labels.jsonl"):
        assert set(row) == {"image", "question", "answers", "type"}
        assert row["question"].endswith("?")
        assert metrics.check_references(row["answers"]) == row["answers"]
        assert len(row["answers"]) == 1
        assert row["type"] in {"value", "highest", "lowest", "difference"}


def _expected_answer(question: str, kind: str, values: dict[str, int]) -> str:
    """The answer recomputed from the chart's values, independently of the script."""
    if kind == "highest":
        return max(values, key=values.get)
    if kind == "lowest":
        return min(values, key=values.get)
    if kind == "value":
        (name,) = re.fullmatch(r"What is the value of (\w+)\?", question).groups()
        return str(values[name])
    first, second = re.fullmatch(
        r"What is the difference between (\w+) and (\w+)\?", question
    ).groups()
    return str(abs(values[first] - values[second]))


def test_every_answer_follows_from_the_charts_values():
    facts = _facts()
    for row in _jsonl(CHARTS / "labels.jsonl"):
        chart = facts[row["image"]]
        values = dict(zip(chart["categories"], chart["values"], strict=True))
        assert len(set(values.values())) == len(values), "bars must differ for highest/lowest"
        assert row["answers"] == [_expected_answer(row["question"], row["type"], values)], row


def test_unannotated_charts_end_every_bar_on_a_gridline():
    unannotated = [c for c in _facts().values() if not c["annotated"]]
    assert unannotated
    for chart in unannotated:
        assert all(v % chart["step"] == 0 for v in chart["values"]), chart


def test_drawing_a_chart_is_repeatable_and_matches_the_committed_size(make_charts, tmp_path):
    chart = make_charts.make_charts()[3]  # a horizontal one
    make_charts.draw(chart, tmp_path / "a.png")
    make_charts.draw(chart, tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    with Image.open(tmp_path / "a.png") as drawn, Image.open(CHARTS / chart.image) as committed:
        assert drawn.size == committed.size == (600, 400)
        assert drawn.mode == "P" and len(drawn.getcolors()) <= 64


def test_data_charts_returns_samples_with_absolute_image_paths():
    samples = data.charts()
    assert len(samples) == 30
    for sample in samples:
        path = Path(sample["image"])
        assert path.is_absolute() and path.is_file()
        assert metrics.relaxed_accuracy(sample["answers"][0], sample["answers"]) == 1.0
    assert samples[0]["question"] == _jsonl(CHARTS / "labels.jsonl")[0]["question"]


def test_data_charts_says_where_the_charts_come_from_when_they_are_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "CHARTS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="python data/make_charts.py"):
        data.charts()
