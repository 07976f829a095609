"""Rows per second of ``Experiment.run`` against one ``VLModel.chat`` per cell, and on Ray.

16 single-image samples (generated 448x448 pictures, one question each) at ``max_num=1``, every
answer exactly 16 new tokens (``min_new_tokens = max_new_tokens = 16``, greedy), one prompt and
one setting: 16 cells.

(1) The baseline is the card's way and the old ``prompt_grid``'s: per cell, ``load_image`` then
one ``VLModel.chat``. vltools is ``Experiment.run(model)`` in-process (batches of
``--batch-size``, tiling on background threads, rows kept in memory). Cost: wall seconds for the
16 cells; ratio = baseline / vltools = the gain in rows per second. Target 2.5.

(2) The same experiment on a local Ray with one model worker (``engine="ray"``, a fresh store)
against the in-process run. The local Ray is started first and its start-up is reported on its
own; the Ray run still includes its actor loading the model, so the in-process side is given
its ``load_model`` too. ratio = in-process / Ray; the target is Ray at most 1.3x in-process,
i.e. ratio >= 1/1.3.

Full run: the full-size random-weight InternVL2-1B checkpoint on the CPU in float32.
``--quick``: the tiny checkpoint. Run as ``python -m benchmarks.experiments [--quick]``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import machine, parser, result_line, table

SAMPLES = 16
NEW_TOKENS = 16
TARGET_BATCHED = 2.5
TARGET_RAY = round(1 / 1.3, 3)


def _samples(folder: Path) -> list[dict]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(SAMPLES):
        pixels = rng.integers(0, 256, size=(448, 448, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"s{i:02d}.png")
        rows.append(
            {"image": str(folder / f"s{i:02d}.png"), "question": f"What is in picture {i}?"}
        )
    return rows


def main() -> None:
    args = parser(__doc__.splitlines()[0])
    args.add_argument("--repeats", type=int, default=None)
    args.add_argument("--batch-size", type=int, default=8)
    args.add_argument("--no-ray", action="store_true", help="skip part (2)")
    opts = args.parse_args()

    from vltools.experiments import Experiment
    from vltools.images import load_image
    from vltools.models import load_model
    from vltools.testing import full_size_checkpoint, tiny_checkpoint

    path = str(tiny_checkpoint() if opts.quick else full_size_checkpoint())
    repeats = opts.repeats or (1 if opts.quick else 2)
    folder = Path(tempfile.mkdtemp())
    rows = _samples(folder)
    gen = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}
    start = time.perf_counter()
    model = load_model(path, device="cpu", dtype="float32")
    load_s = time.perf_counter() - start
    model.chat(None, "Hi", {"max_new_tokens": 2})  # warm-up

    def per_cell() -> None:
        for r in rows:
            model.chat(load_image(r["image"], max_num=1).pixel_values, r["question"], gen)

    def experiment() -> None:
        exp = Experiment(rows, prompts={"q": "{question}"}, settings={"s": {"max_num": 1, **gen}})
        exp.run(model, batch_size=opts.batch_size, progress=False)

    base, ours = [], []
    for _ in range(repeats):  # interleaved
        for fn, out in ((per_cell, base), (experiment, ours)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
            print(f"{fn.__name__}: {out[-1]:.1f} s", file=sys.stderr, flush=True)
    base_s, ours_s = statistics.median(base), statistics.median(ours)
    table_rows = [
        {"way": "load_image + chat per cell (card)", "seconds": base_s, "rows/s": SAMPLES / base_s},
        {"way": f"Experiment.run (batch {opts.batch_size})", "seconds": ours_s, "rows/s": SAMPLES / ours_s},
    ]  # fmt: skip
    lines = [result_line("experiment_rows_per_s", baseline=base_s, ours=ours_s, unit="s", target=TARGET_BATCHED)]  # fmt: skip

    if not opts.no_ray:
        import ray

        from vltools.cluster import run_on_ray, start_local

        start = time.perf_counter()
        start_local(num_workers=1)
        up_s = time.perf_counter() - start
        try:
            ray_s = []
            for n in range(repeats):
                exp = Experiment(
                    rows, prompts={"q": "{question}"}, settings={"s": {"max_num": 1, **gen}},
                    output=folder / f"ray-{n}",
                )  # fmt: skip
                start = time.perf_counter()
                run_on_ray(exp, path, num_workers=1, batch_size=opts.batch_size, progress=False)
                ray_s.append(time.perf_counter() - start)
                print(f"ray: {ray_s[-1]:.1f} s", file=sys.stderr, flush=True)
        finally:
            ray.shutdown()
        ray_med = statistics.median(ray_s)
        table_rows += [
            {"way": "local Ray start-up (once)", "seconds": up_s, "rows/s": ""},
            {"way": "in-process incl. load_model", "seconds": ours_s + load_s, "rows/s": SAMPLES / (ours_s + load_s)},
            {"way": "Ray, 1 worker (incl. its model load)", "seconds": ray_med, "rows/s": SAMPLES / ray_med},
        ]  # fmt: skip
        lines.insert(0, result_line("experiment_ray_vs_in_process", baseline=ours_s + load_s, ours=ray_med, unit="s", target=TARGET_RAY))  # fmt: skip

    print(f"experiments: {'tiny' if opts.quick else 'full-size random'} checkpoint, float32, "
          f"{SAMPLES} samples x 1 tile, {NEW_TOKENS} new tokens each, median of {repeats}; "
          f"load_model {load_s:.1f} s")  # fmt: skip
    print(machine())
    print(table(table_rows, list(table_rows[0])))
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
