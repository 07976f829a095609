"""Opening an image and turning it into InternVL's tiles: :func:`load_image`, :class:`TiledImage`.

The model card's ``load_image`` (``docs/FORMAT.md``, section 1): open the
source, plan the grid with :func:`vltools.tiling.plan_tiles`, resize the image to the grid's
canvas (``cols * 448`` by ``rows * 448``, bicubic), cut the tiles row by row, add a 448 x 448
thumbnail of the whole image when there is more than one tile, and normalise everything with
the ImageNet mean and std into ``pixel_values`` ``[num_tiles, 3, 448, 448]``.

Exactness. The pixel values are bit-identical to the card's pipeline (max abs difference
0.0): the same PIL ``convert("RGB")``, the same bicubic resizes, and the same float32
operations as torchvision's ``ToTensor`` + ``Normalize`` (``(x / 255 - mean) / std``,
checked value for value against torch for all 256 inputs, see :func:`_normaliser`).

Two paths, the same bits. :func:`cut_tiles` is the card's steps one after the other (the
canvas resize, the crops, the thumbnail, each tile normalised into one preallocated tensor):
the reference, and what the video loader runs for each frame. :func:`load_image` runs the
threaded variant at the end of this module, on the process's one pool
(:mod:`vltools.threads`): the thumbnail's resize beside the canvas's and, where the height
does not shrink, the canvas one tile column per thread, which rests on a probe of Pillow's
pass order (:func:`_columns_are_exact`). ``benchmarks/tiling_paths.py`` measures what that
buys on the 4032 x 3024 photo (``benchmarks/README.md``).

Deep colour. 16-bit images and float ``F`` images in ``[0, 1]`` are scaled to 8 bits
(:func:`to_8bit`) where the card clips them to a white or black square; other ``I``/``F``
images are refused. 8-bit images are the card's exactly.

Hostile input. Only regular files are opened (a FIFO, socket or device is refused at once),
and the size of ``pixel_values`` is checked against :data:`MAX_PIXEL_VALUES_BYTES` from the
image's header, before any pixel is decoded or resized.

EXIF. ``load_image(..., exif_transpose=False)`` is the card exactly; the default first
applies the EXIF orientation, which the card ignores (a phone photo taken upright but stored
sideways is tiled upright here, sideways by the card).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import itertools
import logging
import os
import stat
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from vltools.constants import (
    DEFAULT_MAX_NUM,
    DEFAULT_MIN_NUM,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TILE_SIZE,
)
from vltools.threads import cancel_and_wait, on_pool_thread, pool_size, shared_pool
from vltools.tiling import TileBox, TileGrid, check_tile_settings, plan_tiles

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "MAX_PIXEL_VALUES_BYTES",
    "TiledImage",
    "check_pixel_values_size",
    "cut_tiles",
    "from_pixel_codes",
    "load_image",
    "open_image",
    "open_regular_file",
    "pixel_codes",
    "to_8bit",
]

logger = logging.getLogger(__name__)

# The card's pipeline resizes with PIL's default filter, which is BICUBIC for an RGB image.
_RESAMPLE = Image.Resampling.BICUBIC
# fast=True: PIL first shrinks by an integer factor with a box filter (Image.reduce) when the
# image is at least twice the reducing gap larger, then resizes bicubically; and the thumbnail
# is resized from the canvas instead of the original (see benchmarks/tiling.py for the error).
_FAST_REDUCING_GAP = 2.0


@dataclass(frozen=True, eq=False)
class TiledImage:
    """An image cut into InternVL tiles, ready for the model.

    Attributes:
        image: the original image as PIL RGB (after the EXIF orientation unless
            ``exif_transpose=False``), ``grid.width x grid.height``.
        grid: the :class:`TileGrid` it was cut with.
        tiles: ``grid.num_tiles`` PIL images of ``image_size x image_size``, in
            ``pixel_values`` order (grid tiles row-major, the thumbnail last).
        pixel_values: float32 ``[num_tiles, 3, image_size, image_size]``, ImageNet-normalised
            (``(x / 255 - mean) / std``), on the CPU unless moved with :meth:`to`.
        num_tiles: ``grid.num_tiles``, the thumbnail included; pass ``[tiled.num_tiles]`` as
            the chat API's ``num_patches_list`` (the card's name for tiles per image).
        source: a name for where the image came from (the path), or ``None``.
    """

    image: Image.Image
    grid: TileGrid
    tiles: tuple[Image.Image, ...]
    pixel_values: torch.Tensor
    num_tiles: int
    source: str | None = None

    @property
    def num_patches(self) -> int:
        """Deprecated name of :attr:`num_tiles` (vltools calls tiles tiles; the vision
        encoder's patches are its 14-pixel squares)."""
        warnings.warn(
            "TiledImage.num_patches is deprecated; use TiledImage.num_tiles (the same number).",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.num_tiles

    def to(self, device: Any = None, dtype: Any = None) -> TiledImage:
        """A copy with ``pixel_values`` moved to ``device`` and/or cast to ``dtype``.

        ``dtype`` may be a ``torch.dtype`` or its name (``"bfloat16"``).
        """
        if isinstance(dtype, str):  # a name such as "bfloat16": the loader's own resolution
            from vltools.dtypes import resolve_dtype

            dtype = resolve_dtype(dtype, None)
        return dataclasses.replace(self, pixel_values=self.pixel_values.to(device, dtype))

    @property
    def num_image_tokens(self) -> int:
        """Image tokens this image costs in the prompt (``grid.num_image_tokens``)."""
        return self.grid.num_image_tokens

    def __repr__(self) -> str:
        pv = self.pixel_values
        name = f"{self.source!r}, " if self.source else ""
        return (
            f"TiledImage({name}{self.grid.width}x{self.grid.height} -> "
            f"{self.grid.cols}x{self.grid.rows} grid, num_tiles={self.num_tiles}"
            f"{' incl. thumbnail' if self.grid.has_thumbnail else ''}, "
            f"pixel_values={tuple(pv.shape)} {str(pv.dtype).removeprefix('torch.')} on "
            f"{pv.device}, {self.grid.num_image_tokens:,} image tokens)"
        )

    def _repr_png_(self) -> bytes:
        from vltools.viz import figure_to_png, show_tiles

        return figure_to_png(show_tiles(self), dpi=72)


def _decode(
    opener: Callable[[], Image.Image],
    what: str,
    check: Callable[[Image.Image], None] | None = None,
) -> Image.Image:
    """Open and fully decode an image file, turning PIL's failures into clear errors.

    ``check`` sees the opened image (its size and mode are known, no pixels decoded yet) and
    may raise to refuse it before any decoding work.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = opener()
            if check is not None:
                check(image)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        limit = Image.MAX_IMAGE_PIXELS or 0
        raise ValueError(
            f"{what} is larger than Pillow's decompression-bomb limit of {limit:,} pixels "
            "(PIL.Image.MAX_IMAGE_PIXELS). vltools refuses it rather than decode a possibly "
            "malicious file. If you trust the file, raise the limit deliberately first: "
            f"`PIL.Image.MAX_IMAGE_PIXELS = <pixels>` (None disables the check). Pillow says: {e}"
        ) from e
    except Image.UnidentifiedImageError as e:
        raise ValueError(
            f"{what} is not an image Pillow can read (formats: JPEG, PNG, WebP, GIF, BMP, "
            "TIFF, ...). Check that it is an image file and not, say, text or a video; "
            "videos go to vltools.load_video."
        ) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(
            f"{what} could not be decoded; it is truncated or corrupt ({e}). Re-download or "
            "re-export it; to accept a partly decoded image on purpose, set "
            "`PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True`."
        ) from e
    return image


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValueError(
            f"A numpy image must be [height, width] or [height, width, channels] with 1, 3 or "
            f"4 channels, got shape {array.shape}. Channels-first arrays need "
            "array.transpose(1, 2, 0)."
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            f"The numpy image has shape {array.shape}: zero pixels. Pass a non-empty image."
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype == np.uint8 or array.dtype == np.bool_:
        return Image.fromarray(np.ascontiguousarray(array))
    if array.dtype == np.uint16:  # 16 bits per channel, scaled to 8 (see to_8bit)
        return Image.fromarray(scale_16bit(array))
    raise TypeError(
        f"A numpy image must be uint8, uint16 or bool, got dtype {array.dtype} with "
        f"shape {array.shape}. For floats in [0, 1] use "
        "`(array * 255).round().clip(0, 255).astype(np.uint8)`."
    )


def open_image(
    source: Any,
    *,
    exif_transpose: bool,
    check: Callable[[int, int], None] | None = None,
) -> tuple[Image.Image, str | None]:
    """The source as a PIL RGB image (the card's ``convert('RGB')``) and a name for it.

    ``check(width, height)`` is called with the upright size before the pixels are decoded
    (or, for an image already in memory, before anything else is done with it).
    """

    def check_opened(image: Image.Image) -> None:
        # both orientations: reading the EXIF orientation can decode the pixels (PNG)
        if check is not None:
            check(image.width, image.height)
            if exif_transpose and image.width != image.height:
                check(image.height, image.width)

    name: str | None = None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        name = str(source)
        if not path.exists():
            raise FileNotFoundError(
                f"No image file at {str(path)!r} (resolved against the working directory "
                f"{os.getcwd()!r}). Check the path; sample images are at "
                "vltools.data.sample('photo_cat.jpg') and friends."
            )
        if path.is_dir():
            images = sorted(
                p.name
                for p in path.iterdir()
                if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
            )
            hint = f" Images in it: {', '.join(images[:5])}." if images else ""
            raise ValueError(
                f"{str(path)!r} is a directory; load_image wants one image file.{hint}"
            )
        with open_regular_file(path, what="load_image") as f:
            image = _decode(lambda: Image.open(f), f"The file {str(path)!r}", check_opened)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ValueError("The image bytes are empty (0 bytes); pass an encoded image file.")
        data = bytes(source)
        image = _decode(
            lambda: Image.open(io.BytesIO(data)), f"The {len(data):,} image bytes", check_opened
        )
    elif isinstance(source, Image.Image):
        image = source
        try:
            image.load()
        except OSError as e:
            raise ValueError(
                f"The PIL image could not be decoded; it is truncated or corrupt ({e}). To accept "
                "a partly decoded image on purpose, set `PIL.ImageFile.LOAD_TRUNCATED_IMAGES = "
                "True`."
            ) from e
    elif isinstance(source, np.ndarray):
        image = _from_array(source)
    elif hasattr(source, "read"):
        name = getattr(source, "name", None)
        name = str(name) if isinstance(name, (str, os.PathLike)) else None
        image = _decode(
            lambda: Image.open(source), f"The file object {name or source!r}", check_opened
        )
    else:
        raise TypeError(
            f"load_image takes a path (str or Path), a PIL.Image, a numpy array [H, W, 3] "
            f"uint8, or the bytes of an image file; got {type(source).__name__}."
        )
    if image.width < 1 or image.height < 1:
        raise ValueError(
            f"The image is {image.width}x{image.height} pixels: nothing to tile. "
            "Pass a non-empty image."
        )
    if isinstance(source, (Image.Image, np.ndarray)):
        check_opened(image)
    image = to_8bit(image)
    if exif_transpose and image.getexif().get(0x0112, 1) not in (1, None):
        image = ImageOps.exif_transpose(image)
    if image.mode != "RGB":
        try:
            image = image.convert("RGB")
        except ValueError as e:
            raise ValueError(
                f"Pillow cannot convert this {image.mode} image to RGB ({e}); convert it to RGB "
                "yourself first."
            ) from e
    return image, name


@functools.lru_cache(maxsize=8)
def _value_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """``[3, 256]`` float32: what ToTensor + Normalize make of each uint8 value, per channel,
    computed with torch's own operations, exactly as torchvision does."""
    import torch

    # torch, exactly as torchvision: ToTensor (to float32, div(255)), Normalize (sub_, div_)
    values = torch.arange(256, dtype=torch.uint8).view(1, 1, 256).expand(3, 1, 256)
    x = values.to(dtype=torch.float32).div(255)
    x = x.sub_(torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1))
    x = x.div_(torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1))
    table = x.reshape(3, 256).numpy().copy()
    table.flags.writeable = False  # cached and shared
    return table


def pixel_codes(pixel_values: torch.Tensor) -> torch.Tensor:
    """The uint8 pixels behind ``pixel_values`` (``[..., 3, H, W]``, as :func:`load_image`
    normalises them): a quarter of the memory, and :func:`from_pixel_codes` gives the same
    float32 values back, bit for bit. For keeping many tiles or crops around (the toy
    model's training reuses its crops this way).

    Raises:
        ValueError: a value that the normalisation cannot produce (pixel values made with
            another mean and standard deviation, or changed after they were made).
    """
    import torch

    if pixel_values.dtype != torch.float32 or pixel_values.ndim < 3 or pixel_values.shape[-3] != 3:
        raise ValueError(
            f"pixel_values of dtype {pixel_values.dtype} and shape {tuple(pixel_values.shape)}: "
            "expected float32 [..., 3, H, W] as load_image makes them."
        )
    table = torch.from_numpy(_value_table(IMAGENET_MEAN, IMAGENET_STD).copy())  # [3, 256]
    channels = pixel_values.movedim(-3, 0)  # [3, ..., H, W]
    flat = channels.reshape(3, -1)
    scale = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1) * 255
    shift = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1) * 255
    # the nearest uint8 by inverting the arithmetic (off by far less than 0.5 in float32);
    # the table check below makes the answer exact
    codes = torch.addcmul(shift, flat, scale).round_().clamp_(0, 255).long()  # [3, N]
    if not torch.equal(table.gather(1, codes), flat):
        raise ValueError(
            "pixel_values hold values that (x / 255 - mean) / std with the ImageNet mean and "
            "standard deviation does not make from any uint8 x; pass pixel values exactly as "
            "load_image returns them."
        )
    return codes.to(torch.uint8).reshape(channels.shape).movedim(0, -3)


def from_pixel_codes(codes: torch.Tensor) -> torch.Tensor:
    """``pixel_values`` (float32) again from :func:`pixel_codes`' uint8 ``[..., 3, H, W]``."""
    import torch

    if codes.dtype != torch.uint8 or codes.ndim < 3 or codes.shape[-3] != 3:
        raise ValueError(
            f"codes of dtype {codes.dtype} and shape {tuple(codes.shape)}: expected uint8 "
            "[..., 3, H, W] as pixel_codes returns them."
        )
    # the table's own element-wise operations (_value_table), on every code at once: the same
    # correctly rounded float32 steps give the same bits, four times faster than a lookup
    x = codes.to(dtype=torch.float32).div_(255)  # [..., 3, H, W]
    x = x.sub_(torch.as_tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1))
    return x.div_(torch.as_tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1))


@functools.lru_cache(maxsize=8)
def _normaliser(mean: tuple[float, ...], std: tuple[float, ...]) -> Callable[..., None]:
    """A function ``(out [3, S, S] float32, pixels [S, S, 3] uint8)`` doing ToTensor + Normalize.

    torchvision computes ``((uint8 -> float32) / 255 - mean) / std`` in float32, one whole
    tensor pass per operation. Here the same three IEEE float32 operations run with numpy on
    one tile at a time (the tile stays in cache), which gives the same bits as long as both
    libraries divide and subtract exactly (correctly rounded) rather than, say, multiply by a
    reciprocal. That is checked once for all 256 values of each channel against torch's own
    operations; if they ever differ, a 256-entry lookup table per channel computed with
    torch's operations (exact by construction, somewhat slower) is used instead.
    """
    table = _value_table(mean, std)  # [3, 256]: channel, uint8 value -> float32
    mean32 = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std32 = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    scale = np.float32(255)

    def arithmetic(out: np.ndarray, pixels: np.ndarray) -> None:
        out[...] = pixels.transpose(2, 0, 1)  # uint8 [S, S, 3] -> float32 [3, S, S], exact
        np.divide(out, scale, out=out)
        np.subtract(out, mean32, out=out)
        np.divide(out, std32, out=out)

    def lookup(out: np.ndarray, pixels: np.ndarray) -> None:
        for c in range(3):
            np.take(table[c], pixels[:, :, c], out=out[c])

    probe = np.empty((3, 1, 256), dtype=np.float32)
    arithmetic(probe, np.arange(256, dtype=np.uint8).reshape(1, 256, 1).repeat(3, axis=2))
    if np.array_equal(probe.reshape(3, 256).view(np.uint32), table.view(np.uint32)):
        return arithmetic
    logger.info("numpy and torch float32 arithmetic differ; using a table")
    return lookup


# ---------------------------------------------------------------------------------------------
# Hostile input: regular files only, a stated size limit, deep colour scaled (not clipped)
# ---------------------------------------------------------------------------------------------

# The largest float32 pixel_values one request may produce (tiles x 3 x S x S x 4 bytes).
MAX_PIXEL_VALUES_BYTES = 4 * 1024**3


def _kind(mode: int) -> str | None:
    """What a file mode is, unless it is a regular file."""
    if stat.S_ISREG(mode):
        return None
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def open_regular_file(path: str | os.PathLike, *, what: str) -> io.BufferedReader:
    """``path`` opened for reading if it is a regular file; a FIFO, socket or device is refused.

    The path is checked with ``stat`` first (which never blocks), then opened non-blocking (so a
    FIFO swapped in meanwhile cannot hang the open) and checked again on the descriptor.
    """

    def refuse(kind: str) -> ValueError:
        return ValueError(
            f"{str(path)!r} is {kind}; {what} reads only regular files (reading a FIFO, socket "
            "or device could block forever or never end). Save the data to a file first, or "
            "pass its bytes."
        )

    kind = _kind(os.stat(path).st_mode)
    if kind is not None:
        raise refuse(kind)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        kind = _kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise refuse(kind)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_pixel_values_size(
    num_tiles: int, image_size: int, *, what: str, lower: str, frames: int = 1
) -> None:
    """Refuse a request whose ``pixel_values`` would exceed :data:`MAX_PIXEL_VALUES_BYTES`.

    ``num_tiles`` tiles per frame, ``frames`` frames, float32 ``[.., 3, image_size,
    image_size]``; ``lower`` says what the caller can lower.
    """
    total = int(num_tiles) * int(frames)
    size = total * 3 * image_size * image_size * 4
    if size > MAX_PIXEL_VALUES_BYTES:
        shape = f"{total:,} tiles" if frames == 1 else f"{frames:,} frames x {num_tiles} tiles"
        raise ValueError(
            f"{what} would produce pixel_values of {shape} x 3 x {image_size} x {image_size} "
            f"float32 = {size / 1024**3:.1f} GiB, above vltools' limit of "
            f"{MAX_PIXEL_VALUES_BYTES / 1024**3:.0f} GiB (vltools.images.MAX_PIXEL_VALUES_BYTES). "
            f"Lower {lower}."
        )


def scale_16bit(array: np.ndarray) -> np.ndarray:
    """uint16 values as uint8, ``round(v * 255 / 65535)`` in exact integer arithmetic."""
    wide = array.astype(np.uint32)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def to_8bit(image: Image.Image) -> Image.Image:
    """Deep-colour PIL images as 8-bit, scaled instead of clipped (a documented departure).

    The card's ``convert("RGB")`` clips: a 16-bit image (``I;16*``, a 16-bit PNG) comes out
    almost white, a float ``F`` image in ``[0, 1]`` black. Here ``I;16*`` is scaled by
    ``255 / 65535``, ``F`` with every value in ``[0, 1]`` by 255, an ``F`` image within
    ``[0, 255]`` and an ``I`` image within ``[0, 255]`` convert as the card does; anything
    else (``I`` above 255, whose bit depth is unknown, negative, NaN or larger floats) is
    refused with the fix. 8-bit modes are untouched, so the card's pixels stay exact.
    """
    mode = image.mode
    if mode.startswith("I;16"):
        return Image.fromarray(scale_16bit(np.asarray(image)))
    if mode not in ("I", "F"):
        return image
    values = np.asarray(image)
    finite = np.isfinite(values).all() if mode == "F" else True
    low, high = (values.min(), values.max()) if finite else (np.nan, np.nan)
    if mode == "F" and finite and 0 <= low and high <= 1:
        return Image.fromarray(np.rint(values * 255).astype(np.uint8))
    if finite and 0 <= low and high <= 255:
        return image  # converts exactly as the card does
    depth = "32-bit integer" if mode == "I" else "32-bit float"
    raise ValueError(
        f"The image is PIL mode {mode!r} ({depth}) with values from {low} to {high}; vltools "
        "does not guess how such values map to 0-255 (the card's convert('RGB') would clip "
        "them to a white or black square). Scale it yourself, e.g. for 16-bit data "
        "`Image.fromarray((np.asarray(img) / 65535 * 255).round().astype(np.uint8))`, or pass "
        "float data in [0, 1] as mode 'F'."
    )


def load_image(
    source: Any,
    *,
    max_num: int = DEFAULT_MAX_NUM,
    min_num: int = DEFAULT_MIN_NUM,
    image_size: int = TILE_SIZE,
    use_thumbnail: bool = True,
    exif_transpose: bool = True,
    fast: bool = False,
    max_tiles: int | None = None,
) -> TiledImage:
    """Open an image and cut it into InternVL tiles: the model card's ``load_image``.

    Args:
        source: a path (str or Path) to a regular file, a ``PIL.Image``, a numpy array
            ``[H, W]``/``[H, W, 3|4]`` uint8 or uint16, the bytes of an image file, or a
            binary file object. 16-bit images (``I;16`` modes, 16-bit PNGs, uint16 arrays)
            are scaled to 8 bits and ``F`` images in ``[0, 1]`` by 255, where the card's
            ``convert("RGB")`` would clip them white or black (:func:`to_8bit`).
        max_num: the most tiles in the grid (thumbnail not counted). Default 12, InternVL2-1B's
            own ``max_dynamic_patch``; the model card's examples use ``max_num=6``.
        min_num: the fewest tiles in the grid (default 1).
        image_size: the tile side (448 for InternVL2).
        use_thumbnail: add the whole image as a last tile when the grid has several (True, as
            InternVL2's config and the card's ``load_image``).
        exif_transpose: apply the EXIF orientation first (default True: the model sees the
            photo the way a person does). The card does not; pass ``False`` to reproduce its
            pixel values exactly for photos that carry a rotation tag.
        fast: trade bit-exactness for speed: resize with PIL's ``reducing_gap=2`` (a
            box-filter shrink by an integer factor first, for downscales of 4x and more) and,
            when the image is larger than the canvas, make the thumbnail from the resized
            canvas instead of the original. Pixels move by
            a level or two (see ``benchmarks/tiling.py``); ``False`` (default) is
            bit-identical to the card.
        max_tiles: refuse, before decoding, an image whose grid (thumbnail included) would
            have more tiles than this, e.g. what a model's context can hold (``Chat`` passes
            ``context_length // tokens_per_tile``). ``None``: only the size limit applies.

    Returns:
        A :class:`TiledImage`: the image, its :class:`TileGrid`, the PIL tiles and
        ``pixel_values`` float32 ``[num_tiles, 3, image_size, image_size]``. For the chat API
        pass ``tiled.pixel_values`` (after ``.to(device, dtype)``) and ``[tiled.num_tiles]``.

    Raises:
        FileNotFoundError: no file at the path.
        ValueError: a directory, a FIFO, socket or device (only regular files are opened), a
            file that is not an image, a truncated file, an image over Pillow's
            decompression-bomb limit, a zero-size image, ``pixel_values`` above
            :data:`MAX_PIXEL_VALUES_BYTES` (checked before decoding), a mode ``I``/``F`` image
            whose values cannot be mapped to 0-255 without guessing (see :func:`to_8bit`), or
            bad tiling settings (see :func:`plan_tiles`).
        TypeError: an unsupported source type or array dtype.
    """
    import torch

    min_num, max_num, image_size = check_tile_settings(min_num, max_num, image_size)

    def check(width: int, height: int) -> None:  # before decoding: refuse what is too large
        planned = plan_tiles(
            width,
            height,
            min_num=min_num,
            max_num=max_num,
            image_size=image_size,
            use_thumbnail=use_thumbnail,
        )
        check_pixel_values_size(
            planned.num_tiles,
            image_size,
            what=f"A {width}x{height} image at max_num={max_num}",
            lower=f"max_num (now {max_num})",
        )
        if max_tiles is not None and planned.num_tiles > max_tiles:
            raise ValueError(
                f"A {width}x{height} image at max_num={max_num} needs {planned.num_tiles} tiles "
                f"({planned.num_image_tokens:,} image tokens), more than the {max_tiles} tiles "
                f"allowed here (the model's context). Lower max_num (now {max_num}) to at most "
                f"{max(1, max_tiles - 1)}."
            )

    image, name = open_image(source, exif_transpose=exif_transpose, check=check)
    grid = plan_tiles(
        image.width,
        image.height,
        min_num=min_num,
        max_num=max_num,
        image_size=image_size,
        use_thumbnail=use_thumbnail,
    )
    pixel_values = torch.empty((grid.num_tiles, 3, image_size, image_size), dtype=torch.float32)
    tiles = _cut_threaded(image, grid, pixel_values.numpy(), fast=fast)
    return TiledImage(
        image=image,
        grid=grid,
        tiles=tuple(tiles),
        pixel_values=pixel_values,
        num_tiles=grid.num_tiles,
        source=name,
    )


def cut_tiles(
    image: Image.Image, grid: TileGrid, out: np.ndarray, *, fast: bool = False
) -> list[Image.Image]:
    """Resize ``image`` to ``grid``'s canvas, cut it, and write the normalised tiles into ``out``.

    The card's steps, in its order: the canvas resize (bicubic), one crop per tile row by row,
    the thumbnail (a resize of the whole image; with ``fast``, of the canvas where that is
    smaller than the image), and each tile normalised into its slice of ``out``.

    ``out``: float32 ``[grid.num_tiles, 3, S, S]`` (a view into the caller's tensor; the video
    loader passes one frame's slice of the clip's). Returns the PIL tiles in ``out``'s order.
    """
    S = grid.image_size
    if out.shape != (grid.num_tiles, 3, S, S) or out.dtype != np.float32:
        raise ValueError(
            f"out must be float32 {(grid.num_tiles, 3, S, S)}, got {out.dtype} {out.shape}"
        )
    gap = _FAST_REDUCING_GAP if fast else None
    normalise = _normaliser(IMAGENET_MEAN, IMAGENET_STD)
    canvas = _resize(image, grid.canvas_size, gap)
    tiles: list[Image.Image] = [canvas] * grid.num_tiles
    for box in grid.boxes:  # pixel_values order: the grid row by row, the thumbnail last
        if box.is_thumbnail:
            smaller = canvas.width * canvas.height < image.width * image.height
            tiles[box.index] = _resize(canvas if fast and smaller else image, (S, S), gap)
        else:
            tiles[box.index] = canvas.crop(box.canvas)
        normalise(out[box.index], np.asarray(tiles[box.index]))  # [3, S, S] <- [S, S, 3]
    return tiles


def _resize(source: Image.Image, size: tuple[int, int], gap: float | None) -> Image.Image:
    """``source`` resized to ``size`` (bicubic); ``source`` itself where it has that size
    (PIL would return a copy: the same pixels)."""
    if source.size == size:
        return source
    return source.resize(size, _RESAMPLE, reducing_gap=gap)


# ---------------------------------------------------------------------------------------------
# The threaded path: the same bits as cut_tiles, faster on large photos
# ---------------------------------------------------------------------------------------------
# Everything threaded in this module is below. cut_tiles above is the reference: the tests
# check both against the card's pipeline. benchmarks/tiling_paths.py measures the one against
# the other (benchmarks/README.md says what it buys and on which machine).


def _cut_threaded(
    image: Image.Image, grid: TileGrid, out: np.ndarray, *, fast: bool
) -> list[Image.Image]:
    """:func:`cut_tiles` on the shared pool, the same bits: the thumbnail's resize beside the
    canvas's, the tiles normalised in parallel, and the canvas one tile column per thread
    where the height does not shrink (:func:`_column_resizer`, behind its probe
    :func:`_columns_are_exact`). On a pool thread (a video frame being tiled) it is
    :func:`cut_tiles` itself, since a pool job never waits for another."""
    if on_pool_thread():
        return cut_tiles(image, grid, out, fast=fast)
    gap = _FAST_REDUCING_GAP if fast else None
    normalise = _normaliser(IMAGENET_MEAN, IMAGENET_STD)
    S = grid.image_size
    canvas_w, canvas_h = grid.canvas_size
    if out.shape != (grid.num_tiles, 3, S, S) or out.dtype != np.float32:
        raise ValueError(
            f"out must be float32 {(grid.num_tiles, 3, S, S)}, got {out.dtype} {out.shape}"
        )
    pool, workers = shared_pool(), pool_size()

    def resize(source: Image.Image, size: tuple[int, int]) -> Image.Image:
        if source.size == size:
            return source  # PIL would return a copy: same pixels
        return source.resize(size, _RESAMPLE, reducing_gap=gap)

    def thumbnail_job(source: Image.Image) -> Image.Image:
        thumb = resize(source, (S, S))
        normalise(out[grid.num_tiles - 1], np.asarray(thumb))
        return thumb

    # The thumbnail (a second resize of the whole image) runs beside the canvas; in fast mode,
    # when the canvas is smaller than the image, it is a resize of the canvas instead.
    thumb_from_canvas = fast and canvas_w * canvas_h < image.width * image.height
    thumb_future: Future[Image.Image] | None = None
    if grid.has_thumbnail and not thumb_from_canvas:
        thumb_future = pool.submit(thumbnail_job, image)

    tiles: list[Image.Image | None] = [None] * (grid.cols * grid.rows)

    def finish(index: int, tile: Image.Image) -> None:
        tiles[index] = tile
        normalise(out[index], np.asarray(tile))

    # The canvas one tile column at a time, in parallel (see _column_resizer), where the
    # height does not shrink; in fast mode only where its resize is the exact one anyway (no
    # reduce first: PIL reduces when the image is 2 * reducing_gap times the canvas or more)
    # and no thumbnail is made from the canvas.
    by_columns = (
        canvas_h >= image.height
        and not thumb_from_canvas
        and not (fast and image.width >= 2 * _FAST_REDUCING_GAP * canvas_w)
        and _columns_are_exact()
    )
    jobs: list[Callable[[], None]]
    if by_columns:
        columns = _column_resizer(image, grid.canvas_size)

        def column_job(col: int) -> None:
            strip = columns(col * S, (col + 1) * S)  # [rows * S, S], a new image
            if grid.rows == 1:  # the strip is the tile (a video frame at max_num 1)
                finish(col, strip)
                return
            for row in range(grid.rows):
                finish(row * grid.cols + col, strip.crop((0, row * S, S, (row + 1) * S)))

        jobs = [functools.partial(column_job, col) for col in range(grid.cols)]
    else:
        canvas = resize(image, grid.canvas_size)
        if grid.has_thumbnail and thumb_from_canvas:
            thumb_future = pool.submit(thumbnail_job, canvas)

        def tile_job(box: TileBox) -> None:
            finish(box.index, canvas.crop(box.canvas))

        jobs = [functools.partial(tile_job, b) for b in grid.boxes if not b.is_thumbnail]
    try:
        _run_shared(pool, workers, jobs)
    except BaseException:
        cancel_and_wait([thumb_future])  # it writes into out: never leave it running
        raise
    if thumb_future is not None:
        tiles.append(thumb_future.result())
    return tiles  # type: ignore[return-value]


def _column_resizer(image: Image.Image, size: tuple[int, int]) -> Callable[[int, int], Image.Image]:
    """``columns(x0, x1)``: columns ``x0:x1`` of ``image.resize(size)`` (bicubic), made alone.

    Only for a height that does not shrink (``size[1] >= image.height``). PIL resizes in two
    passes with an 8-bit image between them: horizontal, then vertical. Newer Pillows may run
    the vertical pass first when the height shrinks, never when it does not. The vertical pass
    computes each column on its own, from the same coefficients whatever the image's width.
    So the horizontal pass alone (done here, once), then the vertical pass of any strip of
    its columns, gives the same bytes as one resize, and the strips can be made in parallel.
    ``tests/test_images.py`` checks this against PIL's resize on many sizes, and
    :func:`_columns_are_exact` on the installed Pillow before it is used.
    """
    width, height = size
    if height < image.height:
        raise ValueError(f"the height shrinks ({image.height} -> {height}): resize in one call")
    wide = image if image.width == width else image.resize((width, image.height), _RESAMPLE)

    def columns(x0: int, x1: int) -> Image.Image:  # always a new image, never ``image``
        if height == image.height:
            return wide.crop((x0, 0, x1, image.height))
        whole = (x0, x1) == (0, wide.width)  # one column: no copy before the resize
        strip = wide if whole else wide.crop((x0, 0, x1, image.height))
        return strip.resize((x1 - x0, height), _RESAMPLE)

    return columns


@functools.lru_cache(maxsize=1)
def _columns_are_exact() -> bool:
    """Whether the installed Pillow resizes as :func:`_column_resizer` assumes, on a few
    small probes (up, down, one axis, and over 100 times taller than wide); otherwise (a fork
    that resizes another way) :func:`load_image` resizes the canvas in one call."""
    rng = np.random.default_rng(0)
    probes = [
        ((37, 23), (96, 64)),
        ((50, 20), (28, 41)),
        ((20, 31), (20, 77)),
        ((3, 301), (32, 320)),
    ]
    for (w, h), (width, height) in probes:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        columns = _column_resizer(image, (width, height))
        cuts = [0, width // 3, width // 3 + 1, width]
        strips = [np.asarray(columns(x0, x1)) for x0, x1 in itertools.pairwise(cuts)]
        one = np.asarray(image.resize((width, height), _RESAMPLE))
        if not np.array_equal(np.concatenate(strips, axis=1), one):
            logger.info("Pillow resizes differently; one resize per canvas")
            return False
    return True


def _run_shared(pool: ThreadPoolExecutor, workers: int, jobs: list[Callable[[], None]]) -> None:
    """Run ``jobs`` on this thread and up to ``workers`` pool threads, each taking the next
    job until none is left (so a pool thread busy elsewhere simply joins later), and return
    once all have finished; the first exception is raised."""
    lock = threading.Lock()
    pending = iter(jobs)

    def drain() -> None:
        while True:
            with lock:
                job = next(pending, None)
            if job is None:
                return
            job()

    helpers = [pool.submit(drain) for _ in range(min(workers, len(jobs) - 1))]
    try:
        drain()
    finally:
        for helper in helpers:  # always wait: they write into the caller's buffers
            helper.exception()
    for helper in helpers:
        helper.result()
