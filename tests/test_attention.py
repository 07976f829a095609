"""Attention maps without a model: token geometry, aggregation, sinks, errors, figures, widget."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vltools.attention import (
    AttentionMaps,
    ImageMap,
    ImageSlot,
    VisionAttention,
    pixel_map,
    stitch_tiles,
    token_cell,
)
from vltools.attention_maps import head_positions, layer_positions
from vltools.tiling import plan_tiles

# (width, height, max_num): wide, tall, square, a single tile, a 2 x 1 with thumbnail
GRIDS = [
    (800, 600, 6),
    (3200, 480, 12),
    (850, 3300, 12),
    (500, 500, 4),
    (640, 427, 1),
    (900, 450, 2),
]


def _cell_of_pixel(x: int, length: int, cells: int) -> int:
    """Exact (integer) cell index of pixel ``x``'s centre when ``length`` px hold ``cells``."""
    return min((2 * x + 1) * cells // (2 * length), cells - 1)


def test_token_cell_follows_the_row_major_16_by_16_order_of_each_tile():
    assert token_cell(0) == (0, 0, 0)
    assert token_cell(15) == (0, 0, 15)
    assert token_cell(16) == (0, 1, 0)
    assert token_cell(255) == (0, 15, 15)
    assert token_cell(256 + 5 * 16 + 7) == (1, 5, 7)
    with pytest.raises(ValueError, match=">= 0"):
        token_cell(-1)


@pytest.mark.parametrize(("width", "height", "max_num"), GRIDS)
def test_a_single_hot_token_lands_on_its_cell_of_the_original_image(width, height, max_num):
    grid = plan_tiles(width, height, max_num=max_num)
    rng = np.random.default_rng(width + height)
    # every grid tile and the thumbnail, a random cell in each
    for box in grid.boxes:
        r, c = (int(v) for v in rng.integers(0, 16, size=2))
        values = np.zeros(grid.num_image_tokens)
        values[box.index * 256 + r * 16 + c] = 1.0
        source = "thumbnail" if box.is_thumbnail else "tiles"
        painted = pixel_map(values, grid, source=source)
        assert painted.shape == (height, width)
        # independent of the TileBoxes: the image is stretched to cols*448 x rows*448 (two
        # different scale factors) and cut; a token is a 28 x 28 canvas block
        cols, rows = (1, 1) if box.is_thumbnail else (grid.cols, grid.rows)
        col0, row0 = (0, 0) if box.is_thumbnail else (box.col, box.row)
        xs = np.array([_cell_of_pixel(x, width, 16 * cols) for x in range(width)])
        ys = np.array([_cell_of_pixel(y, height, 16 * rows) for y in range(height)])
        expected = (ys[:, None] == row0 * 16 + r) & (xs[None, :] == col0 * 16 + c)
        assert expected.any()
        np.testing.assert_array_equal(painted == 1.0, expected)


@settings(max_examples=30, deadline=None)
@given(
    width=st.integers(60, 900),
    height=st.integers(60, 900),
    max_num=st.integers(1, 12),
    data=st.data(),
)
def test_every_token_covers_a_nonempty_block_and_the_blocks_tile_the_image(
    width, height, max_num, data
):
    grid = plan_tiles(width, height, max_num=max_num)
    n_grid = grid.cols * grid.rows
    ids = np.arange(grid.num_image_tokens, dtype=float)
    painted = pixel_map(ids, grid, size=(min(width, 300), min(height, 300)))
    # each pixel shows a grid-tile token (never a thumbnail one), and with one pixel per cell or
    # more, every grid token shows up somewhere
    assert painted.max() < n_grid * 256
    if width >= 16 * grid.cols and height >= 16 * grid.rows:
        full = pixel_map(ids, grid)
        assert len(np.unique(full)) == n_grid * 256
    token = data.draw(st.integers(0, n_grid * 256 - 1))
    tile, r, c = token_cell(token)
    box = grid.boxes[tile]
    stitched, _ = stitch_tiles(ids, grid)
    assert stitched[box.row * 16 + r, box.col * 16 + c] == token


def test_stitching_puts_each_tile_at_its_row_and_column_and_keeps_the_thumbnail_apart():
    grid = plan_tiles(800, 600, max_num=6)  # 3 x 2 + thumbnail
    assert (grid.cols, grid.rows, grid.num_tiles) == (3, 2, 7)
    per_tile = np.stack([np.full((16, 16), float(i)) for i in range(7)])
    stitched, thumb = stitch_tiles(per_tile, grid)
    assert stitched.shape == (32, 48)
    assert stitched[0, 0] == 0 and stitched[0, 47] == 2 and stitched[31, 0] == 3
    assert stitched[31, 47] == 5
    np.testing.assert_array_equal(thumb, np.full((16, 16), 6.0))
    single = plan_tiles(640, 427, max_num=1)
    stitched, thumb = stitch_tiles(np.arange(256.0), single)
    assert stitched.shape == (16, 16) and thumb is None
    with pytest.raises(ValueError, match="no thumbnail"):
        pixel_map(np.arange(256.0), single, source="thumbnail")


def test_blending_tiles_and_thumbnail_gives_a_density_over_the_image():
    grid = plan_tiles(900, 450, max_num=2)  # 2 x 1 + thumbnail
    rng = np.random.default_rng(0)
    imap = ImageMap(rng.random((3, 16, 16)), grid, "Image-1")
    for w in (0.0, 0.3, 1.0):
        dens = imap.pixels(blend=w, size=(90, 45))
        assert dens.shape == (45, 90)
        assert dens.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="blend"):
        imap.pixels(blend=1.5)
    assert imap.thumbnail.shape == (16, 16) and imap.tiles.shape == (16, 32)


# --- AttentionMaps on synthetic rows --------------------------------------------------------


def compact(rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Full rows ``[..., keys]`` as the capture keeps them: the image columns, then the rest."""
    others = np.ones(rows.shape[-1], dtype=bool)
    others[positions] = False
    return np.concatenate([rows[..., positions], rows[..., others].sum(-1, keepdims=True)], -1)


def synthetic_maps(**kwargs) -> AttentionMaps:
    """Two images (a 2 x 1 grid with thumbnail, then one tile) inside a short text prompt."""
    return synthetic(**kwargs)[0]


def synthetic(
    *, tokens: int = 5, layers=(0, 3, 7), heads: int = 4, seed: int = 0, sink: bool = False
) -> tuple[AttentionMaps, np.ndarray]:
    """``synthetic_maps`` and the full rows ``[tokens, layers, heads, keys]`` it was made from."""
    grids = [plan_tiles(900, 450, max_num=2), plan_tiles(300, 300, max_num=1)]
    pre, mid, post = 7, 3, 6
    slots, pos = [], pre
    for i, g in enumerate(grids):
        n = g.num_image_tokens
        first = sum(x.num_tiles for x in grids[:i])
        slots.append(ImageSlot(i, f"Image-{i + 1}", g, np.arange(pos, pos + n), first))
        pos += n + mid
    prompt = pos - mid + post
    keys = prompt + tokens - 1
    rng = np.random.default_rng(seed)
    rows = np.zeros((tokens, len(layers), heads, keys), dtype=np.float32)
    for t in range(tokens):
        seen = prompt + t
        w = rng.random((len(layers), heads, seen)) ** 4
        if sink:
            w[..., 0] += 50.0  # the first position: a text sink
            w[..., slots[0].positions[37]] += 20.0  # one image token: a visual sink
        rows[t, :, :, :seen] = w / w.sum(-1, keepdims=True)
    words = ["The", " cat", "er", "pillar", "."][:tokens] + ["x"] * max(0, tokens - 5)
    offsets = np.cumsum([0] + [len(w) for w in words]).tolist()
    vision = VisionAttention(rng.random((4, 2, 3, 32, 32)).astype(np.float32), (0, 5))
    positions = np.concatenate([s.positions for s in slots])
    maps = AttentionMaps(
        weights=compact(rows, positions),
        layers=tuple(layers),
        token_ids=np.arange(tokens),
        tokens=tuple(words),
        text="".join(words),
        offsets=tuple(offsets),
        prompt_length=prompt,
        images=tuple(slots),
        vision=vision,
    )
    return maps, rows


def test_image_attention_matches_the_raw_rows_for_a_token_a_layer_and_a_head():
    maps, full = synthetic()
    pos = maps.image_positions
    got = maps.image_attention(tokens=2, layers=3, heads=1)
    np.testing.assert_allclose(got, full[2, 1, 1, pos], rtol=1e-6)
    mean = maps.image_attention(tokens=2, layers=3)
    np.testing.assert_allclose(mean, full[2, 1, :, pos].T.mean(0), rtol=1e-6)
    peak = maps.image_attention(tokens=2, layers=3, reduce="max")
    assert np.all(peak >= mean - 1e-9)
    np.testing.assert_allclose(peak, full[2, 1][:, pos].max(0), rtol=1e-6)


def test_the_stored_weights_are_the_image_columns_and_the_rest_and_sum_to_one():
    maps, full = synthetic()
    image_tokens = sum(s.grid.num_image_tokens for s in maps.images)
    assert maps.weights.shape == (5, 3, 4, image_tokens + 1) and full.shape[3] > image_tokens + 1
    assert maps.num_image_tokens == image_tokens == len(maps.image_positions)
    np.testing.assert_allclose(maps.weights.sum(-1), 1.0, rtol=1e-5)
    text = np.setdiff1d(np.arange(full.shape[3]), maps.image_positions)
    np.testing.assert_allclose(maps.rest, full[..., text].sum(-1), rtol=1e-5)
    np.testing.assert_array_equal(maps.image_weights, full[..., maps.image_positions])
    text_repr = repr(maps)
    assert f"{image_tokens} image tokens + rest" in text_repr and "float32" in text_repr
    assert len(text_repr) < 300
    with pytest.raises(ValueError, match=r"image tokens \+ 1 = 1025.*got shape \(5, 3, 4, 9\)"):
        AttentionMaps(**{**maps.__dict__, "weights": maps.weights[..., :9]})


def test_image_columns_keep_each_image_token_and_sum_the_rest_like_numpy():
    import torch

    from vltools.attention import image_columns

    rows = torch.softmax(torch.randn(2, 3, 40, generator=torch.Generator().manual_seed(1)), -1)
    positions = torch.tensor([5, 6, 7, 20, 21])
    kept = image_columns(rows, positions)
    assert kept.shape == (2, 3, 6) and kept.dtype == torch.float32
    np.testing.assert_allclose(kept.numpy(), compact(rows.numpy(), positions.numpy()), rtol=1e-6)
    torch.testing.assert_close(kept.sum(-1), torch.ones(2, 3))


def test_a_span_of_tokens_and_a_range_of_layers_average_their_maps():
    maps = synthetic_maps()
    span = maps.image_attention(tokens=maps.find("caterpillar"), layers=[3, 7])
    parts = [maps.image_attention(tokens=t, layers=ly) for t in (1, 2, 3) for ly in (3, 7)]
    np.testing.assert_allclose(span, np.mean(parts, axis=0), rtol=1e-5)
    assert maps.find("caterpillar") == range(1, 4)
    assert maps.find("pill") == range(3, 4)


def test_image_share_is_the_mass_on_image_tokens_and_lies_in_zero_one():
    maps, full = synthetic()
    share = maps.image_share()
    assert share.shape == (maps.num_tokens, 3)
    assert np.all((share >= 0) & (share <= 1 + 1e-6))
    manual = full[..., maps.image_positions].sum(-1).mean(-1)
    np.testing.assert_allclose(share, manual, rtol=1e-6)
    # the whole image map of a token/layer sums to its share
    total = maps.image_attention(tokens=0, layers=0).sum()
    assert total == pytest.approx(float(share[0, 0]), rel=1e-5)


def test_maps_give_one_map_per_image_with_its_own_tokens():
    maps, full = synthetic()
    first, second = maps.maps(tokens=1, layers=0, heads=2)
    assert (first.label, second.label) == ("Image-1", "Image-2")
    assert first.per_tile.shape == (3, 16, 16) and second.per_tile.shape == (1, 16, 16)
    s = maps.images[1]
    np.testing.assert_allclose(second.per_tile.reshape(-1), full[1, 0, 2, s.positions], rtol=1e-6)
    assert maps.map("Image-2", tokens=1, layers=0, heads=2).label == "Image-2"


def test_removing_sinks_renormalises_every_row_over_the_other_positions():
    maps, full = synthetic(sink=True)
    pos = maps.image_positions
    visual = int(maps.images[0].positions[37])
    assert maps.sinks() == (visual,)  # the text sink at position 0 lies in the rest
    rows = maps.select(sinks=True)
    assert np.all(rows[..., 37] == 0)
    np.testing.assert_allclose(rows.sum(-1), 1.0, rtol=1e-5)
    # explicit image positions, checked by hand on one full row
    kept = full[0, 0, 0].copy()
    kept[[visual, int(pos[5])]] = 0
    got = maps.select(sinks=[visual, int(pos[5])])[0, 0, 0]
    np.testing.assert_allclose(got[:-1], kept[pos] / kept.sum(), rtol=1e-5)
    # without the visual sink the image gets a smaller share of the rest
    assert np.all(maps.image_share(sinks=True) < maps.image_share())
    with pytest.raises(ValueError, match=r"Sink position 0 is not an image token \(image tokens"):
        maps.select(sinks=[0])
    assert synthetic_maps(sink=False).sinks() == ()


def test_the_vision_map_averages_cls_attention_over_the_images_tiles():
    maps = synthetic_maps()
    vm = maps.vision_map(1, layers=5, heads=[0, 2])
    expected = maps.vision.cls[3:4, 1][:, [0, 2]].mean(axis=1)
    np.testing.assert_allclose(vm.per_tile, expected, rtol=1e-6)
    assert vm.side == 32 and vm.tiles.shape == (32, 32)
    with pytest.raises(ValueError, match=r"captured vision layers: \[0, 5\]"):
        maps.vision_map(0, layers=3)


def test_bad_selections_raise_errors_that_list_what_exists():
    maps = synthetic_maps()
    with pytest.raises(ValueError, match=r"5 generated tokens \(0\.\.4\).*'The'"):
        maps.image_attention(tokens=9)
    with pytest.raises(ValueError, match=r"captured layers: \[0, 3, 7\]"):
        maps.map(0, layers=5)
    with pytest.raises(ValueError, match=r"4 heads per layer \(0\.\.3\)"):
        maps.map(0, heads=4)
    with pytest.raises(ValueError, match=r"No image 2 .*'Image-1'.*'Image-2'"):
        maps.map(2)
    with pytest.raises(ValueError, match="not in the generated text"):
        maps.find("dog")
    with pytest.raises(ValueError, match="reduce"):
        maps.image_attention(reduce="median")
    with pytest.raises(ValueError, match="not an image token"):
        maps.select(sinks=[10**6])


def test_the_vision_map_takes_the_maximum_over_heads_only_when_asked():
    maps = synthetic_maps()
    peak = maps.vision_map(0, layers=[0, 5], heads=[1, 2], reduce="max")
    cls = maps.vision.cls[0:3]  # Image-1's three tiles
    np.testing.assert_allclose(peak.per_tile, cls[:, :, [1, 2]].max(axis=2).mean(axis=1))
    mean = maps.vision_map(0, reduce="mean")
    np.testing.assert_allclose(mean.per_tile, cls.mean(axis=2).mean(axis=1), rtol=1e-6)


@pytest.mark.parametrize("reduce", ["median", "min", "MAX", None, 1])
def test_an_unknown_reduce_is_refused_by_every_method_naming_the_allowed_ones(reduce):
    maps = synthetic_maps()
    calls = [
        lambda: maps.image_attention(reduce=reduce),
        lambda: maps.map(0, reduce=reduce),
        lambda: maps.maps(reduce=reduce),
        lambda: maps.vision_map(0, reduce=reduce),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"reduce must be one of \('mean', 'max'\).*got"):
            call()


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("map", r"Layer 5 was not captured; captured layers: \[0, 3, 7\]"),
        ("vision_map", r"Vision layer 5 was not captured; captured vision layers: \[0, 5\]"),
    ],
)
def test_a_layer_that_was_not_captured_is_refused_the_same_way_by_both_towers(method, message):
    maps = synthetic_maps()
    layer = 5 if method == "map" else 3
    message = message.replace("5 was", f"{layer} was")
    with pytest.raises(ValueError, match=message):
        getattr(maps, method)(0, layers=[0, layer])
    with pytest.raises(ValueError, match="Empty"):
        getattr(maps, method)(0, layers=[])


@pytest.mark.parametrize("heads", [3, -1, [0, 3], []])
def test_a_vision_head_out_of_range_is_refused_naming_the_range(heads):
    maps = synthetic_maps()  # the vision tower has 3 heads
    with pytest.raises(ValueError, match=r"vision tower has 3 heads per layer \(0\.\.2\)"):
        maps.vision_map(0, heads=heads)


@pytest.mark.parametrize("bad", [1.5, "0", [0, 1.0], True])
def test_layers_and_heads_that_are_not_ints_are_a_type_error(bad):
    maps = synthetic_maps()
    with pytest.raises(TypeError, match="ints"):
        maps.map(0, heads=bad)
    with pytest.raises(TypeError, match="ints"):
        maps.vision_map(0, layers=bad)


def test_selected_layers_and_head_positions_are_the_one_selection_path():
    maps = synthetic_maps()
    assert maps.selected_layers([7, 0]) == (7, 0)
    assert layer_positions((0, 5), 5, tower="vision").tolist() == [1]
    assert head_positions(4, None).tolist() == [0, 1, 2, 3]
    assert head_positions(4, np.int64(2)).tolist() == [2]


# --- figures and the widget -----------------------------------------------------------------


def test_overlay_draws_the_original_image_with_one_rectangle_per_grid_tile():
    from PIL import Image

    from vltools import viz

    maps = synthetic_maps()
    slot = maps.images[0]
    picture = Image.new("RGB", (900, 450), "white")
    with_image = AttentionMaps(
        **{
            **maps.__dict__,
            "images": (ImageSlot(**{**slot.__dict__, "image": picture}), maps.images[1]),
        }
    )
    fig = viz.overlay(with_image, tokens=0, layers=[0, 3])
    ax = fig.axes[0]
    assert len(ax.patches) == 2  # the 2 x 1 grid, no rectangle for the thumbnail
    assert len(ax.images) == 2  # the photo and the heatmap
    assert "not an explanation" in ax.get_title()
    thumb = viz.overlay(with_image.map(0), source="thumbnail")
    assert len(thumb.axes[0].patches) == 0
    boxed = viz.overlay(with_image, tokens=0, box=(100, 50, 300, 200))
    outline = boxed.axes[0].patches[-1]
    assert len(boxed.axes[0].patches) == 3  # the grid's two tiles and the box
    assert (outline.get_x(), outline.get_y(), outline.get_width(), outline.get_height()) == (
        100,
        50,
        200,
        150,
    )
    with pytest.raises(ValueError, match=r"box=\(0, 0, 901, 10\) is not inside the 900 x 450"):
        viz.overlay(with_image, tokens=0, box=(0, 0, 901, 10))
    with pytest.raises(TypeError, match="left, top, right, bottom"):
        viz.overlay(with_image, tokens=0, box=(0, 0, 10))
    with pytest.raises(TypeError, match="only apply to an AttentionMaps"):
        viz.overlay(with_image.map(0), tokens=1)


def test_tile_maps_shows_every_tile_and_the_thumbnail():
    from vltools import viz

    maps = synthetic_maps()
    fig = viz.tile_maps(maps, layers=7)
    titles = [ax.get_title() for ax in fig.axes]
    assert "thumbnail" in titles and "tile 0 (r0 c0)" in titles and "tile 1 (r0 c1)" in titles
    share = viz.image_share(maps, highlight=range(1, 3))
    assert len(share.axes) == 1


def test_compare_layers_draws_each_layer_once_in_the_order_given():
    from vltools import viz

    maps = synthetic_maps()
    # early, middle and late of a short model repeat a layer: one panel each, not two
    n = len(maps.layers)
    fig = viz.compare_layers(maps, [maps.layers[0], maps.layers[n // 2], maps.layers[-1], 7])
    assert maps.layers == (0, 3, 7)  # so the request above is layers 0, 3, 7, 7
    assert [ax.get_title() for ax in fig.axes] == ["layer 0", "layer 3", "layer 7"]


@pytest.mark.slow
def test_attention_explorer_state_drives_the_view_and_shows_bad_choices():
    from vltools.widgets import AttentionExplorer

    maps = synthetic_maps()
    w = AttentionExplorer(maps)
    assert w.error == "" and w.current.label == "Image-1"
    np.testing.assert_allclose(w.current.per_tile, maps.map(0, tokens=0).per_tile, rtol=1e-6)
    w.set(token=1, span=3, head="2", layers=(3, 7))
    expected = maps.map(0, tokens=range(1, 4), layers=[3, 7], heads=2)
    np.testing.assert_allclose(w.current.per_tile, expected.per_tile, rtol=1e-6)
    assert w._token_slider.value == 1 and w._span_slider.value == 3  # controls follow traits
    w.head = "max"  # one trait: observed directly
    np.testing.assert_allclose(
        w.current.per_tile, maps.map(0, tokens=range(1, 4), layers=[3, 7], reduce="max").per_tile
    )
    good = w.current
    w.layers = (1, 2)  # no captured layer there
    assert "captured layers" in w.error and w.current is good
    w.layers = (3, 7)
    assert w.error == ""
    good = w.current
    w.token = 4  # span 3 from token 4 runs past the answer
    assert "out of range" in w.error and w.current is good
    w.set(token=0, layers=(0, 7), image=1)
    assert w.error == "" and w.current.label == "Image-2"
    w.source = "thumbnail"  # a single tile has none
    assert "no thumbnail" in w.error
    w.set(image=0, source="blend", sinks=True)
    assert w.error == "" and w.current.label == "Image-1"
    with pytest.raises(ValueError, match="Unknown state"):
        w.set(colour="red")
    assert len(w.figure().axes) >= 3
    bundle = w._repr_mimebundle_()
    assert "image/png" in bundle


def test_attention_view_draws_overlay_thumbnail_and_share_and_refuses_an_unknown_source():
    from vltools import viz

    maps = synthetic_maps()
    selection = {"tokens": range(1, 3), "layers": [0, 3], "sinks": False}
    fig = viz.attention_view(maps, maps.map(0, tokens=range(1, 3)), selection=selection)
    titles = [ax.get_title() for ax in fig.axes]
    assert any("(tiles)" in t for t in titles) and "thumbnail's 16x16 map" in titles
    assert any("share of each token" in t for t in titles)
    with pytest.raises(ValueError, match="'tiles', 'thumbnail' or 'blend'"):
        viz.attention_view(maps, maps.map(0), selection=selection, source="both")


def test_every_figure_shows_itself_in_jupyter_without_a_registered_formatter():
    from IPython.core.formatters import DisplayFormatter
    from matplotlib.figure import Figure

    from vltools import viz

    maps = synthetic_maps()
    for fig in (viz.tile_maps(maps, layers=7), viz.image_share(maps)):
        assert isinstance(fig, Figure)  # still the matplotlib figure, to save or edit
        data, _ = DisplayFormatter().format(fig)  # a fresh formatter: nothing registered
        assert data["image/png"].startswith(b"\x89PNG"), sorted(data)
