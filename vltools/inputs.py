"""Several loaded images and clips as one model input: their tiles stacked, with the counts.

The model card's multi-image and batch calls take one ``pixel_values`` tensor holding every
image's tiles one after the other, and ``num_patches_list``, the tile count of each image in
the same order (``torch.cat`` and a list, built by hand in the card). :func:`stack` does both
from what :func:`vltools.load_image` and :func:`vltools.load_video` return, so the two cannot
disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class Stacked:
    """Tiles of several images (and video frames), in one tensor, and how many each has.

    Attributes:
        pixel_values: float ``[sum(num_tiles), 3, 448, 448]``: the tiles of the first image,
            then of the second, ... (each image's thumbnail last, as loaded).
        num_tiles: tiles per image, in order; a clip contributes one entry per frame (each
            frame is one ``<image>`` of the prompt). Pass it as ``num_patches_list``.
    """

    pixel_values: torch.Tensor
    num_tiles: tuple[int, ...]

    def __repr__(self) -> str:
        pv = self.pixel_values
        return (
            f"Stacked({len(self.num_tiles)} images, num_tiles={self.num_tiles}, "
            f"pixel_values={tuple(pv.shape)} {str(pv.dtype).removeprefix('torch.')} "
            f"on {pv.device})"
        )


def stack(images: Sequence[Any]) -> Stacked:
    """The tiles of ``images`` (``TiledImage`` and ``VideoClip`` items) as one :class:`Stacked`.

    ``stack([first, second])`` gives ``pixel_values`` (``torch.cat`` of the items' tensors,
    dimension 0) and ``num_tiles`` (``(first's tiles, second's tiles)``), ready for
    ``model.chat(s.pixel_values, question, config, num_patches_list=list(s.num_tiles))`` and
    ``batch_chat``. A ``VideoClip`` adds one entry per frame.

    Raises ``TypeError`` for a single item or an item of another type, ``ValueError`` for an
    empty sequence or items on different devices or of different dtypes.
    """
    from vltools.images import TiledImage
    from vltools.video import VideoClip

    if isinstance(images, (TiledImage, VideoClip)):
        raise TypeError(
            f"stack takes a list of images, got one {type(images).__name__}; pass [item] "
            "(or use its pixel_values directly)."
        )
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise TypeError(
            f"stack takes a list of TiledImage / VideoClip items, got {type(images).__name__}."
        )
    if not images:
        raise ValueError("stack got an empty list; pass at least one TiledImage or VideoClip.")
    counts: list[int] = []
    for k, item in enumerate(images):
        if isinstance(item, TiledImage):
            counts.append(item.grid.num_tiles)
        elif isinstance(item, VideoClip):
            counts.extend(t.grid.num_tiles for t in item.tiled)
        else:
            raise TypeError(
                f"stack item {k} is a {type(item).__name__}; it takes what vltools.load_image "
                "(TiledImage) and vltools.load_video (VideoClip) return. Load it first."
            )
    kinds = {(str(i.pixel_values.device), i.pixel_values.dtype) for i in images}
    if len(kinds) > 1:
        found = ", ".join(f"{d} {str(t).removeprefix('torch.')}" for d, t in sorted(kinds, key=str))
        raise ValueError(
            f"stack needs every item on one device with one dtype, got {found}; move them "
            "with item.to(device, dtype) first."
        )
    import torch

    pixel_values = torch.cat([i.pixel_values for i in images], dim=0)  # [sum(tiles), 3, S, S]
    return Stacked(pixel_values=pixel_values, num_tiles=tuple(counts))
