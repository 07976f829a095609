"""prompt_grid on the tiny model: every combination, errors recorded per cell, exports."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from PIL import Image

from vltools.experiments import COLUMNS, GridResult, prompt_grid


def test_every_combination_is_run_and_exported(tiny_model, tmp_path):
    images = {"noise": torch.randn(1, 3, 448, 448), "none": None}
    prompts = ["Describe.", "What colour?"]
    settings = {"short": {"max_new_tokens": 2}, "sampled": {"max_new_tokens": 3, "do_sample": True, "temperature": 0.7, "seed": 1}}  # fmt: skip
    grid = prompt_grid(
        tiny_model, images=images, prompts=prompts, settings=settings, progress=False
    )
    assert isinstance(grid, GridResult) and len(grid) == 2 * 2 * 2
    combos = {(r["image"], r["prompt"], r["setting"]) for r in grid.rows}
    assert len(combos) == 8
    for row in grid.rows:
        assert row["error"] == "" and row["new_tokens"] >= 1
        assert row["tiles"] == (1 if row["image"] == "noise" else 0)
        assert row["new_tokens"] <= (2 if row["setting"] == "short" else 3)
    again = prompt_grid(
        tiny_model, images=images, prompts=prompts, settings=settings, progress=False
    )
    assert [r["answer"] for r in again.rows] == [r["answer"] for r in grid.rows]  # seeded

    with (grid.to_csv(tmp_path / "grid.csv")).open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and list(rows[0]) == [*COLUMNS, "settings"]
    data = json.loads(grid.to_json(tmp_path / "grid.json"))
    assert data == json.loads((tmp_path / "grid.json").read_text(encoding="utf-8"))
    assert data[0]["question"] == "Describe."
    assert "<table>" in grid._repr_html_()


def test_a_failing_cell_records_its_error_and_the_grid_goes_on(tiny_model):
    image = torch.randn(2, 3, 448, 448)
    grid = prompt_grid(
        tiny_model,
        images=[image],
        prompts=["Describe."],
        settings=[{"max_new_tokens": 8000}, {"max_new_tokens": 2}],
        progress=False,
    )
    first, second = grid.rows
    assert first["error"].startswith("ContextBudgetError") and first["answer"] == ""
    assert second["error"] == "" and second["new_tokens"] >= 1
    assert "ContextBudgetError" in grid._repr_html_()


def test_thumbnails_come_from_tiled_images(tiny_model):
    class Tiled:  # what prompt_grid needs of a TiledImage
        def __init__(self):
            self.pixel_values = torch.randn(1, 3, 448, 448)
            self.grid = None
            self.image = Image.new("RGB", (640, 480), "blue")
            self.source = "blue.png"

    grid = prompt_grid(tiny_model, images=[Tiled()], prompts=["Q"], settings=[{"max_new_tokens": 1}], progress=False)  # fmt: skip
    assert grid.rows[0]["image"] == "blue.png"
    assert grid.thumbnails["blue.png"].size[0] <= 96
    assert "data:image/png;base64" in grid._repr_html_()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prompts": []}, "prompts is empty"),
        ({"prompts": [""]}, "non-empty question"),
        ({"settings": ["fast"]}, "dict of Chat options"),
    ],
)
def test_bad_grids_are_refused(tiny_model, kwargs, match):
    args = {"images": [None], "prompts": ["Q"], "settings": None, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        prompt_grid(tiny_model, progress=False, **args)


def test_grid_rows_come_image_major_in_the_order_asked(tiny_model):
    images = {"wide": torch.randn(2, 3, 448, 448), "square": torch.randn(1, 3, 448, 448)}
    settings = {"a": {"max_new_tokens": 1}, "b": {"max_new_tokens": 2}}
    grid = prompt_grid(tiny_model, images=images, prompts=["P", "Q"], settings=settings, progress=False)  # fmt: skip
    order = [(r["image"], r["prompt"], r["setting"]) for r in grid.rows]
    assert order == [(i, p, s) for i in images for p in ("prompt 1", "prompt 2") for s in settings]
