"""The cells of an experiment and the one batched code path that answers them.

A :class:`Cell` is one (sample, prompt, setting): its id, its rendered question and its
options. :func:`prepare` tiles a cell's images or video (CPU work, run on background threads
in-process and as CPU tasks on Ray); :func:`answer_batch` answers a batch of prepared cells
that share a setting with :func:`vltools.generation.model_batch_chat` and returns the rows to
store. Both engines (in-process and Ray) call exactly these two functions.

Greedy cells of a batch are generated together; sampled cells (``do_sample=True``) are
generated one at a time, each under its own seed (derived from the setting's ``seed`` and the
cell id) inside ``torch.random.fork_rng``, so the caller's random state is never touched and an
answer does not depend on which batch the cell landed in. A cell that fails on its input (an
unreadable image, a prompt over the context) gets its error recorded; faults of the machine
(``MemoryError``, out of GPU memory, ``KeyboardInterrupt``) propagate.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vltools._optional import require
from vltools.constants import IMAGE_PLACEHOLDER

if TYPE_CHECKING:  # pragma: no cover
    from vltools.models import VLModel

__all__ = [
    "Cell",
    "Prepared",
    "prepare",
    "answer_batch",
    "cell_seed",
    "TokenCounter",
    "is_machine_fault",
    "FRAME_MAX_NUM",
]

# Video frames are tiled as the card does: one tile per frame.
FRAME_MAX_NUM = 1


@dataclass(frozen=True, eq=False)
class Cell:
    """One cell of an experiment.

    Attributes:
        id: the stable id (:func:`vltools.store.cell_id`).
        sample, prompt, setting: the names of its sample, prompt and setting.
        question: the prompt template filled with the sample's fields.
        references: the sample's reference answers (empty when it has none).
        options: the setting, normalised: ``max_num``, ``system_message``, ``seed`` and
            ``generation`` (the generate options).
        images, video, num_segments: the sample's visual input.
        tiles: the tiles the cell's images cost (None where unknown before tiling).
    """

    id: str
    sample: str
    prompt: str
    setting: str
    question: str
    references: tuple[str, ...]
    options: Mapping[str, Any]
    images: tuple[Any, ...] = field(default=(), repr=False)
    video: str | None = None
    num_segments: int = 8
    tiles: int | None = None

    def group(self) -> tuple[str, int]:
        """Cells batched together share this: the setting and the tile count."""
        return (self.setting, -1 if self.tiles is None else self.tiles)


@dataclass(frozen=True, eq=False)
class Prepared:
    """A cell with its pixels: ``pixel_values [tiles, 3, 448, 448]`` (or None), tiles per image,
    the question as sent (video frames labelled), or the error that stopped it."""

    cell: Cell
    pixel_values: Any = None
    patches: tuple[int, ...] = ()
    text: str = ""
    error: str = ""
    seconds: float = 0.0


def is_machine_fault(error: BaseException) -> bool:
    """True for faults of the machine, which stop a run: out of memory, an interrupt."""
    if isinstance(error, (MemoryError, KeyboardInterrupt, SystemExit)):
        return True
    name = type(error).__name__
    return name in ("OutOfMemoryError", "AcceleratorError") or "out of memory" in str(error)


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0]


def prepare(cell: Cell) -> Prepared:
    """Tile the cell's images (at its ``max_num``) or sample and tile its video."""
    torch = require("torch", purpose="Experiments")
    start = time.perf_counter()
    try:
        pixels, patches = [], []
        text = cell.question
        if cell.video is not None:
            from vltools.video import load_video

            clip = load_video(cell.video, num_segments=cell.num_segments, max_num=FRAME_MAX_NUM)
            pixels.append(clip.pixel_values)
            patches += list(clip.num_tiles)
            if IMAGE_PLACEHOLDER not in text:
                text = clip.prompt_prefix() + text
        for item in cell.images:
            tensor = _tiled(item, int(cell.options["max_num"]), torch)
            pixels.append(tensor)
            patches.append(int(tensor.shape[0]))
        if not text.strip():
            raise ValueError(
                f"The question of cell {cell.id} ({cell.sample}, {cell.prompt}) is empty; give "
                "the sample a question or a prompt with text."
            )
        pv = torch.cat(pixels) if len(pixels) > 1 else (pixels[0] if pixels else None)
        return Prepared(cell, pv, tuple(patches), text, "", time.perf_counter() - start)
    except Exception as e:
        if is_machine_fault(e):
            raise
        return Prepared(cell, error=_error(e), seconds=time.perf_counter() - start)


def _tiled(item: Any, max_num: int, torch: Any) -> Any:
    if isinstance(item, torch.Tensor):
        return item  # already tiles [tiles, 3, 448, 448]
    pixels = getattr(item, "pixel_values", None)
    if isinstance(pixels, torch.Tensor):
        return pixels  # a TiledImage keeps its own tiling
    from vltools.images import load_image

    return load_image(item, max_num=max_num).pixel_values


def cell_seed(cell: Cell) -> int:
    """The cell's seed: the setting's ``seed`` (0 if none) mixed with the cell id."""
    text = f"{cell.options.get('seed') or 0}/{cell.id}"
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def answer_batch(vlm: VLModel, batch: Sequence[Prepared]) -> list[dict[str, Any]]:
    """Answer prepared cells that share one setting; one stored row per cell, in order."""
    torch = require("torch", purpose="Experiments")
    rows: dict[str, dict[str, Any]] = {}
    ready = [p for p in batch if not p.error]
    for p in batch:
        if p.error:
            rows[p.cell.id] = _row(p, error=p.error, seconds=p.seconds)
    if ready:
        options = ready[0].cell.options
        if any(p.cell.options != options for p in ready):
            raise ValueError("answer_batch got cells of different settings; group them first.")
        model = vlm
        if options.get("system_message") is not None:
            model = vlm.with_facts(system_message=str(options["system_message"]))
        generation = dict(options.get("generation") or {})
        sampled = bool(generation.get("do_sample"))
        groups = [[p] for p in ready] if sampled else [ready]
        for group in groups:
            for p, (answer, tokens, error, seconds) in zip(
                group, _generate_group(model, group, generation, torch), strict=True
            ):
                rows[p.cell.id] = _row(
                    p, answer=answer, tokens=tokens, error=error, seconds=seconds + p.seconds,
                    vlm=model,
                )  # fmt: skip
    return [rows[p.cell.id] for p in batch]


def _generate_group(model: Any, group: Sequence[Prepared], generation: dict, torch: Any) -> list:
    """``(answer, tokens, error, seconds)`` per cell; the group as one batch, or cell by cell
    when the batch fails (to find the failing cell)."""
    start = time.perf_counter()
    try:
        answers, tokens = _call(model, group, generation, torch)
        each = (time.perf_counter() - start) / len(group)
        return [(a, n, "", each) for a, n in zip(answers, tokens, strict=True)]
    except Exception as e:
        if is_machine_fault(e):
            raise
        if len(group) == 1:
            return [("", None, _error(e), time.perf_counter() - start)]
    out = []  # isolate the failing cell(s)
    for p in group:
        out += _generate_group(model, [p], generation, torch)
    return out


class TokenCounter:
    """A ``generate`` streamer that counts each row's new tokens up to its first stop token."""

    def __init__(self, stop_id: int):
        self.stop_id = stop_id
        self.counts: list[int] | None = None
        self.done: list[bool] = []
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() first puts the prompt
            self.prompt_seen = True
            return
        ids = value.reshape(-1).tolist()  # one new token per row
        if self.counts is None:
            self.counts, self.done = [0] * len(ids), [False] * len(ids)
        for i, t in enumerate(ids):
            if not self.done[i]:
                self.counts[i] += 1
                self.done[i] = int(t) == self.stop_id

    def end(self) -> None:
        pass


def _call(
    model: Any, group: Sequence[Prepared], generation: dict, torch: Any
) -> tuple[list[str], list[int]]:
    pixels = [p.pixel_values for p in group if p.pixel_values is not None]
    pv = torch.cat(pixels) if pixels else None
    patches = [list(p.patches) if len(p.patches) != 1 else p.patches[0] for p in group]
    patches = [0 if (isinstance(n, list) and not n) else n for n in patches]
    questions = [p.text for p in group]
    counter = TokenCounter(model.im_end_id)
    options = {**generation, "streamer": counter}
    if len(group) == 1 and generation.get("do_sample"):
        devices = [model.device] if model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(cell_seed(group[0].cell))
            answers = model.batch_chat(pv, questions, options, num_patches_list=patches)
    else:
        answers = model.batch_chat(pv, questions, options, num_patches_list=patches)
    return answers, list(counter.counts or [0] * len(group))


def _row(
    p: Prepared,
    *,
    answer: str = "",
    tokens: int | None = None,
    error: str = "",
    seconds: float = 0.0,
    vlm: Any = None,
) -> dict[str, Any]:
    cell = p.cell
    prompt_tokens = None
    if vlm is not None and not error:
        tok = vlm.tokenizer
        from vltools.generation import batch_prompts

        (prompt,) = batch_prompts(vlm, [p.text], [list(p.patches)])
        prompt_tokens = len(tok(prompt.text, add_special_tokens=False)["input_ids"])
    return {
        "id": cell.id,
        "sample": cell.sample,
        "prompt": cell.prompt,
        "setting": cell.setting,
        "question": cell.question,
        "answer": answer,
        "references": json.dumps(list(cell.references), ensure_ascii=False),
        "error": error,
        "tokens": tokens,
        "seconds": round(float(seconds), 6),
        "tiles": int(sum(p.patches)) if p.patches else (0 if not error else cell.tiles),
        "prompt_tokens": prompt_tokens,
    }
