"""Hostile images: special files, requests too large to allocate, deep-colour pixels."""

from __future__ import annotations

import io
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vltools import images
from vltools.images import load_image


def finishes(fn, *, within: float = 60.0):
    """Run ``fn`` in a thread; return its exception (or None). A hang fails the test."""
    box: dict[str, BaseException | None] = {"error": None}

    def run():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(within)
    assert not t.is_alive(), "the call blocked instead of refusing the path"
    return box["error"]


# --- special files ----------------------------------------------------------------------------


def special_files(tmp_path: Path) -> list[tuple[str, Path, str]]:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock.png"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    files = [("fifo", fifo, "a FIFO"), ("socket", sock_path, "a socket")]
    for dev in ("/dev/zero", "/dev/null", "/dev/urandom"):
        if os.path.exists(dev):
            files.append((dev, Path(dev), "a device"))
    return files


def test_fifos_sockets_and_devices_are_refused_without_blocking(tmp_path):
    for label, path, kind in special_files(tmp_path):
        error = finishes(lambda path=path: load_image(path))
        assert isinstance(error, ValueError), (label, error)
        assert kind in str(error) and "regular files" in str(error), (label, error)
        error = finishes(lambda path=path: images.open_regular_file(path, what="test"))
        assert isinstance(error, ValueError), (label, error)


def test_a_symlink_to_a_regular_image_is_still_read(tmp_path):
    real = tmp_path / "real.png"
    Image.new("RGB", (40, 30), (10, 20, 30)).save(real)
    link = tmp_path / "link.png"
    link.symlink_to(real)
    assert load_image(link).grid.width == 40


def test_a_symlink_to_a_fifo_is_refused(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "photo.jpg"
    link.symlink_to(fifo)
    error = finishes(lambda: load_image(link))
    assert isinstance(error, ValueError) and "a FIFO" in str(error)


# --- the size of the request, before decoding -------------------------------------------------


def png_bytes(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def forbid_decoding(monkeypatch) -> None:
    """Any pixel decoding fails the test: the refusal must come from the header alone."""

    def load(self, *args, **kwargs):
        pytest.fail("pixels were decoded before the request was refused")

    monkeypatch.setattr(Image.Image, "load", load)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", load)


@pytest.mark.parametrize(
    ("width", "height", "max_num"),
    [(100_000, 1, 3000), (1, 100_000, 3000), (60_000, 2, 5000), (2, 90_000, 10_000)],
)
def test_a_request_above_the_stated_limit_is_refused_from_the_header(
    tmp_path, monkeypatch, width, height, max_num
):
    data = png_bytes(width, height)
    path = tmp_path / "wide.png"
    path.write_bytes(data)
    forbid_decoding(monkeypatch)
    for source in (path, data, io.BytesIO(data)):
        with pytest.raises(ValueError, match=r"GiB, above vltools' limit.*Lower max_num"):
            load_image(source, max_num=max_num)


def test_an_in_memory_image_above_the_limit_is_refused_before_resizing(monkeypatch):
    def no_resize(*args, **kwargs):
        pytest.fail("the image was resized before the request was refused")

    monkeypatch.setattr(Image.Image, "resize", no_resize)
    image = Image.new("RGB", (100_000, 1))
    with pytest.raises(ValueError, match=r"3,001 tiles x 3 x 448 x 448 float32 = 6\.7 GiB"):
        load_image(image, max_num=3000)
    with pytest.raises(ValueError, match="max_num"):
        load_image(np.zeros((1, 100_000, 3), np.uint8), max_num=3000)


def test_the_limit_is_the_stated_constant(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXEL_VALUES_BYTES", 5 * 3 * 448 * 448 * 4)
    assert load_image(Image.new("RGB", (448 * 4, 448))).num_tiles == 5  # 4 tiles + thumb
    with pytest.raises(ValueError, match=r"7 tiles"):
        load_image(Image.new("RGB", (448 * 6, 448)))


@pytest.mark.parametrize("bad", [6.0, 2.5, "6", None])
def test_a_float_or_text_max_num_is_refused_not_truncated(bad):
    with pytest.raises(TypeError, match="max_num must be an integer"):
        load_image(Image.new("RGB", (64, 64)), max_num=bad)


# --- deep colour --------------------------------------------------------------------------------


def ramp16(width: int = 300, height: int = 200) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return ((x * 65535) // (width - 1) * 0 + (x + y) * 65535 // (width + height - 2)).astype(
        np.uint16
    )


def expected_from_8bit(grey8: np.ndarray) -> np.ndarray:
    return load_image(Image.fromarray(grey8)).pixel_values.numpy()


def sixteen_bit_sources(tmp_path: Path, wide: np.ndarray):
    png = tmp_path / "deep.png"
    Image.fromarray(wide).save(png)
    assert Image.open(png).mode.startswith("I;16")
    big_endian = Image.frombytes("I;16B", wide.shape[::-1], wide.astype(">u2").tobytes())
    return {
        "16-bit PNG file": png,
        "16-bit PNG bytes": png.read_bytes(),
        "PIL I;16": Image.fromarray(wide),
        "PIL I;16B": big_endian,
        "uint16 grey array": wide,
        "uint16 [H, W, 1] array": wide[:, :, None],
    }


def test_16_bit_images_are_scaled_to_8_bits_not_clipped_white(tmp_path):
    wide = ramp16()
    scaled = ((wide.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    expected = expected_from_8bit(scaled)
    white = load_image(Image.new("RGB", wide.shape[::-1], (255, 255, 255))).pixel_values
    for label, source in sixteen_bit_sources(tmp_path, wide).items():
        ours = load_image(source).pixel_values.numpy()
        assert np.array_equal(ours, expected), label
        assert not np.allclose(ours, white.numpy()), label


def test_uint16_colour_arrays_are_scaled_per_channel():
    rgb16 = np.stack([ramp16(), ramp16()[::-1], np.full((200, 300), 65535, np.uint16)], -1)
    rgb8 = ((rgb16.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    ours = load_image(rgb16).pixel_values
    assert np.array_equal(ours.numpy(), load_image(rgb8).pixel_values.numpy())
    rgba16 = np.concatenate([rgb16, np.full((200, 300, 1), 65535, np.uint16)], -1)
    assert np.array_equal(load_image(rgba16).pixel_values.numpy(), ours.numpy())


@pytest.mark.parametrize("value", [0.0, 0.25, 0.5, 1.0])
def test_float_images_in_0_1_are_scaled_by_255_not_black(value):
    f = Image.fromarray(np.full((50, 80), value, np.float32))
    grey = np.full((50, 80), round(value * 255), np.uint8)
    assert np.array_equal(load_image(f).pixel_values.numpy(), expected_from_8bit(grey))


def test_float_and_32_bit_images_in_0_255_convert_as_the_card_does():
    values = np.arange(0, 250, dtype=np.float32).reshape(10, 25).repeat(4, axis=0)
    for image in (
        Image.fromarray(values * 1.0),  # F beyond 1
        Image.fromarray(values.astype(np.int32)),  # I within 0..255
    ):
        expected = np.asarray(image.convert("L"))
        assert np.array_equal(
            load_image(image).pixel_values.numpy(), expected_from_8bit(expected)
        ), image.mode


@pytest.mark.parametrize(
    ("values", "mode"),
    [
        (np.full((8, 8), 40_000, np.int32), "I"),
        (np.full((8, 8), -3, np.int32), "I"),
        (np.full((8, 8), 300.0, np.float32), "F"),
        (np.full((8, 8), -0.5, np.float32), "F"),
        (np.full((8, 8), np.nan, np.float32), "F"),
        (np.full((8, 8), np.inf, np.float32), "F"),
    ],
)
def test_images_whose_bit_depth_would_be_guessed_are_refused(values, mode):
    image = Image.fromarray(values)
    assert image.mode == mode
    with pytest.raises(ValueError, match=rf"mode '{mode}'.*Scale it yourself"):
        load_image(image)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, np.int16])
def test_other_array_dtypes_are_refused_with_the_fix(dtype):
    with pytest.raises(TypeError, match="uint8, uint16 or bool"):
        load_image(np.zeros((20, 20, 3), dtype))
