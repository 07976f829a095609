"""Training the ``toy`` checkpoint on synthetic scenes: ``python -m vltools.toy_train``.

The whole chain goes through vltools' own InternVL2 path, nothing beside it: a random-weight
checkpoint in the ORIGINAL format is written by :func:`vltools.testing.write_checkpoint` for
:func:`vltools.toy.toy_config`, loaded by :func:`vltools.load_model` (converted to
transformers' native ``InternVLForConditionalGeneration``), fed the exact prompts ``chat``
builds (:func:`vltools.prompts.chat_query`, Hermes-2, ``<IMG_CONTEXT>`` x 256 per tile) with the
card's tiling (:func:`vltools.images.load_image`), trained on the answer tokens, and
written back in the original format (original key names, the fused vision ``attn.qkv``)
through the loader's own key plan (:func:`vltools.models.plan_conversion`, run backwards).

The stages (the model card says what each measured): a vision stage on crops of tiles with
per-token targets (:func:`pretrain_vision`, :mod:`vltools.toy_targets`), its patch embedding
started at coloured edge filters and its batches drawn once and gone over again, then the
conversations, first a curriculum of simpler ones, with the vision tower frozen and the
answer's attention pulled onto the asked shape and each image token inside a shape asked
to tell that shape's kind after the language model's first layer (all of it the defaults);
optionally the per-token losses kept during the conversations. A run can also start from a
checkpoint instead of random weights (``run(..., init=DIR)``, ``--init DIR``), such as a
``step-N`` folder an earlier run saved, and go on with other phases on new scenes.

Deterministic on one machine: the scenes are a function of their index, the tiling budget of
each example comes from a seeded generator, torch is seeded, and the run uses two threads by
default. Another machine, or code that sums in another order, rounds differently, and the run
ends on other weights (see the model card).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from vltools.constants import IM_END
from vltools.threads import build_ahead

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from vltools.images import TiledImage
    from vltools.models import VLModel

__all__ = [
    "TrainConfig",
    "initial_checkpoint",
    "Encoded",
    "Batch",
    "encode_example",
    "encode_branches",
    "branch_mask",
    "collate",
    "sincos_positions",
    "edge_filters",
    "crop_features",
    "pretrain_vision",
    "parse_curriculum",
    "format_curriculum",
    "train",
    "save_original",
    "run",
    "evaluate",
    "main",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """The recipe of a training run (every field is in the model card).

    ``steps`` optimiser steps; each step takes the next scenes of the run (scene ``i`` is
    ``toy_scene(i)``) until its batch holds ``tiles_per_step`` tiles. Each step draws one
    tiling budget for its batch: ``max_num=1`` for the first ``single_share`` of the steps (a
    cheap single-tile phase that learns to read shapes), then one of ``max_nums``; with
    probability ``wide_share`` (after the single-tile phase) a step is a batch of
    ``wide_small`` panoramas cut with one of ``wide_max_nums``. With ``branches`` every
    picture is asked every question :func:`vltools.toy.all_questions` has about it (the colour
    and the shape of each shape, the count, presence, positions), split into conversations of
    at most ``turns`` questions that give no answer away (:func:`vltools.toy.conversations`),
    packed after one shared image prefix (:func:`encode_branches`): about three times the
    answers of one conversation for the same picture, most of them first questions, as the
    evaluation asks them, the rest later turns, as a chat asks them. Without it every scene is one
    conversation: its own question and up to ``follow_ups`` more about the same picture
    (:func:`vltools.toy.follow_ups`), loss on every answer.

    ``curriculum``: phases the conversation steps go through first, each ``(steps, count,
    kinds)``: that many steps of pictures with ``count`` shapes (None: any number) and only
    questions (the scene's own and its follow-ups) of ``kinds``, one tile each. The language
    model learns to read one colour in a minute but shapes, and which colour goes with which
    shape, slowly when it starts on the full mix (see the model card). By default the last 80
    steps come after the curriculum: pictures of every kind cut with several tiles, and
    panoramas with small shapes (``single_share`` 0), which teach the language model to read
    a picture of many tiles (the tiling comparison of the model card comes from them).

    Before them, ``vision_steps`` steps train the vision tower and the projector alone
    (:func:`pretrain_vision`): ``vision_crops`` crops of ``crop_side`` x ``crop_side`` patches
    a step from pictures cut with one of ``vision_max_nums`` (or panoramas, as below), lr
    ``vision_lr``, on the token targets of :mod:`vltools.toy_targets` (with ``mean_kind``,
    also each shape's kind read from the mean over its tokens: see
    :class:`~vltools.toy_targets.TokenProbe`). With
    ``probe_weight`` above 0 the conversation steps keep those token losses (times
    ``probe_weight``) beside the answers' loss. ``freeze_vision``: the conversation steps train
    the projector and the language model only, so the vision tower keeps the features the
    vision stage taught it (and the backward pass stops at the projector).

    ``answer_attention``: with a weight above 0 (the default 0.3), the conversation steps add
    (times the weight) a loss that pulls one head of the language model's last layer, at the
    first token of each colour or shape answer, onto the image tokens of the shape the
    question asks about (:func:`vltools.toy_targets.attention_target`): which colour goes with
    which shape is what the answers alone teach slowest (see the model card). Plain
    conversations only: with ``branches`` set it to 0.

    ``inside_shape``: with a weight above 0 (the default 1.0), the conversation steps add
    (times the weight) the cross-entropy of a training-only linear head reading, from the
    language model's first layer's output at each image token a shape covers at least half
    of, that shape's kind (:func:`_inside_shape_loss`). A colour question names a shape, so
    the answer must find the shape's tokens by the shape they belong to; the vision tower
    leaves that mostly in the shape's edge tokens (a linear probe reads it from 57% of the
    inside tokens), and runs of the recipe without this loss bound colour to the named shape
    well or badly by the draw (see the model card).

    ``vision_pool``: with N above 0 (the default 800), the vision stage draws only its first N
    batches and then goes over them again, in order, every other pass mirrored left to right
    (each toy shape is symmetric about its vertical axis, so the targets mirror with the
    pixels): after the first N steps a step costs only its arithmetic, not drawing and cutting
    scenes, about 0.2 s against 0.3 s on two cores. The kept batches are stored as uint8
    (:func:`vltools.images.pixel_codes`, exact), about 4.8 MB a batch of 32 crops.

    ``edge_filters`` (the default): a fresh run starts the first channels of the vision
    tower's patch embedding at :func:`edge_filters` (the colour of a patch, and coloured edges
    across it in eight directions) instead of random weights; the vision stage then reads
    shapes sooner. A run from a checkpoint (``init``) keeps the checkpoint's patch embedding.

    ``first_scene``: the conversation steps draw scenes ``first_scene, first_scene + 1, ...``;
    a run that goes on from another's checkpoint sets it past the scenes that run drew (its
    log's ``scenes`` count), so it sees new ones. The scenes a run can draw stay below the
    vision stage's and the held-out sets' (:data:`VISION_FIRST_SCENE`).
    """

    steps: int = 600
    tiles_per_step: int = 16
    lr: float = 1.5e-3
    warmup: int = 20
    weight_decay: float = 0.01
    seed: int = 0
    single_share: float = 0.0
    max_nums: tuple[int, ...] = (1, 2, 4, 6)
    wide_share: float = 0.3
    wide_max_nums: tuple[int, ...] = (6, 12)
    follow_ups: int = 6
    threads: int = 2
    curriculum: tuple[tuple[int, int | None, tuple[str, ...]], ...] = (
        (100, 1, ("colour", "shape")),
        (120, 2, ("colour", "shape", "position")),
        (300, None, ("colour", "shape", "count", "position", "presence")),
    )
    vision_steps: int = 5500
    vision_crops: int = 32
    vision_max_nums: tuple[int, ...] = (2, 4, 6)
    vision_lr: float = 3e-3
    crop_side: int = 16
    probe_weight: float = 0.0
    mean_kind: bool = True
    freeze_vision: bool = True
    first_scene: int = 0
    branches: bool = False
    turns: int = 3
    edge_filters: bool = True
    vision_pool: int = 800
    answer_attention: float = 0.3
    inside_shape: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.answer_attention, (int, float)) or not self.answer_attention >= 0:
            raise ValueError(
                f"answer_attention={self.answer_attention!r}: the weight of the answer "
                "attention loss; use a number >= 0 (0: none)."
            )
        if self.answer_attention and self.branches:
            raise ValueError(
                f"answer_attention={self.answer_attention} with branches=True: the answer "
                "attention loss knows plain conversations only; turn one of them off (for branches, "
                "--answer-attention 0, answer_attention=0.0)."
            )
        if not isinstance(self.inside_shape, (int, float)) or not self.inside_shape >= 0:
            raise ValueError(
                f"inside_shape={self.inside_shape!r}: the weight of the inside-shape loss; use "
                "a number >= 0 (0: none)."
            )
        if not isinstance(self.vision_pool, int) or self.vision_pool < 0:
            raise ValueError(
                f"vision_pool={self.vision_pool!r}: the number of vision batches to draw and "
                "then go over again; use an int >= 0 (0: a new batch every step)."
            )
        if not isinstance(self.turns, int) or self.turns < 1:
            raise ValueError(f"turns={self.turns!r}: a branch asks at least one question.")
        first = self.first_scene  # below, a scene is at least one tile of a step
        most = self.steps * self.tiles_per_step
        if not isinstance(first, int) or first < 0 or first + most > VISION_FIRST_SCENE:
            raise ValueError(
                f"first_scene={first!r}: the conversation steps ({self.steps} of at most "
                f"{self.tiles_per_step} scenes) must draw from scenes 0 to "
                f"{VISION_FIRST_SCENE} (the vision stage and the held-out sets draw above); "
                "use an int >= 0 that leaves room for the run."
            )


def initial_checkpoint(folder: Path, *, seed: int = 0) -> Path:
    """Write the random-weight toy checkpoint (original format, float32) into ``folder``."""
    from vltools.testing import SPECIAL_TOKENS, write_checkpoint
    from vltools.toy import toy_config

    config = toy_config()
    base_vocab = config["llm_config"]["vocab_size"] - len(SPECIAL_TOKENS)
    return write_checkpoint(folder, config, base_vocab=base_vocab, dtype="float32", seed=seed)


@dataclass(frozen=True)
class Encoded:
    """One row of a conversation batch, before padding.

    Attributes:
        input_ids: the prompt and answer tokens.
        labels: -100 everywhere but on the answers' tokens (and each ``<|im_end|>``).
        pixel_values: ``[tiles, 3, 448, 448]``, the picture as the row's image tokens read it.
        positions, segments: for packed branches (:func:`encode_branches`) each token's
            position and its segment (0 the shared prefix, ``k`` branch ``k``); None for one
            conversation (:func:`encode_example`), whose positions are simply 0, 1, ...
    """

    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor
    positions: list[int] | None = None
    segments: list[int] | None = None

    @property
    def packed(self) -> bool:
        """Whether the row holds packed branches (it then needs :func:`branch_mask`)."""
        return self.segments is not None

    def __repr__(self) -> str:
        answers = sum(label != -100 for label in self.labels)
        branches = f", {max(self.segments)} branches" if self.segments is not None else ""
        return (
            f"Encoded({len(self.input_ids)} tokens, {answers} answer tokens, "
            f"{self.pixel_values.shape[0]} tiles{branches})"
        )


@dataclass(frozen=True)
class Batch:
    """Padded rows (:func:`collate`), as the model's forward pass takes them.

    ``attention_mask`` is ``[B, L]`` (1 on tokens, 0 on padding) for conversations and the
    ``[B, 1, L, L]`` mask of :func:`branch_mask` for packed branches, which also carry
    ``position_ids`` ``[B, L]`` (None for conversations). ``labels`` is -100 on padding.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor
    position_ids: torch.Tensor | None = None

    @property
    def packed(self) -> bool:
        """Whether the rows are packed branches (else conversations)."""
        return self.position_ids is not None

    def __repr__(self) -> str:
        rows, length = self.input_ids.shape
        kind = "packed branches" if self.packed else "conversations"
        return f"Batch({rows} rows of {length} tokens, {self.pixel_values.shape[0]} tiles, {kind})"


def encode_example(
    vlm: VLModel,
    scene: dict[str, Any],
    *,
    max_num: int,
    more: Sequence[tuple[str, str]] = (),
    tiled: TiledImage | None = None,
) -> Encoded:
    """One scene as a row of a batch: the chat prompt plus the answer.

    With ``more`` (``(question, answer)`` pairs), the conversation goes on as ``chat`` renders
    its history: each later turn is the prompt ``chat_query`` builds after the earlier turns.
    The :class:`Encoded` row's ``labels`` are -100 everywhere but on each answer's tokens and
    the ``<|im_end|>`` after it. ``tiled``: the picture already cut with ``max_num`` (so a
    caller that needs the grid cuts it once).
    """
    from vltools.constants import IMAGE_PLACEHOLDER
    from vltools.images import load_image
    from vltools.prompts import chat_query

    if tiled is None:
        tiled = load_image(scene["image"], max_num=max_num)
    tok = vlm.tokenizer
    turns = [(scene["question"], scene["answer"]), *more]
    history: list[tuple[str, str]] = []
    text = ""
    ids: list[int] = []
    labels: list[int] = []
    for question, answer in turns:
        prompt = chat_query(
            question,
            history=history or None,
            num_patches_list=[tiled.num_tiles],
            system_message=vlm.system_message,
            tokens_per_tile=vlm.tokens_per_tile,
        ).text
        if not prompt.startswith(text):  # pragma: no cover - the template renders prefixes
            raise RuntimeError("the chat template did not extend the earlier turns")
        new_ids = tok(prompt[len(text) :], add_special_tokens=False)["input_ids"]
        answer_ids = tok(answer + IM_END, add_special_tokens=False)["input_ids"]
        ids += new_ids + answer_ids
        labels += [-100] * len(new_ids) + answer_ids
        text = prompt + answer + IM_END
        history.append((f"{IMAGE_PLACEHOLDER}\n{question}" if not history else question, answer))
    return Encoded(ids, labels, tiled.pixel_values)


def encode_branches(
    vlm: VLModel, tiled: TiledImage, branches: Sequence[Sequence[tuple[str, str]]]
) -> Encoded:
    """One picture and several conversations about it, packed into one row of a batch.

    Each branch is a conversation of ``(question, answer)`` turns about the picture, encoded
    as :func:`encode_example` encodes it. The row is their common prefix (system message, user
    turn, image tokens, up to ``</img>``) once, then each branch's rest. In the
    :class:`Encoded` row, ``positions`` number each branch on from the end of the prefix, and
    ``segments`` is 0 on the prefix and ``k`` on branch ``k``, so that with the mask
    :func:`branch_mask` builds each branch sees exactly its own conversation, and one vision
    pass and one prefix serve them all.
    """
    from vltools.constants import IMG_END_TOKEN

    if not branches:
        raise ValueError("branches=[]: pack at least one conversation after the image.")
    end = vlm.tokenizer.convert_tokens_to_ids(IMG_END_TOKEN)
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    segments: list[int] = []
    for branch, turns in enumerate(branches, start=1):
        (question, answer), *more = turns
        alone = encode_example(
            vlm,
            {"question": question, "answer": answer},
            max_num=tiled.grid.max_num,
            more=more,
            tiled=tiled,
        )
        whole, marks = alone.input_ids, alone.labels
        cut = whole.index(end) + 1  # </img> is a special token: the text splits there
        if not ids:
            ids, labels = whole[:cut], marks[:cut]
            positions, segments = list(range(cut)), [0] * cut
        elif whole[:cut] != ids[:cut]:  # pragma: no cover - the prefix names no question
            raise RuntimeError("the conversations do not share the image prefix")
        ids += whole[cut:]
        labels += marks[cut:]
        positions += range(cut, len(whole))
        segments += [branch] * (len(whole) - cut)
    return Encoded(ids, labels, tiled.pixel_values, positions, segments)


def branch_mask(segments: torch.Tensor, *, dtype: torch.dtype) -> torch.Tensor:
    """``[B, 1, L, L]`` additive attention mask for rows of :func:`encode_branches`.

    ``segments`` ``[B, L]``: 0 on a row's shared prefix, ``k`` on its branch ``k``, -1 on
    padding. A token sees the earlier tokens of its own segment and of the prefix; padding sees
    only itself (so no row of the softmax is empty).
    """
    import torch

    length = segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()  # [L, L]
    query = segments[:, :, None]  # [B, L, 1]
    key = segments[:, None, :]  # [B, 1, L]
    seen = causal & ((key == 0) | (key == query)) & (key >= 0) & (query >= 0)
    seen |= torch.eye(length, dtype=torch.bool)  # padding sees itself
    mask = torch.zeros(seen.shape, dtype=dtype)
    mask.masked_fill_(~seen, torch.finfo(dtype).min)
    return mask[:, None]  # [B, 1, L, L]


def sincos_positions(count: int, width: int) -> torch.Tensor:
    """``[1, count, width]``: the class token's zeros, then a 2-D sine-cosine code of each patch.

    The patches form a square grid (``count - 1`` = side x side, row by row); half the channels
    code the row, half the column, each as sines and cosines of geometric frequencies. Training
    starts the vision tower's learned position embedding here, so that from the first step
    neighbouring patches look alike to attention and a shape's parts can find each other.
    """
    import torch

    side = math.isqrt(count - 1)
    if side * side != count - 1 or width % 4:
        raise ValueError(f"count={count}, width={width}: need 1 + a square and width % 4 == 0.")
    quarter = width // 4
    freqs = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter))  # [w/4]
    grid = torch.arange(side, dtype=torch.float64)
    rows, cols = torch.meshgrid(grid, grid, indexing="ij")  # [side, side] each
    parts = []
    for coord in (rows.reshape(-1), cols.reshape(-1)):
        angle = coord[:, None] * freqs[None, :]  # [side * side, w/4]
        parts += [torch.sin(angle), torch.cos(angle)]
    code = torch.cat(parts, dim=1)  # [side * side, width]
    out = torch.cat([torch.zeros(1, width, dtype=torch.float64), code], dim=0)
    return out[None].to(torch.float32)  # [1, count, width]


def edge_filters(patch: int, *, directions: int = 8, gain: float = 4.0) -> torch.Tensor:
    """``[3 + 2 * directions, 3, patch, patch]``: patch-embedding filters to start a run at.

    The first three average each colour channel of a patch. Then, for each of ``directions``
    directions (0 to 180 degrees), a step across the patch's centre (a ramp three pixels wide;
    ``gain`` scales it) seen in two colour-opponent channels: red minus green, and red plus
    green minus blue. The toy backgrounds are grey, so these respond to the edge of a coloured
    shape and hardly to the stripes and checks of the background, and which directions a shape's
    edges take (a square's two, a triangle's three, a circle's all) is what tells it apart.
    In ``[out, in, row, column]`` order, as the patch convolution's weight.
    """
    import torch

    if not isinstance(patch, int) or patch < 2 or not isinstance(directions, int) or directions < 1:
        raise ValueError(f"patch={patch!r}, directions={directions!r}: use ints >= 2 and >= 1.")
    centre = (patch - 1) / 2
    rows, cols = np.mgrid[0:patch, 0:patch].astype(np.float64)
    out = np.zeros((3 + 2 * directions, 3, patch, patch))
    for channel in range(3):
        out[channel, channel] = 1.0 / patch**2
    for i in range(directions):
        angle = math.pi * i / directions
        across = (cols - centre) * math.cos(angle) + (rows - centre) * math.sin(angle)
        step = np.clip(across / 3, -1, 1) / (patch**2 / 2) * gain
        red_green, yellow_blue = out[3 + 2 * i], out[4 + 2 * i]
        red_green[0], red_green[1] = step, -step
        yellow_blue[0], yellow_blue[1], yellow_blue[2] = step / 2, step / 2, -step
    return torch.tensor(out, dtype=torch.float32)


def collate(examples: Sequence[Encoded], *, pad_id: int) -> Batch:
    """Pad rows of one kind into a :class:`Batch`: conversations (:func:`encode_example`) get a
    ``[B, L]`` padding mask; packed branches (:func:`encode_branches`) the ``[B, 1, L, L]``
    mask of :func:`branch_mask` and their positions."""
    import torch

    if not examples:
        raise ValueError("examples=[]: a batch needs at least one row.")
    packed = examples[0].packed
    if any(example.packed != packed for example in examples):
        raise ValueError(
            "the rows mix packed branches and plain conversations; encode every row of a "
            "batch the same way (all with encode_branches, or all with encode_example)."
        )
    rows, length = len(examples), max(len(example.input_ids) for example in examples)
    input_ids = torch.full((rows, length), pad_id, dtype=torch.long)  # [B, L]
    labels = torch.full((rows, length), -100, dtype=torch.long)  # [B, L]
    mask = torch.zeros((rows, length), dtype=torch.long)  # [B, L]
    segments = torch.full((rows, length), -1, dtype=torch.long)  # [B, L]
    position_ids = torch.zeros((rows, length), dtype=torch.long)  # [B, L]
    for row, example in enumerate(examples):
        size = len(example.input_ids)
        input_ids[row, :size] = torch.tensor(example.input_ids)
        labels[row, :size] = torch.tensor(example.labels)
        mask[row, :size] = 1
        if packed:
            position_ids[row, :size] = torch.tensor(example.positions)
            segments[row, :size] = torch.tensor(example.segments)
    pixel_values = torch.cat([example.pixel_values for example in examples])  # [tiles, 3, H, W]
    if not packed:
        return Batch(input_ids, labels, mask, pixel_values)
    return Batch(
        input_ids, labels, branch_mask(segments, dtype=torch.float32), pixel_values, position_ids
    )


@dataclass(frozen=True)
class _Drawn:
    """A conversation step's pictures: ``examples`` (one :class:`Encoded` each) and, when the
    step's losses need them, each picture's :func:`~vltools.toy_targets.token_cover` and
    :func:`~vltools.toy_targets.label_classes` (``covers``, ``classes``) and, for each of its
    answers in order, the label of the shape it is about or None (``asked``,
    :func:`~vltools.toy_targets.asked_label`); ``next_scene``: the first scene not drawn."""

    examples: list[Encoded]
    covers: list[np.ndarray]
    classes: list[np.ndarray]
    asked: list[list[int | None]]
    next_scene: int


def _examples(vlm: VLModel, cfg: TrainConfig, step: int, first: int) -> _Drawn:
    """The batch of ``step``: encoded conversations of scenes ``first, first + 1, ...``."""
    from vltools.images import load_image
    from vltools.toy import all_questions, conversations, follow_ups, toy_scene
    from vltools.toy_targets import asked_label, label_classes, tile_labels, token_cover

    rng = np.random.default_rng([cfg.seed, step])
    phase = _phase(cfg, step)
    single = phase is not None or step < cfg.single_share * cfg.steps
    wide = not single and rng.random() < cfg.wide_share
    if single:
        max_num = 1
    elif wide:
        max_num = int(cfg.wide_max_nums[int(rng.integers(len(cfg.wide_max_nums)))])
    else:
        max_num = int(cfg.max_nums[int(rng.integers(len(cfg.max_nums)))])
    out, covers, classes, asked = [], [], [], []
    tiles = 0
    index = first

    def wanted(kind: str) -> bool:  # the phase's kinds of question, or every kind
        return phase is None or kind in phase["kinds"]

    while tiles < cfg.tiles_per_step:
        if wide:
            scene = toy_scene(index, style="wide_small", kinds=("colour", "shape", "presence"))
        else:
            scene = toy_scene(index, **phase) if phase else toy_scene(index)
        tiled = load_image(scene.image, max_num=max_num)
        if cfg.branches:
            asked = [q for q in all_questions(scene, seed=index) if wanted(q[2])]
            groups = conversations(asked, seed=index, turns=cfg.turns)
            example = encode_branches(vlm, tiled, [[(q, a) for q, a, _ in g] for g in groups])
        else:
            more = [
                (q, a, kind)
                for q, a, kind in follow_ups(scene, seed=index, n=cfg.follow_ups)
                if wanted(kind)
            ]
            example = encode_example(
                vlm, scene.as_dict(), max_num=max_num, more=[m[:2] for m in more], tiled=tiled
            )
            if cfg.answer_attention:
                answers = [(scene.answer, scene.kind), *((a, kind) for _, a, kind in more)]
                asked.append([asked_label(scene, a, kind) for a, kind in answers])
        out.append(example)
        if cfg.probe_weight or cfg.answer_attention or cfg.inside_shape:
            table = label_classes(scene)
            covers.append(token_cover(tile_labels(scene, tiled.grid), n_labels=len(table)))
            classes.append(table)
        tiles += int(example.pixel_values.shape[0])
        index += 1
    return _Drawn(out, covers, classes, asked, index)


def _phase(cfg: TrainConfig, step: int) -> dict[str, Any] | None:
    """The :func:`~vltools.toy.toy_scene` arguments of ``step``'s curriculum phase, or None."""
    end = 0
    for steps, count, kinds in cfg.curriculum:
        end += steps
        if step < end:
            return {"count": count, "kinds": tuple(kinds)}
    return None


def parse_curriculum(text: str) -> tuple[tuple[int, int | None, tuple[str, ...]], ...]:
    """``"60:1:colour,150:any:colour+shape"`` -> ``((60, 1, ("colour",)), (150, None, ...))``."""
    from vltools.toy import KINDS

    phases = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        fields = part.split(":")
        kinds = tuple(fields[2].split("+")) if len(fields) == 3 else ()
        if (
            len(fields) != 3
            or not fields[0].isdigit()
            or fields[1] not in ("any", "1", "2", "3", "4")
            or not kinds
            or not set(kinds) <= set(KINDS)
        ):
            raise ValueError(
                f"curriculum phase {part!r}: write STEPS:COUNT:KINDS, e.g. 60:1:colour or "
                f"150:any:colour+shape (COUNT 1-4 or any; KINDS from {KINDS} joined by +)."
            )
        count = None if fields[1] == "any" else int(fields[1])
        phases.append((int(fields[0]), count, kinds))
    return tuple(phases)


def format_curriculum(phases: Sequence[tuple[int, int | None, Sequence[str]]]) -> str:
    """The text :func:`parse_curriculum` reads back into ``phases`` (``""`` for none)."""
    return ",".join(
        f"{steps}:{'any' if count is None else count}:{'+'.join(kinds)}"
        for steps, count, kinds in phases
    )


# The vision stage draws its scenes from here on: far above the conversation steps' indices and
# below the first held-out set's (toy_scenes seed 1 starts at 1_000_003).
VISION_FIRST_SCENE = 500_000


class _Crops(NamedTuple):
    """A vision batch: ``pixels`` ``[crops, 3, side * 14, side * 14]``, each crop's top-left
    ``offsets`` ``(row, col)`` in patches, its token ``covers`` ``[1, tokens, labels]`` and its
    scene's label ``classes``, and ``next_scene``, the first scene not drawn (last, as
    :func:`~vltools.threads.build_ahead` wants it)."""

    pixels: Any
    offsets: list[tuple[int, int]]
    covers: list[np.ndarray]
    classes: list[np.ndarray]
    next_scene: int


def _crop_batch(cfg: TrainConfig, step: int, first: int) -> _Crops:
    """The vision stage's batch of ``step``: ``cfg.vision_crops`` crops of real tiles.

    Scenes ``first, first + 1, ...`` are cut with a budget from ``vision_max_nums`` (or, with
    probability ``wide_share``, are panoramas cut with one of ``wide_max_nums``; several tiles
    a picture keep the scenes a step needs, and their drawing, few), and each tile gives two
    crops of ``crop_side`` patches, placed on an even patch (so a crop's 2 x 2 shuffle groups
    are the tile's) and mostly around a shape.
    """
    import torch

    from vltools.images import load_image
    from vltools.toy import toy_scene
    from vltools.toy_targets import label_classes, tile_labels, token_cover

    rng = np.random.default_rng([cfg.seed, 1, step])
    side, patch = cfg.crop_side, 14
    crops, offsets, covers, classes = [], [], [], []
    index = first
    while len(crops) < cfg.vision_crops:
        wide = rng.random() < cfg.wide_share
        scene = toy_scene(index, style="wide_small" if wide else "mixed")
        choices = cfg.wide_max_nums if wide else cfg.vision_max_nums
        tiled = load_image(scene.image, max_num=int(choices[int(rng.integers(len(choices)))]))
        labels = tile_labels(scene, tiled.grid)  # [tiles, 448, 448]
        table = label_classes(scene)
        grid = labels.shape[1] // patch  # 32 patches a side
        index += 1
        for tile in rng.permutation(labels.shape[0]).tolist() * 2:
            if len(crops) == cfg.vision_crops:
                break
            shapes = np.flatnonzero(labels[tile])  # row-major, as argwhere would list them
            if len(shapes) and rng.random() < 0.8:
                y, x = divmod(int(shapes[int(rng.integers(len(shapes)))]), labels.shape[2])
                row = int(np.clip(round((y / patch - side / 2) / 2) * 2, 0, grid - side))
                col = int(np.clip(round((x / patch - side / 2) / 2) * 2, 0, grid - side))
            else:
                row = int(rng.integers(0, (grid - side) // 2 + 1)) * 2
                col = int(rng.integers(0, (grid - side) // 2 + 1)) * 2
            top, left, span = row * patch, col * patch, side * patch
            crops.append(tiled.pixel_values[tile, :, top : top + span, left : left + span])
            offsets.append((row, col))
            window = labels[tile : tile + 1, top : top + span, left : left + span]
            covers.append(token_cover(window, n_labels=len(table)))
            classes.append(table)
    return _Crops(torch.stack(crops), offsets, covers, classes, index)


def _mirrored(batch: _Crops) -> _Crops:
    """A vision batch mirrored left to right: the pixels, and with them each crop's token
    cover (tokens are row-major cells, so each row reverses)."""
    flipped = []
    for cover in batch.covers:  # [1, side * side, labels]
        side = math.isqrt(cover.shape[1])
        grid = cover.reshape(cover.shape[0], side, side, cover.shape[2])
        flipped.append(np.ascontiguousarray(grid[:, :, ::-1]).reshape(cover.shape))
    return batch._replace(pixels=batch.pixels.flip(-1), covers=flipped)


def _reused(batches: Any, *, pool: int, steps: int) -> Any:
    """The vision stage's batches: ``batches`` (newly drawn) as they come; with a ``pool``,
    they are kept (as uint8, :func:`~vltools.images.pixel_codes`) and, once drawn, given again
    in order until ``steps`` batches in all, every other pass mirrored (:func:`_mirrored`)."""
    from vltools.images import from_pixel_codes, pixel_codes

    kept: list[_Crops] = []  # their pixels as uint8 codes
    scene = VISION_FIRST_SCENE
    for batch in batches:
        if pool:
            kept.append(batch._replace(pixels=pixel_codes(batch.pixels)))
        scene = batch.next_scene
        yield batch
    for step in range(len(kept), steps if kept else 0):
        stored = kept[step % len(kept)]
        batch = stored._replace(pixels=from_pixel_codes(stored.pixels), next_scene=scene)
        yield _mirrored(batch) if (step // len(kept)) % 2 else batch


def crop_features(model: Any, pixels: torch.Tensor, offsets: Sequence[tuple[int, int]]):
    """The projector's output ``[crops, tokens, width]`` for crops of tiles.

    Each crop goes through the vision tower as the tile would, but alone: its patches get the
    position embedding of the window they come from (``offsets``, in patches), the class
    token its own, then the encoder, the pixel shuffle and the projector. A crop of 16 x 16
    patches costs about a sixth of a tile, which is what makes the vision stage cheap.
    """
    import torch

    core = model.model
    tower = core.vision_tower
    table = tower.embeddings.position_embeddings  # [1, 1 + n * n, C]
    width = table.shape[-1]
    n = math.isqrt(table.shape[1] - 1)
    count, _, height, _ = pixels.shape
    side = height // tower.embeddings.patch_size[0]
    patches = tower.embeddings.patch_embeddings(pixels)  # [crops, side * side, C]
    grid = table[0, 1:].reshape(n, n, width)
    positions = torch.stack(
        [grid[r : r + side, c : c + side].reshape(side * side, width) for r, c in offsets]
    )
    cls = (tower.embeddings.cls_token + table[:, :1]).expand(count, -1, -1)
    hidden = torch.cat([cls, patches + positions], dim=1)  # [crops, 1 + side * side, C]
    hidden = tower.layernorm(tower.encoder(hidden).last_hidden_state)[:, 1:]
    hidden = hidden.reshape(count, side, side, width).contiguous()
    shuffled = core.pixel_shuffle(hidden, scale_factor=core.config.downsample_ratio)
    return core.multi_modal_projector(shuffled.reshape(count, -1, shuffled.shape[-1]))


def _prepare(model: Any, *, fresh: bool, edges: bool = False) -> None:
    """Make the weights trainable, off the memory-mapped file; for ``fresh`` (random) weights,
    start the vision position embedding at the sine-cosine code, and with ``edges`` the first
    channels of the patch embedding at :func:`edge_filters`."""
    import torch

    for p in model.parameters():
        p.data = p.data.clone()  # off the memory-mapped file: the weights will change
        p.requires_grad_(True)
    if not fresh:
        return
    embeddings = model.model.vision_tower.embeddings.position_embeddings  # [1, 1 + n * n, C]
    with torch.no_grad():
        embeddings.copy_(sincos_positions(embeddings.shape[1], embeddings.shape[2]))
        if edges:
            conv = model.model.vision_tower.embeddings.patch_embeddings.projection
            filters = edge_filters(conv.kernel_size[0])
            if filters.shape[0] > conv.out_channels:
                raise ValueError(
                    f"edge_filters needs {filters.shape[0]} patch-embedding channels; the "
                    f"vision tower has {conv.out_channels}. Turn edge_filters off."
                )
            conv.weight[: len(filters)] = filters
            conv.bias[: len(filters)] = 0


def _optimizer(named: Sequence[tuple[str, Any]], cfg: TrainConfig, lr: float):
    import torch

    decay = [p for n, p in named if p.ndim >= 2 and "embed" not in n]
    rest = [p for n, p in named if not (p.ndim >= 2 and "embed" not in n)]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0}],
        lr=lr,
        betas=(0.9, 0.98),
    )


def _schedule(lr: float, warmup: int, steps: int):
    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        done = (step - warmup) / max(1, steps - warmup)
        return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * done)))

    return lr_at


def pretrain_vision(
    vlm: VLModel, probe: Any, cfg: TrainConfig, *, log: Any = None, log_every: int = 25
) -> list[float]:
    """The vision stage: ``cfg.vision_steps`` steps on crops (:func:`_crop_batch`; with
    ``cfg.vision_pool``, the first batches again, see :func:`_reused`), training the vision
    tower, the projector and ``probe`` (a :class:`~vltools.toy_targets.TokenProbe`) on the
    token losses alone. Returns each step's loss."""
    import torch

    model = vlm.model
    named = [
        *model.model.vision_tower.named_parameters(),
        *model.model.multi_modal_projector.named_parameters(),
        *probe.named_parameters(),
    ]
    opt = _optimizer(named, cfg, cfg.vision_lr)
    lr_at = _schedule(cfg.vision_lr, cfg.warmup, cfg.vision_steps)
    params = [p for _, p in named]
    model.train()
    losses: list[float] = []
    correct = total = averaged = 0
    start = time.perf_counter()
    drawn = min(cfg.vision_pool, cfg.vision_steps) if cfg.vision_pool else cfg.vision_steps
    batches = build_ahead(
        lambda step, first: _crop_batch(cfg, step, first), drawn, VISION_FIRST_SCENE
    )
    with contextlib.closing(batches):  # on an error too, a batch still being built is waited for
        steps = _reused(batches, pool=cfg.vision_pool, steps=cfg.vision_steps)
        for step, (pixels, offsets, covers, classes, scene) in enumerate(steps):
            result = probe(crop_features(model, pixels, offsets), covers, classes)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            opt.zero_grad(set_to_none=True)
            result.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(result.loss.item())
            correct, total = correct + result.correct, total + result.total
            averaged += result.averaged_correct
            if log is not None and ((step + 1) % log_every == 0 or step == cfg.vision_steps - 1):
                log(
                    f"vision {step + 1}/{cfg.vision_steps} loss {np.mean(losses[-log_every:]):.3f} "
                    f"colour {result.colour:.3f} shape {result.shape:.3f} pooled kind "
                    f"{correct}/{total}{f' mean kind {averaged}/{total}' if cfg.mean_kind else ''} "
                    f"lr {lr_at(step):.2e} scenes {scene - VISION_FIRST_SCENE} "
                    f"{time.perf_counter() - start:.0f}s"
                )
                correct = total = averaged = 0
    return losses


class _LastQueries:
    """A forward hook on a Qwen2 attention layer that keeps its first query head's rotated
    queries and the matching key head's keys (``[B, L, head_dim]`` each), for
    :func:`_answer_attention_loss`."""

    def __init__(self, attention: Any) -> None:
        self.queries: Any = None
        self.keys: Any = None
        self.scale = float(attention.scaling)
        self.handle = attention.register_forward_hook(self, with_kwargs=True)

    def __call__(self, module: Any, args: Any, kwargs: dict, output: Any) -> None:
        from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

        hidden = kwargs["hidden_states"]  # [B, L, hidden]
        cos, sin = kwargs["position_embeddings"]
        rows, length, _ = hidden.shape
        shape = (rows, length, -1, module.head_dim)
        queries = module.q_proj(hidden).view(shape)[:, :, :1].transpose(1, 2)  # [B, 1, L, D]
        keys = module.k_proj(hidden).view(shape)[:, :, :1].transpose(1, 2)  # head 0's keys
        queries, keys = apply_rotary_pos_emb(queries, keys, cos, sin)
        self.queries, self.keys = queries[:, 0], keys[:, 0]


def _answer_attention_loss(
    hook: _LastQueries, batch: Batch, drawn: _Drawn, image_token_id: int
) -> Any:
    """The mean cross-entropy between the hooked head's attention at the first token of each
    colour or shape answer (the position that predicts it) and the
    :func:`~vltools.toy_targets.attention_target` of the asked shape over the image tokens."""
    import torch

    from vltools.toy_targets import attention_target

    # the position before each answer's first token predicts it: its query is the one to pull
    starts = (batch.labels[:, :-1] == -100) & (batch.labels[:, 1:] != -100)  # [B, L - 1]
    terms = []
    for row, (cover, labels) in enumerate(zip(drawn.covers, drawn.asked, strict=True)):
        image = torch.nonzero(batch.input_ids[row] == image_token_id)[:, 0]  # [tokens]
        for position, label in zip(torch.nonzero(starts[row])[:, 0].tolist(), labels, strict=True):
            target = attention_target(cover, label) if label is not None else None
            if target is None or not target.any():
                continue
            seen = hook.keys[row, : position + 1]  # [position + 1, D]: causal
            scores = (seen @ hook.queries[row, position]) * hook.scale
            wanted = torch.zeros(position + 1)
            wanted[image] = torch.from_numpy(target)
            terms.append(-(wanted * scores.log_softmax(-1)).sum())
    return torch.stack(terms).mean() if terms else torch.zeros(())


def _inside_shape_loss(
    hidden: Any, head: Any, batch: Batch, drawn: _Drawn, image_token_id: int
) -> Any:
    """The cross-entropy of ``head`` reading, from ``hidden`` (``[B, L, width]``, the language
    model's first layer's output), the kind of the shape each image token lies inside
    (:func:`~vltools.toy_targets.inside_kinds`), averaged over those tokens."""
    import torch

    from vltools.toy_targets import inside_kinds

    length = batch.input_ids.shape[1]
    positions, kinds = [], []
    for row, (cover, table) in enumerate(zip(drawn.covers, drawn.classes, strict=True)):
        image = torch.nonzero(batch.input_ids[row] == image_token_id)[:, 0]  # [tokens]
        kind = torch.from_numpy(inside_kinds(cover, table))  # [tokens], -1 outside every shape
        positions.append(row * length + image[kind >= 0])
        kinds.append(kind[kind >= 0])
    # one gather over the whole batch: its backward is one scatter, not one a row
    features = hidden.reshape(-1, hidden.shape[-1])[torch.cat(positions)]  # [inside, width]
    return torch.nn.functional.cross_entropy(head(features), torch.cat(kinds))


def train(
    vlm: VLModel,
    cfg: TrainConfig,
    *,
    log_every: int = 10,
    log: Any = None,
    every: int = 0,
    callback: Any = None,
    fresh: bool = True,
) -> list[float]:
    """Train ``vlm.model`` in place: the vision stage (``cfg.vision_steps``, see
    :func:`pretrain_vision`), then ``cfg.steps`` conversation steps; returns the loss of every
    conversation step.

    With ``every`` and ``callback``, ``callback(step)`` runs after every ``every``
    conversation steps (the script saves a checkpoint there, so a long run can be stopped and
    still leave weights). ``fresh``: the weights are the random initial ones (their vision
    position embedding is reset to :func:`sincos_positions`); False for trained weights.
    """
    import torch

    from vltools.toy_targets import TokenProbe

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model = vlm.model
    _prepare(model, fresh=fresh, edges=cfg.edge_filters)
    use_probe = cfg.probe_weight > 0
    probe = None
    if cfg.vision_steps or use_probe:
        width = model.model.multi_modal_projector.linear_2.out_features
        probe = TokenProbe(width, mean=cfg.mean_kind)
    if cfg.vision_steps:
        pretrain_vision(vlm, probe, cfg, log=log)
    if cfg.freeze_vision:  # the backward pass then stops at the projector
        model.model.vision_tower.requires_grad_(False)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    named += list(probe.named_parameters()) if use_probe else []
    first_layer: list[Any] = []  # the first layer's output of the step, with inside_shape
    inside_head = first_hook = None
    if cfg.inside_shape:
        from vltools.toy import SHAPES

        width = model.model.language_model.config.hidden_size
        # training-only, started at zero without a random draw (so a run from ``init`` and
        # the whole run leave torch's generator alike)
        inside_head = torch.nn.utils.skip_init(torch.nn.Linear, width, len(SHAPES))
        torch.nn.init.zeros_(inside_head.weight)
        torch.nn.init.zeros_(inside_head.bias)
        named += list(inside_head.named_parameters(prefix="inside_head"))
        first_hook = model.model.language_model.layers[0].register_forward_hook(
            lambda _module, _inputs, output: first_layer.append(
                output[0] if isinstance(output, tuple) else output
            )
        )
    opt = _optimizer(named, cfg, cfg.lr)
    lr_at = _schedule(cfg.lr, cfg.warmup, cfg.steps)
    params = [p for _, p in named]
    captured: list[Any] = []  # the projector's output of the step, for the token losses
    hook = None
    if use_probe:
        hook = model.model.multi_modal_projector.register_forward_hook(
            lambda _module, _inputs, output: captured.append(output)
        )
    last = None
    if cfg.answer_attention:
        last = _LastQueries(model.model.language_model.layers[-1].self_attn)
    model.train()
    pad = vlm.tokenizer.pad_token_id or 0
    losses: list[float] = []
    pulls: list[float] = []  # the answer attention loss of each step, with answer_attention
    insides: list[float] = []  # the inside-shape loss of each step, with inside_shape
    start = time.perf_counter()
    hits = asked = 0

    def padded(step: int, first: int) -> tuple[Batch, _Drawn, int]:
        drawn = _examples(vlm, cfg, step, first)
        # masks too, built ahead; the last item is the next step's first scene
        return collate(drawn.examples, pad_id=pad), drawn, drawn.next_scene

    batches = build_ahead(padded, cfg.steps, cfg.first_scene)
    try:
        for step, (batch, drawn, _) in enumerate(batches):
            labels, pixel_values = batch.labels, batch.pixel_values
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            captured.clear()
            first_layer.clear()
            # conversations are padded on the right, so under the causal mask no token before
            # its row's padding sees it: they need no mask, and attention takes its fused causal
            # path (a seventh less time a step); packed branches need theirs
            hidden = model.model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask if batch.packed else None,
                position_ids=batch.position_ids,
                pixel_values=pixel_values,
                use_cache=False,
            ).last_hidden_state  # [B, L, hidden]
            # logits only where an answer token is predicted: the vocabulary projection of
            # every image token would cost a quarter of the step
            targets = labels[:, 1:]  # [B, L - 1]
            keep = targets != -100
            logits = model.lm_head(hidden[:, :-1][keep])  # [answer tokens, vocab]
            loss = torch.nn.functional.cross_entropy(logits, targets[keep])
            # each answer's first token decides the word, and these scenes are new to the model
            first = (labels[:, :-1] == -100)[keep]  # [answer tokens]
            hits += int((logits[first].argmax(-1) == targets[keep][first]).sum())
            asked += int(first.sum())
            total = loss
            if use_probe:
                total = (
                    total + cfg.probe_weight * probe(captured[0], drawn.covers, drawn.classes).loss
                )
            if inside_head is not None:
                inside = _inside_shape_loss(
                    first_layer[0], inside_head, batch, drawn, vlm.image_token_id
                )
                total = total + cfg.inside_shape * inside
                insides.append(inside.item())
            if last is not None:
                pull = _answer_attention_loss(last, batch, drawn, vlm.image_token_id)
                total = total + cfg.answer_attention * pull
                pulls.append(pull.item())
            opt.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item())
            if log is not None and (step % log_every == 0 or step == cfg.steps - 1):
                recent = losses[-log_every:]
                log(
                    f"step {step + 1}/{cfg.steps} loss {sum(recent) / len(recent):.4f} "
                    f"first answer tokens right {hits}/{asked} lr {lr_at(step):.2e} "
                    + (f"answer attention {np.mean(pulls[-log_every:]):.3f} " if pulls else "")
                    + (f"inside shape {np.mean(insides[-log_every:]):.3f} " if insides else "")
                    + f"tiles {pixel_values.shape[0]} scenes {drawn.next_scene} "
                    f"{time.perf_counter() - start:.0f}s"
                )
                hits = asked = 0
            if every and callback is not None and (step + 1) % every == 0 and step + 1 < cfg.steps:
                model.eval()
                callback(step + 1)
                model.train()
    finally:
        batches.close()  # a batch still being built is waited for
        if hook is not None:
            hook.remove()
        if last is not None:
            last.handle.remove()
        if first_hook is not None:
            first_hook.remove()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return losses


def save_original(vlm: VLModel, source: Path, folder: Path) -> Path:
    """Write ``vlm``'s weights in the original format, with ``source``'s other files (not
    its weights, nor a model card, which describes other weights).

    The loader's key plan (original key -> native tensor, the fused ``attn.qkv`` as three row
    ranges) is computed for ``source``'s ``config.json`` and run backwards, so the file has
    exactly the keys and shapes of the original layout; then ``folder`` is loadable by
    ``load_model`` and is byte for byte a function of the weights.
    """
    import torch
    from safetensors.torch import save_file

    from vltools.models import plan_conversion
    from vltools.testing import original_key_shapes

    config = json.loads((Path(source) / "config.json").read_text())
    shapes = original_key_shapes(config)
    params = dict(vlm.model.named_parameters())
    plan = plan_conversion(shapes, {n: tuple(p.shape) for n, p in params.items()})
    parts: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for m in plan.mappings:
        parts.setdefault(m.source, []).append((m.rows[0] if m.rows else 0, params[m.target]))
    tensors = {
        key: torch.cat([t.detach() for _, t in sorted(chunks, key=lambda c: c[0])], dim=0)
        .to(torch.float32)
        .contiguous()
        for key, chunks in sorted(parts.items())
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for item in Path(source).iterdir():
        if (
            item.is_file()
            and not item.name.endswith((".safetensors", ".md"))
            and not item.name.startswith(".")
        ):
            shutil.copyfile(item, folder / item.name)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def _refuse_bad_start(cfg: TrainConfig, init: Path | str | None) -> None:
    """Refuse a run whose start contradicts ``cfg`` (a frozen random tower), naming the fix."""
    if init is None and cfg.freeze_vision and cfg.steps and not cfg.vision_steps:
        raise ValueError(
            f"freeze_vision=True with vision_steps=0 and no init: the {cfg.steps} conversation "
            "steps would train on a random vision tower that never changes. Give the vision "
            "stage steps (--vision-steps N), start from trained weights (--init DIR), or let "
            "the conversations train the tower (--no-freeze-vision, freeze_vision=False)."
        )


def run(
    cfg: TrainConfig,
    out: Path,
    *,
    log: Any = print,
    save_every: int = 0,
    init: Path | str | None = None,
) -> tuple[Path, list[float], float]:
    """Build, train and save: ``(folder, losses, seconds)``.

    With ``save_every``, the weights so far are also written to ``out/step-N`` every
    ``save_every`` steps. ``init``: start from this checkpoint folder (original toy format,
    e.g. an earlier run's ``step-N``; ``"toy"`` is the shipped one) instead of random weights;
    set ``cfg.first_scene`` past the scenes it was trained on. Refuses to freeze a random
    vision tower (``freeze_vision`` with no vision stage and no ``init``).
    """
    import torch

    from vltools.checkpoints import resolve_source
    from vltools.models import load_model

    _refuse_bad_start(cfg, init)
    torch.set_num_threads(cfg.threads)
    with tempfile.TemporaryDirectory(prefix="vltools-toy-init-") as tmp:
        if init is None:
            source = initial_checkpoint(Path(tmp), seed=cfg.seed)
        else:
            source = resolve_source(init)
            if not (source / "config.json").is_file():
                raise FileNotFoundError(
                    f"init={str(init)!r} is not a checkpoint folder (no config.json there); "
                    "pass a folder a run wrote (its --out or an out/step-N), or 'toy'."
                )
        vlm = load_model(source, device="cpu", dtype="float32")
        start = time.perf_counter()
        losses = train(
            vlm,
            cfg,
            log=log,
            every=save_every,
            callback=lambda step: save_original(vlm, source, Path(out) / f"step-{step}"),
            fresh=init is None,
        )
        seconds = time.perf_counter() - start
        save_original(vlm, source, out)
    return Path(out), losses, seconds


def evaluate(vlm: VLModel, *, n: int = 300, log: Any = print) -> dict[str, Any]:
    """The model card's numbers, on held-out scenes (seeds the training never draws).

    Per-kind accuracy at ``max_num=6`` on ``n`` mixed scenes (seed 1) and on ``n`` colour and
    shape questions (seed 2); colour and shape on ``n // 3`` wide panoramas with small shapes
    at ``max_num=1`` and ``12`` (seed 3); the answer's attention in the asked box over 200
    colour scenes at ``max_num=6`` (seed 4), all layers averaged, and the last layer alone on
    the first 50 of them.
    """
    from vltools.toy import box_attention, score, toy_scenes

    results: dict[str, Any] = {}
    mixed = score(vlm, list(toy_scenes(n, seed=1)), max_num=6)
    log(f"all kinds, max_num=6: {mixed}")
    results["all_kinds_max_num_6"] = mixed
    cs = score(vlm, list(toy_scenes(n, seed=2, kinds=("colour", "shape"))), max_num=6)
    log(f"colour and shape, max_num=6: {cs}")
    results["colour_shape_max_num_6"] = cs
    wide = list(toy_scenes(n // 3, seed=3, style="wide_small", kinds=("colour", "shape")))
    for max_num in (1, 12):
        result = score(vlm, wide, max_num=max_num)
        log(f"wide, small shapes, max_num={max_num}: {result}")
        results[f"wide_max_num_{max_num}"] = result
    colour = list(toy_scenes(200, seed=4, kinds=("colour",)))
    att = box_attention(vlm, colour, max_num=6)
    log(f"attention in the box (all layers): {att}")
    results["attention"] = att
    last = vlm.model.config.text_config.num_hidden_layers - 1
    att_last = box_attention(vlm, colour[:50], max_num=6, layers=[last])
    log(f"attention in the box (layer {last} only, first 50 scenes): {att_last}")
    results["attention_last_layer"] = att_last
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the toy InternVL2 on synthetic scenes.")
    parser.add_argument("--out", type=Path, help="folder for the trained checkpoint")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--tiles", type=int, default=TrainConfig.tiles_per_step)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--threads", type=int, default=TrainConfig.threads)
    parser.add_argument(
        "--evaluate", metavar="DIR", help="measure a checkpoint folder (or 'toy') instead"
    )
    parser.add_argument("--vision-steps", type=int, default=TrainConfig.vision_steps)
    parser.add_argument(
        "--answer-attention",
        type=float,
        default=TrainConfig.answer_attention,
        help="weight of the loss pulling the last layer's first head, at each colour or shape "
        "answer, onto the asked shape's image tokens (0: none)",
    )
    parser.add_argument(
        "--inside-shape",
        type=float,
        default=TrainConfig.inside_shape,
        help="weight of the loss asking each image token inside a shape to tell the shape's "
        "kind after the language model's first layer (0: none)",
    )
    parser.add_argument(
        "--vision-pool",
        type=int,
        default=TrainConfig.vision_pool,
        help="draw only this many vision batches, then go over them again (0: new ones always)",
    )
    parser.add_argument(
        "--curriculum",
        default=format_curriculum(TrainConfig.curriculum),
        help="first phases of the conversation steps, e.g. 60:1:colour,150:any:colour+shape "
        "('' for none)",
    )
    parser.add_argument(
        "--probe-weight",
        type=float,
        default=TrainConfig.probe_weight,
        help="weight of the image-token losses during the conversation steps",
    )
    switches = {  # TrainConfig's on/off fields, each a --name / --no-name pair
        "mean_kind": "the vision stage also reads each shape's kind from the mean of its tokens",
        "freeze_vision": "the conversation steps leave the vision tower as the vision stage left it",
        "branches": "ask every question about a picture, in short conversations (--turns) "
        "packed after one image prefix (else one conversation with follow-ups)",
        "edge_filters": "a fresh run starts the patch embedding at coloured edge filters",
    }
    for field, text in switches.items():
        parser.add_argument(
            "--" + field.replace("_", "-"),
            action=argparse.BooleanOptionalAction,
            default=getattr(TrainConfig, field),
            help=text,
        )
    parser.add_argument(
        "--turns",
        type=int,
        default=TrainConfig.turns,
        help="with --branches, the most questions one branch asks as a conversation",
    )
    parser.add_argument("--save-every", type=int, default=0, help="also save every N steps")
    parser.add_argument(
        "--init",
        metavar="DIR",
        help="start from this checkpoint folder (e.g. an earlier run's step-N, or 'toy')",
    )
    parser.add_argument(
        "--first-scene",
        type=int,
        default=TrainConfig.first_scene,
        help="index of the first training scene (past an --init run's, for new scenes)",
    )
    parser.add_argument("--n", type=int, default=300, help="held-out scenes per measurement")
    args = parser.parse_args(argv)
    if args.evaluate:
        import torch

        from vltools.models import load_model

        torch.set_num_threads(args.threads)
        evaluate(
            load_model(args.evaluate, device="cpu"), n=args.n, log=lambda s: print(s, flush=True)
        )
        return 0
    if args.out is None:
        parser.error("--out is required to train (or pass --evaluate DIR)")
    try:
        cfg = TrainConfig(
            steps=args.steps,
            tiles_per_step=args.tiles,
            lr=args.lr,
            seed=args.seed,
            threads=args.threads,
            vision_steps=args.vision_steps,
            vision_pool=args.vision_pool,
            answer_attention=args.answer_attention,
            inside_shape=args.inside_shape,
            curriculum=parse_curriculum(args.curriculum),
            probe_weight=args.probe_weight,
            first_scene=args.first_scene,
            turns=args.turns,
            **{field: getattr(args, field) for field in switches},
        )
        _refuse_bad_start(cfg, args.init)
    except ValueError as error:
        parser.error(str(error))
    folder, losses, seconds = run(
        cfg,
        args.out,
        log=lambda s: print(s, flush=True),
        save_every=args.save_every,
        init=args.init,
    )
    final = f"; final loss {losses[-1]:.4f}" if losses else ""
    print(f"trained {cfg.steps} steps in {seconds:.0f}s{final}; {folder}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
