"""Write the labelled bar charts in vltools/samples/charts/: 30 PNGs, their questions and their values.

Run from the repository root: ``python data/make_charts.py``. Everything comes from one
seeded ``random.Random``, so the charts' values, the questions and the answers are the same on
every run and every machine; the pixels are the same for the same matplotlib and FreeType.

Writes
- ``vltools/samples/charts/chart_NN.png``: a bar chart (vertical or horizontal), drawn with matplotlib's
  Agg backend and stored as a 64-colour palette PNG (a few kB each);
- ``vltools/samples/charts/labels.jsonl``: one question per chart, ChartQA-style, with the columns
  ``image`` (path relative to charts/), ``question``, ``answers`` (a list with one
  reference answer) and ``type`` (``value``, ``highest``, ``lowest`` or ``difference``);
- ``vltools/samples/charts/charts.json``: the data behind each chart (title, unit, categories, values,
  whether the bars carry their values), from which the answers follow.

The charts, questions and values are generated, not collected: CC0, like the other generated
samples (see data/README.md). ``vltools.data.charts()`` reads the labels back.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "vltools" / "samples" / "charts"  # package data
SEED = 2024
N_CHARTS = 30
QUESTION_TYPES = ("value", "highest", "value", "lowest", "difference")

# title, unit, categories: the themes the charts draw from
THEMES = [
    ("Fruit sold at the market (kg)", "", ["Apples", "Bananas", "Cherries", "Grapes", "Lemons", "Mangoes", "Pears"]),
    ("Visitors by country (thousands)", "", ["Brazil", "Canada", "Egypt", "France", "India", "Japan", "Kenya", "Mexico"]),
    ("Share of votes (%)", "%", ["Blue", "Green", "Orange", "Purple", "Red", "Yellow"]),
    ("Books borrowed per month", "", ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul"]),
    ("Animals counted in the park", "", ["Deer", "Foxes", "Hares", "Owls", "Squirrels", "Swans"]),
    ("Survey: favourite sport (%)", "%", ["Cycling", "Football", "Hockey", "Rugby", "Swimming", "Tennis"]),
    ("Rainfall by city (mm)", "", ["Athens", "Berlin", "Dublin", "Lisbon", "Madrid", "Oslo", "Rome", "Vienna"]),
    ("Cars sold by brand (units)", "", ["Audi", "Fiat", "Ford", "Kia", "Mazda", "Skoda", "Volvo"]),
]  # fmt: skip
GRID_STEP = {40: 5, 60: 5, 100: 10, 400: 50, 1000: 100}  # largest value -> gridline spacing
COLOURS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]


@dataclass(frozen=True)
class Chart:
    """One chart, its question and the answer that follows from its values."""

    image: str  # file name in data/charts/
    title: str
    unit: str  # "" or "%"
    categories: tuple[str, ...]
    values: tuple[int, ...]
    horizontal: bool
    annotated: bool  # each bar carries its value as text
    step: int  # the values are multiples of it; unannotated charts have gridlines every step
    colour: str
    type: str
    question: str
    answer: str


def _question(rng: random.Random, kind: str, categories, values, horizontal) -> tuple[str, str]:
    """A ChartQA-style question about the chart and its answer (a str)."""
    if kind == "value":
        i = rng.randrange(len(categories))
        return f"What is the value of {categories[i]}?", str(values[i])
    if kind == "highest":
        word = "longest" if horizontal else "highest"
        return f"Which bar is the {word}?", categories[values.index(max(values))]
    if kind == "lowest":
        word = "shortest" if horizontal else "lowest"
        return f"Which bar is the {word}?", categories[values.index(min(values))]
    i, j = sorted(rng.sample(range(len(categories)), 2))
    return (
        f"What is the difference between {categories[i]} and {categories[j]}?",
        str(abs(values[i] - values[j])),
    )


def make_charts(*, seed: int = SEED, n: int = N_CHARTS) -> list[Chart]:
    """The charts' data, questions and answers (pure: no files, no matplotlib)."""
    rng = random.Random(seed)
    charts = []
    for k in range(n):
        title, unit, pool = THEMES[k % len(THEMES)]
        count = rng.randint(3, min(7, len(pool)))
        categories = tuple(sorted(rng.sample(pool, count), key=pool.index))
        annotated = k % 3 != 2  # every third chart must be read off the axis
        high = 60 if unit == "%" else rng.choice([40, 100, 400, 1000])
        step = 1 if annotated else GRID_STEP[high]  # unlabelled bars end on a gridline
        values = tuple(rng.sample(range(step, high + 1, step), count))
        horizontal = k % 4 == 3
        kind = QUESTION_TYPES[k % len(QUESTION_TYPES)]
        question, answer = _question(rng, kind, categories, values, horizontal)
        charts.append(
            Chart(
                image=f"chart_{k:02d}.png",
                title=title,
                unit=unit,
                categories=categories,
                values=values,
                horizontal=horizontal,
                annotated=annotated,
                step=step,
                colour=COLOURS[k % len(COLOURS)],
                type=kind,
                question=question,
                answer=answer,
            )
        )
    return charts


def label_rows(charts: list[Chart]) -> list[dict]:
    """The rows of labels.jsonl: image, question, answers, type."""
    return [
        {"image": c.image, "question": c.question, "answers": [c.answer], "type": c.type}
        for c in charts
    ]


def chart_facts(charts: list[Chart]) -> list[dict]:
    """The rows of charts.json: the data each chart draws."""
    keep = ("image", "title", "unit", "categories", "values", "horizontal", "annotated", "step")
    return [{key: value for key, value in asdict(c).items() if key in keep} for c in charts]


def _ticks(chart: Chart) -> list[int]:
    """Gridlines every ``chart.step`` up to the largest value."""
    return list(range(0, max(chart.values) + chart.step, chart.step))


def draw(chart: Chart, path: Path) -> None:
    """Draw ``chart`` with matplotlib (Agg, object API) and save it as a palette PNG."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    size = (6.0, 4.0) if chart.horizontal else (6.4, 4.8)
    fig = Figure(figsize=size, dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    suffix = chart.unit
    if chart.horizontal:
        bars = ax.barh(chart.categories, chart.values, color=chart.colour)
        ax.invert_yaxis()  # first category on top
        ax.grid(axis="x", color="#dddddd")
        ax.set_xlim(0, max(chart.values) * 1.15)
        if not chart.annotated:
            ax.set_xticks(_ticks(chart))
    else:
        bars = ax.bar(chart.categories, chart.values, color=chart.colour)
        ax.grid(axis="y", color="#dddddd")
        ax.set_ylim(0, max(chart.values) * 1.15)
        if not chart.annotated:
            ax.set_yticks(_ticks(chart))
    ax.set_axisbelow(True)
    if chart.annotated:
        ax.bar_label(bars, labels=[f"{v}{suffix}" for v in chart.values], padding=3)
    ax.set_title(chart.title)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())  # [H, W, 4] uint8
    image = Image.fromarray(rgba[..., :3].copy())
    image.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    charts = make_charts()
    for chart in charts:
        draw(chart, OUT / chart.image)
    with (OUT / "labels.jsonl").open("w", encoding="utf-8") as f:
        for row in label_rows(charts):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    (OUT / "charts.json").write_text(
        json.dumps(chart_facts(charts), indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"{len(charts)} charts in {OUT}: {total / 1024:.1f} KiB in all")


if __name__ == "__main__":
    main()
