"""load_image (vltools.images): pixels bit-identical to the card's pipeline, EXIF, clear errors.

The reference is the card's pipeline as specified (``vltools.card.card_pixel_values``): ``convert('RGB')``, ``dynamic_preprocess``
(resize with PIL's default filter, crop row-major, a 448 x 448 thumbnail of the original),
then per tile torchvision's ``Resize((448, 448), BICUBIC)``, ``ToTensor``, ``Normalize``.
"""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import vltools
from vltools.card import card_pixel_values
from vltools.constants import IMAGENET_MEAN, IMAGENET_STD
from vltools.images import (
    TiledImage,
    _column_resizer,
    _columns_are_exact,
    _cut_threaded,
    _run_shared,
    cut_tiles,
    from_pixel_codes,
    load_image,
    pixel_codes,
)
from vltools.threads import pool_size, shared_pool
from vltools.tiling import plan_tiles


def _photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise: every uint8 value occurs, edges and flat areas both."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) % 256], -1)
    return np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)


def _in_mode(array: np.ndarray, mode: str) -> Image.Image:
    rgb = Image.fromarray(array)
    if mode == "RGBA":
        alpha = Image.fromarray(array[:, :, 0][::-1].copy())
        return Image.merge("RGBA", (*rgb.split(), alpha))
    if mode == "P":
        return rgb.quantize(64)
    return rgb.convert(mode)


SHAPES = [(800, 600), (3000, 45), (37, 2100), (449, 447), (1, 1), (900, 300)]
# 16-bit and float modes are scaled, not clipped as by the card: tests/test_hostile_inputs.py
MODES = ["RGB", "RGBA", "L", "P", "CMYK"]


@pytest.mark.parametrize("mode", MODES)
def test_pixel_values_are_bit_identical_to_the_cards_pipeline_for_every_mode(mode):
    # Every shape at a small budget (the card's per-tile pipeline is slow), and one shape per
    # mode, rotating through the extreme ones, at the card's 6 or the model's 12.
    k = MODES.index(mode)
    cases = [(shape, 2) for shape in SHAPES] + [(SHAPES[k], 12 if k % 2 else 6)]
    for (w, h), max_num in cases:
        image = _in_mode(_photo(w, h, seed=k), mode)
        assert image.mode == mode
        ours = load_image(image, max_num=max_num).pixel_values
        card = card_pixel_values(image, max_num=max_num)
        assert ours.dtype == torch.float32 and ours.shape == card.shape, (w, h, mode)
        assert (ours - card).abs().max().item() == 0.0, (w, h, mode, max_num)


def test_pixel_values_are_bit_identical_for_min_num_and_large_max_num():
    image = Image.fromarray(_photo(1000, 300, seed=3))  # 7x2 at max_num 20: 15 tiles
    for min_num, max_num in [(2, 6), (4, 4), (1, 20)]:
        ours = load_image(image, min_num=min_num, max_num=max_num).pixel_values
        card = card_pixel_values(image, min_num=min_num, max_num=max_num)
        assert torch.equal(ours, card), (min_num, max_num)


def test_pixel_values_follow_the_card_for_another_tile_size_and_without_thumbnail():
    image = Image.fromarray(_photo(500, 260, seed=4))
    ours = load_image(image, max_num=4, image_size=224)
    assert ours.pixel_values.shape == (3, 3, 224, 224)
    assert torch.equal(ours.pixel_values, card_pixel_values(image, max_num=4, image_size=224))
    assert ours.grid.tokens_per_tile == 64
    bare = load_image(image, max_num=4, use_thumbnail=False)
    assert bare.num_tiles == 2 and not bare.grid.has_thumbnail
    assert torch.equal(bare.pixel_values, card_pixel_values(image, max_num=4, use_thumbnail=False))


@settings(max_examples=150, deadline=None)
@given(
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    out_width=st.integers(1, 400),
    grow=st.integers(0, 300),
    cut=st.floats(0, 1),
    seed=st.integers(0, 2**16),
)
def test_a_canvas_made_by_columns_is_pils_one_resize(width, height, out_width, grow, cut, seed):
    # Where the height does not shrink, load_image makes the canvas one tile column at a
    # time; every column strip must be the bytes PIL's single resize gives it.
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    size = (out_width, height + grow)
    columns = _column_resizer(image, size)
    x = int(cut * out_width)
    strips = [np.asarray(columns(a, b)) for a, b in [(0, x), (x, out_width)] if b > a]
    one = np.asarray(image.resize(size, Image.Resampling.BICUBIC))
    assert np.array_equal(np.concatenate(strips, axis=1), one)


def test_the_column_path_is_checked_on_this_pillow_and_refuses_a_shrinking_height():
    assert _columns_are_exact()  # the installed Pillow resizes horizontally first here
    with pytest.raises(ValueError, match="height shrinks"):
        _column_resizer(Image.new("RGB", (10, 10)), (20, 5))


@settings(max_examples=40, deadline=None)
@given(
    width=st.integers(1, 1400),
    height=st.integers(1, 1400),
    max_num=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_tiles_are_pils_canvas_cut_and_pixel_values_their_normalisation(
    width, height, max_num, seed
):
    # Both paths: canvases that keep or grow the height (made by columns) and ones that shrink
    # it (one resize). The reference is the card's dynamic_preprocess with PIL alone.
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    tiled = load_image(image, max_num=max_num)
    grid = plan_tiles(width, height, max_num=max_num)
    canvas = image.resize(grid.canvas_size, Image.Resampling.BICUBIC)
    expected = [canvas.crop(b.canvas) for b in grid.boxes if not b.is_thumbnail]
    if grid.has_thumbnail:
        expected.append(image.resize((448, 448), Image.Resampling.BICUBIC))
    assert len(tiled.tiles) == len(expected) == grid.num_tiles
    for k, (ours, theirs) in enumerate(zip(tiled.tiles, expected, strict=True)):
        assert np.array_equal(np.asarray(ours), np.asarray(theirs)), k
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for k, tile in enumerate(expected):  # torchvision's ToTensor + Normalize, op for op
        x = torch.from_numpy(np.array(tile)).permute(2, 0, 1).to(torch.float32).div(255)
        assert torch.equal(tiled.pixel_values[k], x.sub_(mean).div_(std)), k


@settings(max_examples=40, deadline=None)
@given(
    width=st.integers(1, 1400),
    height=st.integers(1, 1400),
    max_num=st.integers(1, 12),
    fast=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_the_straight_path_and_the_threaded_one_write_the_same_bits(
    width, height, max_num, fast, seed
):
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    grid = plan_tiles(width, height, max_num=max_num)
    straight = np.full((grid.num_tiles, 3, 448, 448), np.nan, np.float32)
    threaded = straight.copy()
    a = cut_tiles(image, grid, straight, fast=fast)
    b = _cut_threaded(image, grid, threaded, fast=fast)
    assert straight.tobytes() == threaded.tobytes()
    assert [np.asarray(t).tobytes() for t in a] == [np.asarray(t).tobytes() for t in b]


def test_the_threaded_path_waits_for_a_thumbnail_queued_behind_a_busy_pool():
    # Every pool worker is busy elsewhere: the thumbnail's job waits in the queue while this
    # thread cuts all the tiles itself; it must then be waited for, not dropped.
    pool = shared_pool()
    release = threading.Event()
    started = [threading.Event() for _ in range(pool_size())]

    def busy(k: int) -> None:
        started[k].set()
        release.wait(timeout=30)

    blockers = [pool.submit(busy, k) for k in range(pool_size())]
    for event in started:
        assert event.wait(timeout=30)
    image = Image.fromarray(_photo(300, 900))  # one column of tiles: no helper job queued
    grid = plan_tiles(300, 900, max_num=6)
    assert (grid.cols, grid.has_thumbnail) == (1, True)
    out = np.empty((grid.num_tiles, 3, 448, 448), np.float32)
    threading.Timer(0.3, release.set).start()
    tiles = _cut_threaded(image, grid, out, fast=False)
    for b in blockers:
        b.result(timeout=30)
    assert torch.equal(torch.from_numpy(out), load_image(image, max_num=6).pixel_values)
    assert len(tiles) == grid.num_tiles


def test_cut_tiles_refuses_an_output_of_the_wrong_shape_or_dtype():
    grid = plan_tiles(900, 300, max_num=6)
    with pytest.raises(ValueError, match=r"out must be float32 \(4, 3, 448, 448\)"):
        cut_tiles(Image.new("RGB", (900, 300)), grid, np.empty((3, 3, 448, 448), np.float32))
    with pytest.raises(ValueError, match="out must be float32"):
        cut_tiles(Image.new("RGB", (900, 300)), grid, np.empty((4, 3, 448, 448), np.float64))


def test_shared_jobs_all_run_across_threads_and_the_first_error_is_raised():
    pool, workers = shared_pool(), pool_size()
    seen: list[tuple[int, str]] = []
    gate = threading.Barrier(2, timeout=10)

    def job(k: int) -> None:
        if k < 2:
            gate.wait()  # the first two jobs can only finish if two threads run them at once
        seen.append((k, threading.current_thread().name))

    _run_shared(pool, workers, [lambda k=k: job(k) for k in range(8)])
    assert sorted(k for k, _ in seen) == list(range(8))
    assert len({name for _, name in seen}) >= 2

    def boom() -> None:
        raise RuntimeError("tile 3 failed")

    with pytest.raises(RuntimeError, match="tile 3 failed"):
        _run_shared(pool, workers, [boom, lambda: None, boom])


def test_load_image_from_many_threads_at_once_gives_the_serial_results():
    # Every call shares one small pool; calls from a user's own threads must neither block
    # each other nor mix their tiles.
    from concurrent.futures import ThreadPoolExecutor

    images = [Image.fromarray(_photo(300 + 97 * k, 200 + 61 * k, seed=k)) for k in range(8)]
    serial = [load_image(image, max_num=6).pixel_values for image in images]
    with ThreadPoolExecutor(max_workers=8) as users:
        futures = [users.submit(load_image, image, max_num=6) for image in images * 2]
        results = [f.result(timeout=120) for f in futures]
    for k, tiled in enumerate(results):
        assert torch.equal(tiled.pixel_values, serial[k % len(images)]), k


def test_every_source_kind_gives_the_same_pixels(tmp_path):
    array = _photo(500, 300)
    path = tmp_path / "photo.png"
    Image.fromarray(array).save(path)
    expected = card_pixel_values(Image.open(path), max_num=6)
    for source in [path, str(path), path.read_bytes(), Image.open(path), array, open(path, "rb")]:
        tiled = load_image(source, max_num=6)
        assert torch.equal(tiled.pixel_values, expected), type(source)
    assert load_image(path, max_num=6).source == str(path)


def test_a_tiled_image_carries_the_grid_tiles_and_patch_count():
    tiled = load_image(Image.fromarray(_photo(900, 300)), max_num=6)
    grid = tiled.grid
    assert isinstance(tiled, TiledImage)
    assert (grid.cols, grid.rows) == (3, 1)
    assert tiled.num_tiles == grid.num_tiles == len(tiled.tiles) == 4
    assert tiled.pixel_values.shape == (4, 3, 448, 448)
    assert all(t.size == (448, 448) and t.mode == "RGB" for t in tiled.tiles)
    assert tiled.image.size == (900, 300) and tiled.image.mode == "RGB"
    # tile k is pixel_values[k]: un-normalise and compare with the PIL tile
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for k, tile in enumerate(tiled.tiles):
        back = ((tiled.pixel_values[k] * std + mean) * 255).round().to(torch.uint8)
        assert torch.equal(back.permute(1, 2, 0), torch.from_numpy(np.array(tile)))
    assert "3x1 grid" in repr(tiled) and "num_tiles=4" in repr(tiled)


def test_the_old_num_patches_name_still_reads_the_tile_count_with_a_deprecation_warning():
    tiled = load_image(Image.fromarray(_photo(900, 300)), max_num=6)
    with pytest.deprecated_call(match="use TiledImage.num_tiles"):
        assert tiled.num_patches == tiled.num_tiles == 4


def test_to_moves_and_casts_without_touching_the_original():
    tiled = load_image(Image.fromarray(_photo(300, 300)), max_num=1)
    half = tiled.to(dtype="bfloat16")
    assert half.pixel_values.dtype == torch.bfloat16 and tiled.pixel_values.dtype == torch.float32
    assert half.grid is tiled.grid and half.num_tiles == 1
    assert tiled.to("cpu", torch.float16).pixel_values.dtype == torch.float16
    with pytest.raises(ValueError, match="not a torch dtype"):
        tiled.to(dtype="float33")


def test_fast_mode_stays_close_to_the_exact_pixels():
    image = Image.fromarray(_photo(300, 200)).resize((3000, 2000), Image.Resampling.BILINEAR)
    # one tile: a 6.7x shrink, which fast mode starts with a box-filter reduce
    exact = load_image(image, max_num=1).pixel_values
    fast = load_image(image, max_num=1, fast=True).pixel_values
    assert fast.shape == exact.shape
    diff = (fast - exact).abs()
    assert diff.mean().item() < 0.05  # a couple of uint8 levels on average (1 level ~ 0.017)
    assert diff.max().item() > 0.0  # it really is a different resize

    # A long strip whose height grows but whose width shrinks over 4x: fast mode is PIL's
    # resize with reducing_gap (a reduce first), not the exact column path.
    strip = Image.fromarray(_photo(6000, 40))
    grid = plan_tiles(6000, 40, max_num=2)
    canvas = strip.resize(grid.canvas_size, Image.Resampling.BICUBIC, reducing_gap=2.0)
    fast_tiles = load_image(strip, max_num=2, fast=True).tiles
    exact_tiles = load_image(strip, max_num=2).tiles
    first = grid.boxes[0].canvas
    assert np.array_equal(np.asarray(fast_tiles[0]), np.asarray(canvas.crop(first)))
    assert not np.array_equal(np.asarray(fast_tiles[0]), np.asarray(exact_tiles[0]))

    # Where PIL would not reduce, fast mode is the exact resize.
    small = Image.fromarray(_photo(640, 480))
    assert torch.equal(
        load_image(small, max_num=12, fast=True).pixel_values,
        load_image(small, max_num=12).pixel_values,
    )


def _jpeg_with_orientation(array: np.ndarray, orientation: int) -> bytes:
    image = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    return buffer.getvalue()


def test_exif_orientation_is_applied_by_default_and_off_reproduces_the_card():
    data = _jpeg_with_orientation(_photo(600, 200), orientation=6)  # stored sideways
    upright = load_image(data, max_num=6)
    assert upright.image.size == (200, 600)  # rotated to what a viewer shows
    assert (upright.grid.cols, upright.grid.rows) == (1, 3)
    as_card = load_image(data, max_num=6, exif_transpose=False)
    assert as_card.image.size == (600, 200)
    assert torch.equal(
        as_card.pixel_values, card_pixel_values(Image.open(io.BytesIO(data)), max_num=6)
    )
    plain = _jpeg_with_orientation(_photo(600, 200), orientation=1)
    assert torch.equal(
        load_image(plain, max_num=6).pixel_values,
        load_image(plain, max_num=6, exif_transpose=False).pixel_values,
    )


# --- bad input -------------------------------------------------------------------------------


def test_a_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_image(missing)


def test_a_directory_is_refused_and_its_images_are_suggested(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "inside.png")
    with pytest.raises(ValueError, match=r"is a directory.*inside\.png"):
        load_image(tmp_path)


def test_a_file_that_is_not_an_image_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, not an image")
    with pytest.raises(ValueError, match="not an image Pillow can read") as info:
        load_image(path)
    assert "notes.txt" in str(info.value) and info.value.__cause__ is not None


def test_a_truncated_jpeg_is_refused_with_the_way_to_accept_it(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(_photo(400, 300)).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ValueError, match="truncated") as info:
        load_image(path)
    assert "LOAD_TRUNCATED_IMAGES" in str(info.value) and "cut.jpg" in str(info.value)


@pytest.mark.parametrize(
    "source",
    [Image.new("RGB", (0, 10)), np.zeros((0, 5, 3), np.uint8), np.zeros((5, 0), np.uint8), b""],
    ids=["pil-0x10", "array-0x5", "array-5x0", "no-bytes"],
)
def test_a_zero_size_image_is_refused(source):
    with pytest.raises(ValueError, match="zero pixels|0x10|empty"):
        load_image(source)


def test_an_image_over_the_decompression_bomb_limit_is_refused(monkeypatch):
    buffer = io.BytesIO()
    Image.new("RGB", (200, 100)).save(buffer, "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 20,000 px is over the limit
    with pytest.raises(ValueError) as info:
        load_image(buffer.getvalue())
    message = str(info.value)
    assert "10,000" in message and "PIL.Image.MAX_IMAGE_PIXELS" in message
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)  # raised deliberately: accepted
    assert load_image(buffer.getvalue(), max_num=1).grid.width == 200


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"max_num": 2, "min_num": 3}, ["max_num (2)", "min_num (3)"]),
        ({"min_num": 0}, ["min_num", "at least 1"]),
        ({"image_size": 100}, ["image_size", "100", "multiple of 28"]),
    ],
)
def test_bad_settings_are_refused_before_any_decoding(kwargs, words, tmp_path):
    with pytest.raises(ValueError) as info:
        load_image(tmp_path / "never-opened.jpg", **kwargs)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    ("source", "words"),
    [
        (12, ["int", "path", "PIL.Image", "numpy"]),
        (np.zeros((4, 4, 3), np.float32), ["uint8", "float32", "astype"]),
        (torch.zeros(3, 4, 4), ["Tensor"]),
    ],
)
def test_unsupported_sources_raise_a_type_error_saying_what_is_accepted(source, words):
    with pytest.raises(TypeError) as info:
        load_image(source)
    for word in words:
        assert word in str(info.value)


def test_a_channels_first_array_gets_a_hint_to_transpose():
    with pytest.raises(ValueError, match="transpose"):
        load_image(np.zeros((3, 40, 40, 2), np.uint8))
    with pytest.raises(ValueError, match="transpose"):
        load_image(np.zeros((40, 40, 5), np.uint8))


def test_the_top_level_names_are_the_tiling_ones():
    assert vltools.load_image is load_image
    assert vltools.TiledImage is TiledImage


def test_load_image_works_in_a_forked_child_after_use_in_the_parent():
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    image = Image.fromarray(_photo(700, 300))
    expected = load_image(image, max_num=4).pixel_values  # the parent's pool now exists
    with multiprocessing.get_context("fork").Pool(1) as pool:
        result = pool.apply_async(_tile_in_child, (np.asarray(image),))
        got = result.get(timeout=60)
    assert torch.equal(torch.from_numpy(got), expected)


def _tile_in_child(array: np.ndarray) -> np.ndarray:
    return load_image(array, max_num=4).pixel_values.numpy()


def test_pixel_codes_keep_pixel_values_as_uint8_and_give_the_same_bits_back():
    rng = np.random.default_rng(5)
    image = Image.fromarray(rng.integers(0, 256, (300, 700, 3), dtype=np.uint8))
    values = load_image(image, max_num=4).pixel_values  # [tiles, 3, 448, 448]
    codes = pixel_codes(values)
    assert codes.dtype == torch.uint8 and codes.shape == values.shape
    assert torch.equal(from_pixel_codes(codes).view(torch.int32), values.view(torch.int32))
    # the codes are the tiles' own uint8 pixels, whatever the layout around the channel axis
    tiles = load_image(image, max_num=4).tiles
    assert np.array_equal(codes[0].permute(1, 2, 0).numpy(), np.asarray(tiles[0]))
    part = values[:2, :, 5:9, 100:107]
    assert torch.equal(from_pixel_codes(pixel_codes(part)), part)
    # every value a channel can take, and nothing else
    every = torch.arange(256, dtype=torch.uint8).view(1, 1, 256).expand(3, 1, 256)
    assert torch.equal(pixel_codes(from_pixel_codes(every.contiguous())), every)


def test_pixel_codes_refuse_values_the_normalisation_does_not_make():
    values = load_image(Image.new("RGB", (64, 64), (10, 200, 30)), max_num=1).pixel_values
    for bad in (values + 1e-3, values * 1.5, values.double(), values[0, 0]):
        with pytest.raises(ValueError, match="load_image"):
            pixel_codes(bad)
    with pytest.raises(ValueError, match="uint8 .*pixel_codes"):
        from_pixel_codes(values)
