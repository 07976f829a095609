"""show_tiles and the TileExplorer: pure figures, and a widget driven through its traits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vltools.images import load_image
from vltools.tiling import plan_tiles

pytest.importorskip("matplotlib")


def _image(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([x % 256, y % 256, (x * y) % 256], -1).astype(np.uint8))


def test_show_tiles_returns_a_figure_with_the_grid_tiles_thumbnail_and_cost():
    from matplotlib.figure import Figure

    from vltools.viz import figure_to_png, show_tiles

    tiled = load_image(_image(900, 300), max_num=6)
    fig = show_tiles(tiled)
    assert isinstance(fig, Figure)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert [str(i) for i in range(3)] == sorted(set(texts) & {"0", "1", "2"})
    assert texts.count("0") == 2  # labelled on the original and in the tile strip
    titles = " ".join(ax.get_title() for ax in fig.axes)
    assert "thumbnail (tile 3)" in titles and "3x1 grid" in titles
    caption = " ".join(fig._suptitle.get_text().split())  # wrapped to the figure's width
    assert "4 tiles" in caption and "1,024 image tokens" in caption and "8,192" in caption
    assert len(fig.axes[0].patches) == 3  # one rectangle per grid tile on the original
    assert figure_to_png(fig)[:4] == b"\x89PNG"


def test_show_tiles_draws_a_tall_single_tile_image_without_a_thumbnail():
    from vltools.viz import show_tiles

    fig = show_tiles(load_image(_image(60, 500), max_num=1))
    titles = " ".join(ax.get_title() for ax in fig.axes)
    caption = " ".join(fig._suptitle.get_text().split())
    assert "thumbnail" not in titles and "1 tile x 256" in caption


def test_a_tiled_image_shows_itself_as_a_png_and_a_grid_as_html():
    tiled = load_image(_image(500, 400), max_num=4)
    assert tiled._repr_png_()[:4] == b"\x89PNG"
    assert "<table>" in plan_tiles(500, 400)._repr_html_()


def test_tile_explorer_follows_its_sliders_and_reports_the_cost():
    pytest.importorskip("ipywidgets")
    from vltools.widgets import TileExplorer

    explorer = TileExplorer(_image(1700, 400), max_num=6)
    assert (explorer.grid.cols, explorer.grid.rows) == (4, 1)
    assert explorer.tiled.num_tiles == 5 and explorer.error == ""
    assert "5 tiles x 256 = 1,280 image tokens" in explorer.cost
    assert "15.6%" in explorer.cost
    assert explorer._picture.value[:4] == b"\x89PNG"
    assert "chosen" in explorer._table.value and "4x1" in explorer._table.value

    explorer.max_num = 1  # the slider follows the trait and the view redraws
    assert explorer._max_slider.value == 1
    assert explorer.grid.num_tiles == 1 and "1 tile x 256" in explorer.cost

    explorer._max_slider.value = 40  # and the trait follows the slider
    assert explorer.max_num == 40 and explorer.grid.max_num == 40
    assert explorer.grid.cols * explorer.grid.rows > 12


def test_tile_explorer_shows_an_impossible_choice_and_keeps_the_last_good_view():
    pytest.importorskip("ipywidgets")
    from vltools.widgets import TileExplorer

    explorer = TileExplorer(_image(800, 600), max_num=12)
    good = explorer.tiled
    explorer.min_num = 20  # above max_num
    assert "min_num (20)" in explorer.error
    assert explorer.tiled is good
    assert any("min_num" in o.get("text", "") for o in explorer._output.outputs)
    explorer.max_num = 30  # a valid choice again clears the error
    assert explorer.error == "" and explorer.grid.cols * explorer.grid.rows >= 20


def test_tile_explorer_offers_a_static_picture_for_html_exports():
    pytest.importorskip("ipywidgets")
    from vltools.widgets import TileExplorer

    bundle = TileExplorer(_image(300, 300), max_num=2)._repr_mimebundle_()
    assert bundle["image/png"][:4] == b"\x89PNG"


def test_a_tile_explorer_step_draws_the_grid_and_pil_tiles_without_computing_pixel_values(
    monkeypatch,
):
    pytest.importorskip("ipywidgets")
    import vltools.images
    from vltools.widgets import TileExplorer

    explorer = TileExplorer(_image(1200, 500), max_num=6)
    calls = []
    real = vltools.images.load_image
    monkeypatch.setattr(
        vltools.images, "load_image", lambda *a, **k: calls.append(k) or real(*a, **k)
    )
    explorer.max_num = 12  # a slider step
    explorer.min_num = 2
    assert calls == []  # the picture, the grid and the cost need no float pixel_values
    assert explorer.grid.max_num == 12 and explorer.grid.min_num == 2
    assert explorer.tiled.grid.num_tiles == explorer.grid.num_tiles  # reading it computes it
    assert calls == [{"max_num": 12, "min_num": 2}]
    assert explorer.tiled is explorer.tiled and len(calls) == 1  # kept until the view changes
    explorer.max_num = 3
    assert explorer.tiled.grid.max_num == 3 and len(calls) == 2


def test_a_tile_explorer_draws_the_same_tiles_load_image_cuts():
    pytest.importorskip("ipywidgets")
    from vltools.widgets import TileExplorer

    image = _image(1500, 700)
    explorer = TileExplorer(image, max_num=8)
    exact = load_image(image, max_num=8)
    shown = explorer._shown.tiles
    assert len(shown) == exact.num_tiles == 9  # a 4x2 grid and the thumbnail
    for ours, theirs in zip(shown, exact.tiles, strict=True):
        assert np.array_equal(np.asarray(ours), np.asarray(theirs))
    from vltools.viz import figure_to_png, show_tiles

    assert figure_to_png(explorer.figure()) == figure_to_png(show_tiles(exact))


def test_tile_explorer_sliders_update_on_release():
    pytest.importorskip("ipywidgets")
    from vltools.widgets import TileExplorer

    explorer = TileExplorer(_image(300, 200), max_num=2)
    assert explorer._max_slider.continuous_update is False
    assert explorer._min_slider.continuous_update is False
