"""Time to first token of follow-up turns: vltools' Chat (cached) against the card's way.

One image at ``max_num=6`` (7 tiles), three turns. The card's way is ``VLModel.chat`` with the
history, the same native model: every turn re-encodes the image with the vision tower and
re-reads the whole conversation. ``vltools.Chat`` keeps the image's projected features and the
key/value cache, so turn 2 and turn 3 only prefill their new tokens. Both sides generate the
same number of tokens per turn (``min_new_tokens`` = ``max_new_tokens``, greedy; 8 by default).
The random checkpoint's answers are mostly ``<|vltools_unused_N|>`` tokens, whose decoded text
re-tokenizes into ~20 tokens each, so turn 2 prefills far more tokens than a real model would
(the ``prefilled`` column); vltools still reuses the cache up to the common prefix. The
table also gives the CPU seconds (process time) to the first token, which other load on a
shared machine disturbs less than wall time.

Full run: the full-size random-weight InternVL2-1B checkpoint (``full_size_checkpoint()``) on
the CPU in float32, what ``load_model`` picks on a CPU (``--dtype bfloat16`` to change).
``--quick``: the tiny checkpoint, to check the plumbing in seconds. Run as
``python -m benchmarks.multiturn [--quick]``.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from benchmarks._common import machine, parser, result_line, table

QUESTIONS = (
    "Please describe the image in detail.",
    "Please write a poem according to the image.",
    "Which colours stand out?",
)
TARGET = 20.0


class FirstToken:
    """A generate() streamer that records when the first new token arrives."""

    def __init__(self) -> None:
        self.calls = 0
        self.first: float | None = None

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2 and self.first is None:  # call 1 is the prompt
            self.first = time.perf_counter()
            self.first_cpu = time.process_time()

    def end(self) -> None:
        pass


def _image(max_num: int):
    """7 tiles of a sample photo (or random tiles if tiling is not available)."""
    try:
        from vltools.data import sample
        from vltools.images import load_image

        for name in ("photo_cat.jpg", "photo_coffee.jpg", "photo_rocket.jpg"):
            tiled = load_image(sample(name), max_num=max_num)
            if tiled.num_tiles == max_num + 1:
                return tiled.pixel_values, name
    except (ImportError, FileNotFoundError, ValueError):
        pass
    import torch

    return torch.randn(
        max_num + 1, 3, 448, 448, generator=torch.Generator().manual_seed(0)
    ), "random"


def card_conversation(model, pixels, new_tokens: int) -> list[dict[str, float]]:
    """The card's way: chat() with the history, the pixels re-sent every turn."""
    history, out = None, []
    for q in QUESTIONS:
        streamer = FirstToken()
        start_cpu = time.process_time()
        gen = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False,
               "streamer": streamer}  # fmt: skip
        start = time.perf_counter()
        question = q if history else f"<image>\n{q}"
        _, history = model.chat(pixels, question, gen, history=history, return_history=True)
        out.append({"ttft": streamer.first - start, "total": time.perf_counter() - start,
                    "cpu": streamer.first_cpu - start_cpu})  # fmt: skip
    return out


def vltools_conversation(model, pixels, new_tokens: int) -> list[dict[str, float]]:
    """vltools' Chat: features and key/value cache kept across turns."""
    from vltools.chat import Chat

    chat = Chat(model, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    out = []
    for i, q in enumerate(QUESTIONS):
        streamer = FirstToken()
        start_cpu = time.process_time()
        reply = chat.ask(q, images=[pixels] if i == 0 else None, streamer=streamer)
        out.append({"ttft": reply.ttft_s, "total": reply.total_s, "prompt": reply.prompt_tokens,
                    "cached": reply.cached_tokens, "cpu": streamer.first_cpu - start_cpu})  # fmt: skip
    return out


def main() -> None:
    args = parser(__doc__.splitlines()[0])
    args.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args.add_argument("--repeats", type=int, default=None)
    args.add_argument("--new-tokens", type=int, default=8, help="generated per turn (forced)")
    opts = args.parse_args()
    from vltools.models import load_model
    from vltools.testing import full_size_checkpoint, tiny_checkpoint

    path = tiny_checkpoint() if opts.quick else full_size_checkpoint()
    dtype = "float32" if opts.quick else opts.dtype
    repeats = opts.repeats or (1 if opts.quick else 3)
    new_tokens = opts.new_tokens
    model = load_model(str(path), device="cpu", dtype=dtype)
    pixels, image_name = _image(6)
    model.chat(None, "Hi", {"max_new_tokens": 2})  # warm-up
    card, ours = [], []
    for k in range(repeats):  # interleaved, so drift hits both sides alike
        card.append(card_conversation(model, pixels, new_tokens))
        ours.append(vltools_conversation(model, pixels, new_tokens))
        print(f"repeat {k + 1}: card {card[-1]}, vltools {ours[-1]}", file=sys.stderr, flush=True)

    rows, med = [], {}
    for turn in range(3):
        c = statistics.median(r[turn]["ttft"] for r in card)
        o = statistics.median(r[turn]["ttft"] for r in ours)
        med[turn] = (c, o)
        rows.append({
            "turn": turn + 1,
            "prompt tokens": ours[0][turn]["prompt"],
            "cached": ours[0][turn]["cached"],
            "prefilled": ours[0][turn]["prompt"] - ours[0][turn]["cached"],
            "card TTFT s": c,
            "vltools TTFT s": o,
            "speed-up": c / o,
            "card CPU s": statistics.median(r[turn]["cpu"] for r in card),
            "vltools CPU s": statistics.median(r[turn]["cpu"] for r in ours),
        })  # fmt: skip
    print(f"multiturn: {'tiny' if opts.quick else 'full-size random'} checkpoint, {dtype}, "
          f"image {image_name} ({pixels.shape[0]} tiles), {new_tokens} new tokens per turn, "
          f"median of {repeats}")  # fmt: skip
    print(machine())
    print(table(rows, list(rows[0])))
    for turn in (1, 2):
        c, o = med[turn]
        print(result_line(f"multiturn_ttft_turn{turn + 1}", baseline=c, ours=o, unit="s",
                          target=TARGET))  # fmt: skip


if __name__ == "__main__":
    main()
