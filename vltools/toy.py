"""The ``toy`` checkpoint: a small InternVL2 trained on synthetic scenes, and those scenes.

``load_model("tiny")`` has random weights: its answers are noise. ``load_model("toy")`` is the
same original InternVL2 format at the same real geometry (448-pixel tiles, 14-pixel patches,
pixel shuffle 0.5, so 256 ``<IMG_CONTEXT>`` tokens per tile, the Hermes-2 template), with
small widths (see :func:`toy_config`) and weights trained on this machine's CPU by
``python -m vltools.toy_train`` on the scenes :func:`toy_scenes` draws: one to four coloured
shapes on a textured background, and a one-word question about them. It knows those scenes and
nothing else; about a real photo its answers are meaningless.

The shipped weights live in the package (``vltools/checkpoints_data/toy/``, with a model card,
``MODEL_CARD.md``); :func:`toy_checkpoint` returns that folder. Everything here is pure apart
from drawing the pictures: a scene is a function of its seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "COLOURS",
    "SHAPES",
    "KINDS",
    "STYLES",
    "Scene",
    "toy_config",
    "toy_checkpoint",
    "toy_scene",
    "toy_scenes",
    "shape_mask",
    "follow_ups",
    "all_questions",
    "conversations",
    "ToyScore",
    "score",
    "BoxAttention",
    "box_attention",
]

# Colours and shapes whose names start with different tokens of the checkpoint's tokenizer, so
# the first answer token already decides the answer.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (30, 160, 60),
    "blue": (35, 75, 225),
    "yellow": (245, 215, 30),
    "purple": (145, 50, 190),
    "orange": (250, 135, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
KINDS: tuple[str, ...] = ("colour", "shape", "count", "position", "presence")
Style = Literal["mixed", "wide_small"]
STYLES: tuple[str, ...] = ("mixed", "wide_small")

_DATA = Path(__file__).parent / "checkpoints_data" / "toy"


def toy_checkpoint() -> Path:
    """The folder of the shipped ``toy`` checkpoint (original InternVL2 format, in the package).

    ``vltools.load_model("toy")`` loads it. Raises FileNotFoundError when the package was
    installed without its data files.
    """
    if not (_DATA / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"The toy checkpoint is missing from {_DATA} (no model.safetensors). Reinstall "
            "vltools with its package data, or rebuild it with `python -m vltools.toy_train`."
        )
    return _DATA


def toy_config() -> dict[str, Any]:
    """The toy checkpoint's ``config.json``: the tiny one with the widths it was trained at.

    Vision: 2 InternViT layers of width 32 (2 heads of 16) over the real 32 x 32 patches of a
    448-pixel tile. Language: 2 Qwen2 layers of width 128 (4 query heads of 32, 2 key/value
    heads), the tiny checkpoint's 652-token vocabulary. Weights are stored as float32.
    """
    from vltools.testing import tiny_config

    cfg = tiny_config()
    cfg["torch_dtype"] = "float32"
    cfg["llm_config"].update(
        {
            "_name_or_path": "vltools/toy-qwen2",
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "num_hidden_layers": 2,
            "max_window_layers": 2,
            "max_position_embeddings": 8192,
            "torch_dtype": "float32",
        }
    )
    cfg["vision_config"].update(
        {
            "hidden_size": 32,
            "intermediate_size": 128,
            "num_attention_heads": 2,
            "num_hidden_layers": 2,
        }
    )
    return cfg


# ---------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scene:
    """One picture and one question about it.

    Attributes:
        image: the picture (PIL RGB).
        question, answer: the question and its one-word answer.
        kind: one of :data:`KINDS`.
        box: ``(left, top, right, bottom)`` of the asked-about shape in the image's pixels, or
            ``None`` when the question is about no single shape (count, a "no" presence).
        shapes: every shape drawn, as ``(colour, shape, box)``.
    """

    image: Image.Image
    question: str
    answer: str
    kind: str
    box: tuple[int, int, int, int] | None
    shapes: tuple[tuple[str, str, tuple[int, int, int, int]], ...]

    def as_dict(self) -> dict[str, Any]:
        """The dict :func:`toy_scenes` yields: image, question, answer, kind, box."""
        return {
            "image": self.image,
            "question": self.question,
            "answer": self.answer,
            "kind": self.kind,
            "box": self.box,
        }

    def __repr__(self) -> str:
        return (
            f"Scene({self.image.width}x{self.image.height}, {self.kind}: {self.question!r} -> "
            f"{self.answer!r}, {len(self.shapes)} shapes)"
        )


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """``[height, width, 3]`` uint8: a greyish base with a tint and one texture."""
    base = rng.uniform(95, 195)
    tint = rng.uniform(-14, 14, size=3).astype(np.float32)
    x = np.arange(width, dtype=np.float32)
    y = np.arange(height, dtype=np.float32)
    texture = rng.integers(3)
    if texture == 0:  # stripes at an angle
        angle = rng.uniform(0, math.pi)
        step = np.float32(2 * math.pi / rng.uniform(10, 60))
        field = np.add.outer(y * np.float32(math.sin(angle)), x * np.float32(math.cos(angle)))
        field *= step  # in place from here on: this is a large share of drawing a scene
        np.sin(field, out=field)
        field *= 22
    elif texture == 1:  # checkerboard
        cell = int(rng.integers(12, 48))
        field = np.float32(36) * (np.add.outer(y // cell, x // cell) % 2) - 18
    else:  # smooth blobs
        small = rng.normal(0, 1, size=(max(2, height // 40), max(2, width // 40)))
        small = ((small - small.min()) / (np.ptp(small) + 1e-6) * 255).astype(np.uint8)
        blob = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
        field = (np.asarray(blob, dtype=np.float32) - 128) / 4
    noise = rng.standard_normal((height, width), dtype=np.float32)
    noise *= 7
    noise += np.float32(base)
    field += noise
    out = np.empty((height, width, 3), dtype=np.float32)
    np.add(field[..., None], tint, out=out)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def _star(box: tuple[int, int, int, int]) -> list[tuple[float, float]]:
    left, top, right, bottom = box
    cx, cy, r = (left + right) / 2, (top + bottom) / 2, (right - left) / 2
    points = []
    for i in range(10):
        radius = r if i % 2 == 0 else r * 0.45
        angle = -math.pi / 2 + i * math.pi / 5
        points.append((cx + radius * math.cos(angle), cy + radius * 1.05 * math.sin(angle)))
    return points


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    left, top, right, bottom = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle((left, top, right - 1, bottom - 1), fill=fill)
    elif shape == "triangle":
        draw.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=fill)
    else:
        draw.polygon(_star(box), fill=fill)


def _size(rng: np.random.Generator, style: str) -> tuple[int, int]:
    if style == "wide_small":
        width = int(rng.integers(1700, 2700))
        aspect = rng.uniform(4.0, 6.5)
        return width, max(200, int(width / aspect))
    aspect = math.exp(rng.uniform(math.log(1 / 3), math.log(3.5)))
    short = rng.uniform(260, 720)
    if aspect >= 1:
        return int(short * aspect), int(short)
    return int(short), int(short / aspect)


def _place(
    rng: np.random.Generator, width: int, height: int, n: int, style: str
) -> list[tuple[int, int, int, int]]:
    """Up to ``n`` non-overlapping square boxes (with a gap) inside the image."""
    if style == "wide_small":
        lo, hi = 34, 62
    else:
        short = min(width, height)
        lo, hi = max(28, int(0.12 * short)), max(36, int(0.3 * short))
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(60 * n):
        if len(boxes) == n:
            break
        side = int(rng.integers(lo, hi + 1))
        if side + 8 > min(width, height):
            side = min(width, height) - 8
        left = int(rng.integers(4, width - side - 3))
        top = int(rng.integers(4, height - side - 3))
        box = (left, top, left + side, top + side)
        gap = 6
        if all(
            box[2] + gap <= b[0]
            or b[2] + gap <= box[0]
            or box[3] + gap <= b[1]
            or b[3] + gap <= box[1]
            for b in boxes
        ):
            boxes.append(box)
    return boxes


def _relation(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[str, str] | None:
    """A clear spatial relation of box ``a`` to box ``b``: (axis question, answer), or None."""
    ax, ay = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2
    bx, by = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    dx, dy = ax - bx, ay - by
    if abs(dx) >= abs(dy) and (a[2] <= b[0] or b[2] <= a[0]):
        return "left or right of", "left" if dx < 0 else "right"
    if abs(dy) > abs(dx) and (a[3] <= b[1] or b[3] <= a[1]):
        return "above or below", "above" if dy < 0 else "below"
    return None


def toy_scene(
    seed: int,
    *,
    style: Style = "mixed",
    kinds: Sequence[str] | None = None,
    count: int | None = None,
) -> Scene:
    """The scene of ``seed``: a picture and a question of one of ``kinds`` (default all).

    ``style="mixed"``: aspect ratios from 1:3 to 7:2, shapes 12-30% of the short side.
    ``style="wide_small"``: panoramas 4:1 to 6.5:1, 1700-2700 pixels wide, shapes of 34-62
    pixels: legible with enough tiles, squashed to a few pixels' width in a single tile.
    Every shape of a scene has its own shape and its own colour, so "the triangle" and "the
    red one" each name one shape. ``count``: draw that many shapes (1 to 4, fewer only when they
    do not fit) instead of a random number of them; one shape never gets a position question.
    """
    if style not in STYLES:
        raise ValueError(f"style={style!r} is not a scene style; use one of {STYLES}.")
    allowed = tuple(KINDS if kinds is None else kinds)
    bad = [k for k in allowed if k not in KINDS]
    if bad or not allowed:
        raise ValueError(f"kinds={kinds!r}: each kind must be one of {KINDS} (at least one).")
    if count is not None and (not isinstance(count, int) or not 1 <= count <= len(SHAPES)):
        raise ValueError(f"count={count!r}: draw 1 to {len(SHAPES)} shapes, or None for any.")
    if count == 1 and allowed == ("position",):
        raise ValueError("count=1: a position question needs two shapes; use count >= 2.")
    rng = np.random.default_rng([int(seed), STYLES.index(style)])
    kind = allowed[int(rng.integers(len(allowed)))]
    if count == 1 and kind == "position":  # a one-shape scene cannot ask where one shape is
        kind = next(k for k in allowed if k != "position")
    width, height = _size(rng, style)
    want = int(rng.integers(2 if kind == "position" else 1, 5)) if count is None else count
    boxes = _place(rng, width, height, want, style)
    while len(boxes) < (2 if kind == "position" else 1):  # a crowded draw: try a smaller count
        boxes = _place(rng, width, height, 2, style)
    colours = [str(c) for c in rng.permutation(list(COLOURS))[: len(boxes)]]
    shapes = [str(s) for s in rng.permutation(list(SHAPES))[: len(boxes)]]
    pixels = _background(rng, width, height)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for colour, shape, box in zip(colours, shapes, boxes, strict=True):
        jitter = rng.integers(-18, 19, size=3)
        fill = tuple(
            int(np.clip(v + j, 0, 255)) for v, j in zip(COLOURS[colour], jitter, strict=True)
        )
        _draw(draw, shape, box, fill)
    drawn = tuple(zip(colours, shapes, boxes, strict=True))
    pick = int(rng.integers(len(drawn)))
    colour, shape, box = drawn[pick]
    box_out: tuple[int, int, int, int] | None = box
    if kind == "colour":
        question, answer = _colour_question(shape), colour
    elif kind == "shape":
        question, answer = _shape_question(colour), shape
    elif kind == "count":
        question, answer, box_out = "How many shapes are there?", str(len(drawn)), None
    elif kind == "position":
        pairs = _related_pairs(drawn)
        if not pairs:  # overlapping in both axes cannot happen (boxes do not overlap)
            raise RuntimeError("no clear spatial relation")  # pragma: no cover
        a, b, (axis, answer) = pairs[int(rng.integers(len(pairs)))]
        question = _position_question(a, b, axis)
        box_out = a[2]
    else:
        if rng.random() < 0.5:
            question, answer = _presence(colour, shape), "yes"
        else:
            question, answer, box_out = _absent(drawn, rng), "no", None
    return Scene(image, question, answer, kind, box_out, drawn)


def _absent(shapes: Sequence[tuple[str, str, Any]], rng: np.random.Generator) -> str:
    """A presence question about a colour and shape drawn by ``rng`` that ``shapes`` lack."""
    present = {(c, s) for c, s, _ in shapes}
    options = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
    c, s = options[int(rng.integers(len(options)))]
    return _presence(c, s)


def _related_pairs(
    shapes: Sequence[tuple[str, str, Any]],
) -> list[tuple[Any, Any, tuple[str, str]]]:
    """Every ordered pair ``(a, b, (axis question, answer))`` of ``shapes`` in a clear relation."""
    return [
        (a, b, rel)
        for i, a in enumerate(shapes)
        for j, b in enumerate(shapes)
        if i != j and (rel := _relation(a[2], b[2])) is not None
    ]


def _colour_question(shape: str) -> str:
    return f"What colour is the {shape}?"


def _shape_question(colour: str) -> str:
    return f"What shape is the {colour} one?"


def _position_question(a: tuple[str, str, Any], b: tuple[str, str, Any], axis: str) -> str:
    """``Is the red circle left or right of the blue square?`` about shapes ``a`` and ``b``."""
    return f"Is the {a[0]} {a[1]} {axis} the {b[0]} {b[1]}?"


def _presence(colour: str, shape: str) -> str:
    """``Is there a red circle?``, ``Is there an orange star?``."""
    article = "an" if colour[0] in "aeiou" else "a"
    return f"Is there {article} {colour} {shape}?"


def shape_mask(scene: Scene) -> Image.Image:
    """Which shape each pixel of ``scene.image`` belongs to: an ``"L"`` image of its size.

    Pixel value ``k + 1`` where ``scene.shapes[k]`` was drawn, ``0`` on the background: the
    same polygons, drawn the same way, as the picture (without its colour jitter).
    """
    mask = Image.new("L", scene.image.size, 0)
    draw = ImageDraw.Draw(mask)
    for label, (_, shape, box) in enumerate(scene.shapes, start=1):
        _draw(draw, shape, box, label)
    return mask


def follow_ups(scene: Scene, *, seed: int, n: int) -> list[tuple[str, str, str]]:
    """Up to ``n`` more questions about ``scene``'s picture, as ``(question, answer, kind)``.

    Training asks them after the scene's own question, as one multi-turn conversation (one
    vision pass, several answers). None of them gives another's answer away: each names one
    shape that no other question (the scene's own included) names, and asks its colour or its
    shape; a presence question about an absent colour and shape may be added.
    """
    rng = np.random.default_rng([int(seed), 7])
    named = set()
    if scene.kind == "position":
        words = scene.question.rstrip("?").split()
        named = {s for _, s, _ in scene.shapes if s in words}
    elif scene.box is not None:
        named = {s for _, s, b in scene.shapes if b == scene.box}
    out: list[tuple[str, str, str]] = []
    for colour, shape, _ in scene.shapes:
        if shape in named:
            continue
        if rng.random() < 0.5:
            out.append((_colour_question(shape), colour, "colour"))
        else:
            out.append((_shape_question(colour), shape, "shape"))
    if rng.random() < 0.3:
        out.append((_absent(scene.shapes, rng), "no", "presence"))
    order = rng.permutation(len(out))
    return [out[int(i)] for i in order][:n]


def all_questions(scene: Scene, *, seed: int) -> list[tuple[str, str, str]]:
    """Every question training asks about ``scene``'s picture, as ``(question, answer, kind)``.

    The colour and the shape of each shape, how many shapes there are, one presence question
    about a shape that is there and one about a colour and shape that is not, and the relation
    of up to two pairs of shapes (each a clear left/right or above/below). Several name the
    same shape, so training asks them in separate conversations (:func:`conversations`), each
    its own branch after the shared image prefix. The draws (which shape is asked as present,
    which absent, which pairs) are a function of ``seed``.
    """
    rng = np.random.default_rng([int(seed), 11])
    out: list[tuple[str, str, str]] = []
    for colour, shape, _ in scene.shapes:
        out.append((_colour_question(shape), colour, "colour"))
        out.append((_shape_question(colour), shape, "shape"))
    out.append(("How many shapes are there?", str(len(scene.shapes)), "count"))
    colour, shape, _ = scene.shapes[int(rng.integers(len(scene.shapes)))]
    out.append((_presence(colour, shape), "yes", "presence"))
    out.append((_absent(scene.shapes, rng), "no", "presence"))
    pairs = _related_pairs(scene.shapes)
    for index in rng.permutation(len(pairs))[:2].tolist():
        a, b, (axis, answer) = pairs[index]
        out.append((_position_question(a, b, axis), answer, "position"))
    return out


def conversations(
    questions: Sequence[tuple[str, str, str]], *, seed: int, turns: int = 3
) -> list[list[tuple[str, str, str]]]:
    """``questions`` split into short conversations of at most ``turns`` questions each.

    No two questions of a conversation share a colour or shape word (question and answer
    together), so no answer gives a later question's answer away ("What colour is the
    triangle?" "red" never comes before "What shape is the red one?"); a count question goes
    with any. The order, and so the grouping, is a function of ``seed``; every question is in
    exactly one conversation.
    """
    if not isinstance(turns, int) or turns < 1:
        raise ValueError(f"turns={turns!r}: a conversation has at least one question.")
    names = set(COLOURS) | set(SHAPES)
    rng = np.random.default_rng([int(seed), 13])
    groups: list[list[tuple[str, str, str]]] = []
    named: list[set[str]] = []
    for index in rng.permutation(len(questions)).tolist():
        asked = questions[index]
        words = set(f"{asked[0]} {asked[1]}".replace("?", " ").split()) & names
        for group, seen in zip(groups, named, strict=True):
            if len(group) < turns and not words & seen:
                group.append(asked)
                seen |= words
                break
        else:
            groups.append([asked])
            named.append(words)
    return groups


def toy_scenes(
    n: int,
    *,
    seed: int,
    style: Style = "mixed",
    kinds: Sequence[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """``n`` scenes as dicts: ``image`` (PIL), ``question``, ``answer``, ``kind``, ``box``.

    Scene ``i`` is :func:`toy_scene` of seed ``seed * 1_000_003 + i``; the training script
    draws from seeds below 10**9 and its held-out sets from other seeds, so ``seed`` values
    of 1000 and up never meet a training scene. ``box`` is the asked-about shape's
    ``(left, top, right, bottom)`` in the image's pixels, or None. See :func:`toy_scene` for
    ``style`` and ``kinds``.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n={n!r} must be a non-negative int (the number of scenes).")
    for i in range(n):
        yield toy_scene(seed * 1_000_003 + i, style=style, kinds=kinds).as_dict()


# ---------------------------------------------------------------------------------------------
# Measuring a model on scenes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyScore:
    """Accuracy on scenes, per question kind.

    Attributes:
        max_num: the tiling budget the images were cut with.
        correct, total: per kind, the answers equal to the expected word, and the questions.
        answers: ``(kind, question, expected, answer)`` of every scene, in order.
    """

    max_num: int
    correct: dict[str, int]
    total: dict[str, int]
    answers: tuple[tuple[str, str, str, str], ...]

    @property
    def accuracy(self) -> dict[str, float]:
        """Per kind, the share of right answers."""
        return {k: self.correct[k] / self.total[k] for k in self.total}

    @property
    def overall(self) -> float:
        """The share of right answers over every scene."""
        return sum(self.correct.values()) / max(1, sum(self.total.values()))

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{k} {self.correct[k]}/{self.total[k]}" for k in KINDS if k in self.total
        )
        return f"ToyScore(max_num={self.max_num}: {parts}; overall {self.overall:.1%})"


def score(vlm: Any, scenes: Sequence[dict[str, Any]], *, max_num: int = 6) -> ToyScore:
    """Ask ``vlm`` every scene's question (greedy, through ``vlm.chat``) and count right answers.

    An answer is right when it equals the expected word, ignoring case and a final full stop.
    """
    from vltools.images import load_image

    correct: dict[str, int] = {}
    total: dict[str, int] = {}
    answers = []
    for scene in scenes:
        tiled = load_image(scene["image"], max_num=max_num)
        pixel_values = tiled.pixel_values.to(vlm.device, vlm.dtype)
        reply = vlm.chat(pixel_values, scene["question"], {"max_new_tokens": 8, "do_sample": False})
        kind = scene["kind"]
        ok = reply.strip().rstrip(".").lower() == scene["answer"]
        total[kind] = total.get(kind, 0) + 1
        correct[kind] = correct.get(kind, 0) + int(ok)
        answers.append((kind, scene["question"], scene["answer"], reply))
    return ToyScore(max_num, correct, total, tuple(answers))


@dataclass(frozen=True)
class BoxAttention:
    """How much of the answer's attention to the image lands in the asked-about shape's box.

    Attributes:
        mass: per scene, the share of the first answer token's attention over image tokens
            (heads and ``layers`` averaged) that falls inside the box, on the original pixels.
        area: per scene, the box's share of the image area (what a uniform map would give).
        layers: the language-model layers averaged (None: all).
    """

    mass: np.ndarray
    area: np.ndarray
    layers: tuple[int, ...] | None

    @property
    def ratio(self) -> float:
        """Mean mass over mean area share: how many times more than chance."""
        return float(self.mass.mean() / self.area.mean())

    @property
    def median_ratio(self) -> float:
        """The median over scenes of mass / area share."""
        return float(np.median(self.mass / self.area))

    def __repr__(self) -> str:
        return (
            f"BoxAttention({len(self.mass)} scenes: mass in box {self.mass.mean():.1%} vs area "
            f"{self.area.mean():.1%}, ratio {self.ratio:.1f}x, median {self.median_ratio:.1f}x)"
        )


def box_attention(
    vlm: Any,
    scenes: Sequence[dict[str, Any]],
    *,
    max_num: int = 6,
    layers: Sequence[int] | None = None,
) -> BoxAttention:
    """Measure :class:`BoxAttention` over the ``scenes`` that have a box.

    For each scene: the answer is teacher-forced under :func:`vltools.attention.capture`; the
    first answer token's attention over the image tokens is laid on the original pixels through
    the tile grid (the tiles' map and the thumbnail's map, mixed by the attention each got), and
    the share inside ``box`` is compared with the box's share of the area.
    """
    from vltools.attention import capture
    from vltools.images import load_image

    masses, areas = [], []
    for scene in scenes:
        if scene["box"] is None:
            continue
        tiled = load_image(scene["image"], max_num=max_num)
        with capture(vlm, tiled, layers=layers, vision=False) as cap:
            maps = cap.teacher_force(scene["question"], scene["answer"])
        image_map = maps.map(0, tokens=0)
        blend = None
        if tiled.grid.has_thumbnail:
            per_tile = image_map.per_tile  # [tiles, 16, 16], the thumbnail last
            blend = float(per_tile[-1].sum() / max(per_tile.sum(), 1e-12))
            pixels = image_map.pixels(blend=blend)
        else:
            pixels = image_map.pixels()
            pixels = pixels / max(float(pixels.sum()), 1e-12)
        left, top, right, bottom = scene["box"]
        masses.append(float(pixels[top:bottom, left:right].sum()))
        areas.append((right - left) * (bottom - top) / (pixels.shape[0] * pixels.shape[1]))
    return BoxAttention(
        np.array(masses), np.array(areas), None if layers is None else tuple(layers)
    )
