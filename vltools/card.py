"""The model card's own preprocessing, rewritten step by step from its quick start (build_transform,
find_closest_aspect_ratio, dynamic_preprocess, load_image, get_index, load_video): the reference
in exactness tests and the baseline in benchmarks. vltools' own code never calls it.

It follows the card literally, slowness included (a set of candidate grids sorted by tile count,
a per-tile torchvision transform, a decord ``vr[i]`` per frame), because that literal behaviour
is what the tests compare against and what the benchmarks time.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vltools._optional import require
from vltools.constants import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image


@functools.cache
def card_target_ratios(min_num: int, max_num: int) -> tuple[tuple[int, int], ...]:
    """The card's candidate grids ``(cols, rows)``: a set comprehension sorted by tile count.

    The order among grids with the same tile count is the set's iteration order (``sorted`` is
    stable), exactly as in the card; it decides exact ties, so it is kept on purpose. Cached: the
    result is an immutable tuple.
    """
    ratios = {
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    }
    return tuple(sorted(ratios, key=lambda r: r[0] * r[1]))


def card_grid(
    width: int, height: int, *, min_num: int = 1, max_num: int = 6, image_size: int = 448
) -> tuple[int, int]:
    """The card's grid choice ``(cols, rows)`` (``find_closest_aspect_ratio``), with its tie-break."""
    aspect = width / height
    best_diff, best = float("inf"), (1, 1)
    for ratio in card_target_ratios(min_num, max_num):
        diff = abs(aspect - ratio[0] / ratio[1])
        if diff < best_diff:
            best_diff, best = diff, ratio
        elif (
            diff == best_diff
            and width * height > 0.5 * image_size * image_size * ratio[0] * ratio[1]
        ):
            best = ratio
    return best


def card_dynamic_preprocess(
    image: Image.Image,
    *,
    min_num: int = 1,
    max_num: int = 6,
    image_size: int = 448,
    use_thumbnail: bool = True,
) -> list[Image.Image]:
    """The card's ``dynamic_preprocess``: grid tiles row-major, then the thumbnail (if > 1 tile)."""
    cols, rows = card_grid(
        image.width, image.height, min_num=min_num, max_num=max_num, image_size=image_size
    )
    resized = image.resize((cols * image_size, rows * image_size))  # [rows*S, cols*S] canvas
    tiles = [
        resized.crop((c * image_size, r * image_size, (c + 1) * image_size, (r + 1) * image_size))
        for r in range(rows)
        for c in range(cols)
    ]
    if use_thumbnail and len(tiles) != 1:
        tiles.append(image.resize((image_size, image_size)))
    return tiles


def card_transform(image_size: int = 448) -> Any:
    """The card's ``build_transform``: RGB, bicubic resize, to tensor, ImageNet normalisation."""
    transforms = require("torchvision.transforms", purpose="the model card's transform")
    from torchvision.transforms.functional import InterpolationMode

    return transforms.Compose(
        [
            transforms.Lambda(lambda img: img.convert("RGB") if img.mode != "RGB" else img),
            transforms.Resize((image_size, image_size), interpolation=InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )


def card_pixel_values(
    image: Image.Image,
    *,
    max_num: int = 6,
    min_num: int = 1,
    image_size: int = 448,
    use_thumbnail: bool = True,
) -> torch.Tensor:
    """The card's ``load_image`` on an opened image: float32 ``[tiles, 3, S, S]``."""
    torch = require("torch", purpose="the model card's pixel values")
    transform = card_transform(image_size)
    tiles = card_dynamic_preprocess(
        image.convert("RGB"),
        min_num=min_num,
        max_num=max_num,
        image_size=image_size,
        use_thumbnail=use_thumbnail,
    )
    return torch.stack([transform(tile) for tile in tiles])  # [tiles, 3, S, S]


def card_get_index(
    bound: Sequence[float] | None,
    fps: float,
    max_frame: int,
    first_idx: int = 0,
    num_segments: int = 32,
) -> np.ndarray:
    """The card's ``get_index``: one frame in the middle of each of ``num_segments`` segments."""
    import numpy as np

    if bound:
        start, end = bound[0], bound[1]
    else:
        start, end = -100000, 100000
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    seg_size = float(end_idx - start_idx) / num_segments
    return np.array(
        [int(start_idx + (seg_size / 2) + np.round(seg_size * idx)) for idx in range(num_segments)]
    )


def card_load_video(
    path: str | Path,
    *,
    num_segments: int,
    max_num: int = 1,
    bound: Sequence[float] | None = None,
    image_size: int = 448,
) -> tuple[torch.Tensor, list[int]]:
    """The card's ``load_video``: decord ``vr[i]`` per frame, each frame tiled and transformed.

    Returns ``(pixel_values, num_patches_list)``: ``[sum(num_patches_list), 3, S, S]`` float32.
    """
    decord = require("decord", purpose="the model card's load_video")
    torch = require("torch", purpose="the model card's load_video")
    from PIL import Image

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    max_frame = len(reader) - 1
    fps = float(reader.get_avg_fps())
    transform = card_transform(image_size)
    indices = card_get_index(bound, fps, max_frame, first_idx=0, num_segments=num_segments)
    pixel_values_list, num_patches_list = [], []
    for index in indices:
        image = Image.fromarray(reader[int(index)].asnumpy()).convert("RGB")
        tiles = card_dynamic_preprocess(image, max_num=max_num, image_size=image_size)
        pixel_values = torch.stack([transform(tile) for tile in tiles])  # [tiles, 3, S, S]
        num_patches_list.append(pixel_values.shape[0])
        pixel_values_list.append(pixel_values)
    return torch.cat(pixel_values_list), num_patches_list
