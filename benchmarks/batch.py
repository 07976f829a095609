"""Tokens per second of ``batch_chat`` on 4 single-image samples against 4 sequential ``chat``s.

Each sample is one image at ``max_num=1`` (one tile), and every answer is exactly 64 new tokens
(``min_new_tokens = max_new_tokens = 64``, greedy), so both sides generate the same amount.
The baseline is four ``VLModel.chat`` calls one after the other; vltools is one
``VLModel.batch_chat`` call (left-padded batch of 4). The cost is wall seconds for the 256
tokens; ratio = sequential / batched = the gain in tokens per second. The table also gives
each side's CPU seconds (process time), which other load on a shared machine disturbs less.

Full run: the full-size random-weight InternVL2-1B checkpoint on the CPU in float32, what
``load_model`` picks on a CPU (``--dtype bfloat16`` to change). ``--quick``: the tiny
checkpoint. Run as
``python -m benchmarks.batch [--quick]``.
"""

from __future__ import annotations

import statistics
import sys
import time

from benchmarks._common import machine, parser, result_line, table

QUESTIONS = (
    "Describe the image in detail.",
    "What is in the picture?",
    "Write a caption for this image.",
    "What colours do you see?",
)
TARGET = 1.5


def _images():
    """Four one-tile images (sample photos, or random tiles if tiling is not available)."""
    import torch

    try:
        from vltools.data import sample
        from vltools.images import load_image

        names = ("photo_cat.jpg", "photo_coffee.jpg", "photo_rocket.jpg", "photo_astronaut.jpg")
        return [load_image(sample(n), max_num=1).pixel_values for n in names], "sample photos"
    except (ImportError, FileNotFoundError, ValueError):
        g = torch.Generator().manual_seed(0)
        return [torch.randn(1, 3, 448, 448, generator=g) for _ in range(4)], "random tiles"


def main() -> None:
    args = parser(__doc__.splitlines()[0])
    args.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args.add_argument("--repeats", type=int, default=None)
    opts = args.parse_args()
    import torch

    from vltools.models import load_model
    from vltools.testing import full_size_checkpoint, tiny_checkpoint

    path = tiny_checkpoint() if opts.quick else full_size_checkpoint()
    dtype = "float32" if opts.quick else opts.dtype
    repeats = opts.repeats or (1 if opts.quick else 3)
    new_tokens = 64
    model = load_model(str(path), device="cpu", dtype=dtype)
    images, what = _images()
    pixels = torch.cat(images)
    gen = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    model.chat(None, "Hi", {"max_new_tokens": 2})  # warm-up

    def sequential() -> None:
        for q, image in zip(QUESTIONS, images, strict=True):
            model.chat(image, q, gen)

    def batched() -> None:
        model.batch_chat(pixels, list(QUESTIONS), gen, num_patches_list=[1, 1, 1, 1])

    seq, bat, seq_cpu, bat_cpu = [], [], [], []
    for _ in range(repeats):  # interleaved
        for fn, out, cpu in ((sequential, seq, seq_cpu), (batched, bat, bat_cpu)):
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            out.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
            print(f"{fn.__name__}: {out[-1]:.1f} s", file=sys.stderr, flush=True)
    seq_s, bat_s = statistics.median(seq), statistics.median(bat)
    total = new_tokens * len(QUESTIONS)
    rows = [
        {"way": "4 x chat (card)", "seconds": seq_s, "tokens": total, "tokens/s": total / seq_s,
         "CPU seconds": statistics.median(seq_cpu)},
        {"way": "batch_chat", "seconds": bat_s, "tokens": total, "tokens/s": total / bat_s,
         "CPU seconds": statistics.median(bat_cpu)},
    ]  # fmt: skip
    print(f"batch: {'tiny' if opts.quick else 'full-size random'} checkpoint, {dtype}, "
          f"4 samples x 1 tile ({what}), {new_tokens} new tokens each, median of {repeats}")  # fmt: skip
    print(machine())
    print(table(rows, list(rows[0])))
    print(result_line("batch_tokens_per_s", baseline=seq_s, ours=bat_s, unit="s", target=TARGET))


if __name__ == "__main__":
    main()
