"""What each image token of a toy scene shows, and the training losses that teach it.

Training the ``toy`` checkpoint on answers alone leaves its small vision tower on a plateau: it
learns a token's colour in a few dozen steps but what shape the token is part of only after
hundreds (see the model card). :mod:`vltools.toy_train` therefore also trains on the image
tokens themselves, with targets computed from how the scene was drawn:

- :func:`tile_labels`: for every tile of a :class:`~vltools.tiling.TileGrid` (``pixel_values``
  order, the thumbnail last), which shape each of its pixels belongs to, cut exactly as
  :func:`vltools.images.load_image` cuts the picture;
- :func:`token_cover`: for every image token (a ``2 x 14`` = 28-pixel cell of a tile after the
  pixel shuffle, row-major, as the language model reads them), the share of the cell each
  shape covers;
- :class:`TokenProbe`: training-only linear heads on the projector's output and their loss:
  each token's colour and shape (soft targets from the cover), and each shape's kind read
  from the strongest of its tokens (max-pooled). The heads are not part of the checkpoint;
- :func:`asked_label` and :func:`attention_target`: which shape a colour or shape question
  asks about, and where among the image tokens its answer should look (the tokens of that
  shape), the target of the conversation steps' ``answer_attention`` loss.

Pure numpy apart from :class:`TokenProbe` (torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from vltools.tiling import TileGrid
from vltools.toy import COLOURS, SHAPES, Scene, shape_mask

__all__ = [
    "CELL",
    "tile_labels",
    "token_cover",
    "label_classes",
    "asked_label",
    "attention_target",
    "ProbeLoss",
    "TokenProbe",
]

CELL = 28  # pixels of a tile one image token covers: a 14-pixel patch, 2 x 2 after the shuffle


def tile_labels(scene: Scene, grid: TileGrid) -> np.ndarray:
    """``[tiles, size, size]`` uint8: the :func:`~vltools.toy.shape_mask` label of every pixel
    of every tile of ``grid`` (``pixel_values`` order, the thumbnail last).

    The mask is resized to the grid's canvas and cut like the picture (nearest neighbour, so
    labels stay labels); the thumbnail's is the whole mask resized to one tile.
    """
    mask = shape_mask(scene)
    if mask.size != (grid.width, grid.height):
        raise ValueError(
            f"the grid was planned for a {grid.width}x{grid.height} image but the scene is "
            f"{mask.width}x{mask.height}; plan it with plan_tiles(*scene.image.size, ...)."
        )
    size = grid.image_size
    canvas = np.asarray(mask.resize(grid.canvas_size, Image.Resampling.NEAREST))
    out = np.zeros((grid.num_tiles, size, size), dtype=np.uint8)
    for box in grid.boxes:
        if box.is_thumbnail:
            out[box.index] = np.asarray(mask.resize((size, size), Image.Resampling.NEAREST))
        else:
            left, top, right, bottom = box.canvas
            out[box.index] = canvas[top:bottom, left:right]
    return out


def token_cover(labels: np.ndarray, *, n_labels: int, cell: int = CELL) -> np.ndarray:
    """``[tiles, tokens, n_labels]`` float32: the share of each token's cell under each label.

    ``labels`` is ``[tiles, H, W]`` (H and W multiples of ``cell``); tokens are the cells in
    row-major order, which is the order of a tile's image tokens after the pixel shuffle.
    Each token's row sums to 1 (column 0 is the background).
    """
    tiles, height, width = labels.shape
    if height % cell or width % cell:
        raise ValueError(f"labels of {height}x{width} pixels do not split into {cell}-pixel cells.")
    if labels.max(initial=0) >= n_labels:
        raise ValueError(f"a label {int(labels.max())} is not below n_labels={n_labels}.")
    rows, cols = height // cell, width // cell
    # each pixel's token (tile, row, col of its cell) and label, counted in one bincount
    token = (np.arange(height) // cell)[:, None] * cols + (np.arange(width) // cell)[None, :]
    token = token[None] + (np.arange(tiles) * rows * cols)[:, None, None]  # [tiles, H, W]
    counts = np.bincount(
        (token * n_labels + labels).ravel(), minlength=tiles * rows * cols * n_labels
    )
    # float32 counts over a float32 cell area: the float32 mean of each cell's one-hot pixels
    cover = counts.astype(np.float32) / np.float32(cell * cell)
    return cover.reshape(tiles, rows * cols, n_labels)


def label_classes(scene: Scene) -> np.ndarray:
    """``[1 + shapes, 2]`` int64: each label's (colour class, shape class); row 0, the
    background, is ``(0, 0)``, and class ``i + 1`` is ``list(COLOURS)[i]`` / ``SHAPES[i]``."""
    colours = list(COLOURS)
    out = np.zeros((len(scene.shapes) + 1, 2), dtype=np.int64)
    for label, (colour, shape, _) in enumerate(scene.shapes, start=1):
        out[label] = (colours.index(colour) + 1, SHAPES.index(shape) + 1)
    return out


def asked_label(scene: Scene, answer: str, kind: str) -> int | None:
    """The label (``1 +`` its index in ``scene.shapes``, as :func:`label_classes` numbers them)
    of the shape a question of ``kind`` with ``answer`` is about: for a colour question the
    shape of that colour, for a shape question the shape of that kind (a scene's shapes differ
    in both); None for the other kinds, which ask about no one shape or several."""
    if kind not in ("colour", "shape"):
        return None
    field = 0 if kind == "colour" else 1
    found = [i for i, drawn in enumerate(scene.shapes, start=1) if drawn[field] == answer]
    if len(found) != 1:
        raise ValueError(
            f"a {kind} question answered {answer!r} names {len(found)} of the scene's shapes "
            f"{[drawn[:2] for drawn in scene.shapes]}; pass the answer the scene gave."
        )
    return found[0]


def attention_target(cover: np.ndarray, label: int, *, min_cover: float = 0.5) -> np.ndarray:
    """``[tokens]`` float32: where an answer about shape ``label`` should look among a
    picture's image tokens (``cover`` is its :func:`token_cover`, ``[tiles, tokens, labels]``
    or already ``[tokens, labels]``): the tokens the shape covers at least ``min_cover``
    (inside it, where the colour is pure), weighted by their cover, summing to 1; every token
    it touches if none is that full (a small shape squashed into a thumbnail); all zeros if
    it touches none."""
    column = cover.reshape(-1, cover.shape[-1])[:, label].astype(np.float32)
    inside = column * (column >= min_cover)
    weights = inside if inside.any() else column
    total = weights.sum()
    return weights / total if total > 0 else weights


def inside_kinds(cover: np.ndarray, classes: np.ndarray, *, min_cover: float = 0.5) -> np.ndarray:
    """``[tokens]`` int64: the kind (0 to 3, the order of :data:`~vltools.toy.SHAPES`) of the
    shape each image token lies inside, or -1 for none. A token lies inside the shape that
    covers most of it, if that shape covers at least ``min_cover``. ``cover`` is a picture's
    :func:`token_cover` (``[tiles, tokens, labels]`` or ``[tokens, labels]``), ``classes`` its
    :func:`label_classes`."""
    flat = cover.reshape(-1, cover.shape[-1])[:, 1:]  # [tokens, shapes]: background dropped
    label = flat.argmax(-1)  # the shape covering each token most (0: label 1)
    share = np.take_along_axis(flat, label[:, None], -1)[:, 0]
    kinds = classes[label + 1, 1].astype(np.int64) - 1
    return np.where(share >= min_cover, kinds, -1)


@dataclass(frozen=True)
class ProbeLoss:
    """One batch's token losses.

    Attributes:
        loss: the sum of the terms below (a scalar tensor, for ``backward``).
        colour, shape: each token's soft cross-entropy, averaged over tokens (floats).
        pooled: the max-pooled shape cross-entropy, averaged over shapes (0 if none).
        correct, total: shapes whose max-pooled kind was right, and shapes pooled.
        averaged, averaged_correct: the same cross-entropy and count for the kind read from
            the mean over a shape's tokens (0 when the probe has no ``mean`` head).
    """

    loss: Any
    colour: float
    shape: float
    pooled: float
    correct: int
    total: int
    averaged: float = 0.0
    averaged_correct: int = 0

    @property
    def accuracy(self) -> float:
        """Share of pooled shapes read right (nan when none was pooled)."""
        return self.correct / self.total if self.total else float("nan")


class TokenProbe(torch.nn.Module):
    """Training-only heads on the image tokens the language model reads (``[..., width]``).

    ``colour``: 1 + 6 classes (the background first); ``shape``: 1 + 4; ``kind``: the 4 shapes,
    read from the element-wise maximum over a shape's tokens (those it covers by at least
    ``min_cover``), so that one telling token (a corner, a point of the star) is enough.
    ``mean=True`` adds ``mean_kind``: the kind read from the cover-weighted mean over the same
    tokens, which is what attention that selects a shape's tokens by their colour sees.
    """

    def __init__(self, width: int, *, min_cover: float = 0.25, mean: bool = False) -> None:
        super().__init__()
        self.colour = torch.nn.Linear(width, 1 + len(COLOURS))
        self.shape = torch.nn.Linear(width, 1 + len(SHAPES))
        self.kind = torch.nn.Linear(width, len(SHAPES))
        self.mean_kind = torch.nn.Linear(width, len(SHAPES)) if mean else None
        self.min_cover = min_cover

    def forward(
        self, features: torch.Tensor, covers: list[np.ndarray], classes: list[np.ndarray]
    ) -> ProbeLoss:
        """The token losses of a batch.

        Args:
            features: ``[tiles, tokens, width]``, the projector's output.
            covers: one :func:`token_cover` per picture, ``[its tiles, tokens, labels]``, in
                the order of ``features``' tiles.
            classes: one :func:`label_classes` per picture.
        """
        if sum(c.shape[0] for c in covers) != features.shape[0]:
            raise ValueError(
                f"covers hold {sum(c.shape[0] for c in covers)} tiles but features hold "
                f"{features.shape[0]}."
            )
        colour_targets, shape_targets, pooled, averaged, wanted = [], [], [], [], []
        flat = features.reshape(-1, features.shape[-1])  # [tiles * tokens, W]
        start = 0
        for cover_np, table_np in zip(covers, classes, strict=True):
            cover = torch.from_numpy(cover_np.reshape(-1, cover_np.shape[-1]))  # [T, L]
            feats = flat[start : start + cover.shape[0]]  # [T, W]
            start += cover.shape[0]
            table = torch.from_numpy(table_np)  # [L, 2]
            colour_targets.append(torch.zeros(cover.shape[0], 1 + len(COLOURS)))
            colour_targets[-1].index_add_(1, table[:, 0], cover)
            shape_targets.append(torch.zeros(cover.shape[0], 1 + len(SHAPES)))
            shape_targets[-1].index_add_(1, table[:, 1], cover)
            for label in range(1, cover.shape[1]):
                inside = cover[:, label] >= self.min_cover
                if inside.any():
                    pooled.append(feats[inside].max(dim=0).values)
                    if self.mean_kind is not None:
                        weights = cover[inside, label]  # [tokens inside]
                        averaged.append((weights[:, None] * feats[inside]).sum(0) / weights.sum())
                    wanted.append(int(table[label, 1]) - 1)
        # the two token heads over every token of the batch at once (one product, not one a crop)
        colour = -(torch.cat(colour_targets) * self.colour(flat).log_softmax(-1)).sum(-1).mean()
        shape = -(torch.cat(shape_targets) * self.shape(flat).log_softmax(-1)).sum(-1).mean()
        loss = colour + shape
        pooled_loss, correct = torch.zeros(()), 0
        mean_loss, mean_correct = torch.zeros(()), 0
        if pooled:
            target = torch.tensor(wanted)
            logits = self.kind(torch.stack(pooled))  # [shapes, 4]
            pooled_loss = torch.nn.functional.cross_entropy(logits, target)
            loss = loss + pooled_loss
            correct = int((logits.argmax(-1) == target).sum())
            if averaged:
                mean_logits = self.mean_kind(torch.stack(averaged))  # [shapes, 4]
                mean_loss = torch.nn.functional.cross_entropy(mean_logits, target)
                loss = loss + mean_loss
                mean_correct = int((mean_logits.argmax(-1) == target).sum())
        return ProbeLoss(
            loss,
            float(colour.detach()),
            float(shape.detach()),
            float(pooled_loss.detach()),
            correct,
            len(wanted),
            float(mean_loss.detach()),
            mean_correct,
        )
