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

(3) Where the time goes, measured in the same run with forward hooks (:class:`StageClock`): for
one cell (``load_image`` + ``chat``) and for one batch of ``--batch-size`` cells
(``batch_chat``), the seconds per cell in tiling, the vision tower (with its projector), the
language model's prefill (the first forward of ``generate``), its decode steps and the rest
(tokenising, embedding, sampling). Batching shares each decode step's weight reads across the
rows; tiling, the vision tower and prefill are compute and cost the same per row in a batch.
So if decoding became free, the per-cell floor of the batched path is its vision + prefill +
rest per cell, and **the Amdahl bound** on the batching gain is (the single cell's total) / (that
floor); a cautious second bound takes the batch's vision + prefill to cost per row what one
cell's do (:func:`amdahl`). The bounds for longer answers is projected from the measured per-step decode costs, and
``--long N`` also measures one batch of cells at N new tokens side by side with one ``chat``
per cell.

Full run: the full-size random-weight InternVL2-1B checkpoint on the CPU in float32.
``--quick``: the tiny checkpoint. Run as ``python -m benchmarks.experiments [--quick]``.
"""

from __future__ import annotations

import json
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


class StageClock:
    """Seconds spent in the vision tower, the LM's prefill and its decode steps, by hooks.

    The vision tower and projector run before ``generate`` (vltools computes the image
    features itself); every forward of the top-level model inside ``generate`` is one step,
    a prefill when it sees more than one position and a decode step otherwise.
    """

    def __init__(self, vlm):
        self.vlm = vlm
        self.seconds = {"vision": 0.0, "prefill": 0.0, "decode": 0.0}
        self.steps = 0
        self._start: dict[str, float] = {}
        self._handles = []

    def __enter__(self) -> StageClock:
        inner = self.vlm.model.model
        for module in (inner.vision_tower, inner.multi_modal_projector):
            self._handles.append(module.register_forward_pre_hook(self._pre("vision")))
            self._handles.append(module.register_forward_hook(self._post("vision")))
        top = self.vlm.model
        self._handles.append(top.register_forward_pre_hook(self._step_pre, with_kwargs=True))
        self._handles.append(top.register_forward_hook(self._step_post))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()

    def _pre(self, stage):
        def hook(module, args):
            self._start[stage] = time.perf_counter()

        return hook

    def _post(self, stage):
        def hook(module, args, output):
            self.seconds[stage] += time.perf_counter() - self._start.pop(stage)

        return hook

    def _step_pre(self, module, args, kwargs):
        tensor = kwargs.get("inputs_embeds")
        if tensor is None:
            tensor = kwargs.get("input_ids")
        stage = "prefill" if tensor is not None and tensor.shape[1] > 1 else "decode"
        self._start["step"] = time.perf_counter()
        self._start["stage"] = stage

    def _step_post(self, module, args, output):
        stage = self._start.pop("stage")
        self.seconds[stage] += time.perf_counter() - self._start.pop("step")
        self.steps += stage == "decode"


def split(model, rows, gen, *, batch: int) -> dict[str, dict[str, float]]:
    """Seconds per cell by stage: one cell at a time (the first three cells) and one batch."""
    from vltools.images import load_image

    out = {}
    for name, group in (("one cell", rows[:3]), (f"batch of {batch}", rows[:batch])):
        tiling = total = 0.0
        with StageClock(model) as clock:
            if name == "one cell":
                for r in group:
                    start = time.perf_counter()
                    pv = load_image(r["image"], max_num=1).pixel_values
                    tiling += time.perf_counter() - start
                    model.chat(pv, r["question"], gen)
                    total += time.perf_counter() - start
            else:
                import torch

                start = time.perf_counter()
                pv = torch.cat([load_image(r["image"], max_num=1).pixel_values for r in group])
                tiling = time.perf_counter() - start
                model.batch_chat(pv, [r["question"] for r in group], gen, num_patches_list=[1] * len(group))  # fmt: skip
                total = time.perf_counter() - start
        n = len(group)
        stages = {"tiling": tiling / n, **{k: v / n for k, v in clock.seconds.items()}}
        stages["rest"] = total / n - sum(stages.values())
        stages["total"] = total / n
        rows_per_step = 1 if name == "one cell" else n
        stages["decode per row-step"] = (
            clock.seconds["decode"] / max(clock.steps, 1) / rows_per_step
        )
        out[name] = stages
    return out


def amdahl(
    single: dict[str, float], batched: dict[str, float], *, new_tokens: int
) -> dict[str, float]:
    """The batching gain at ``new_tokens`` per answer, projected from the split, and two bounds.

    Per cell one at a time: tiling + vision + prefill + rest + (new_tokens - 1) decode steps.
    Batched, per cell (tiling overlapped on background threads): vision + prefill + rest + its
    share of each decode step of the batch. ``bound`` is the gain if decoding became free;
    ``bound, compute as single`` also takes the batch's vision + prefill + rest to cost per row
    what one cell's do (batching saves nothing on compute), the cautious reading of a noisy
    machine. ``gain, compute as single`` is the gain at the measured batched decode cost under
    that same assumption.
    """
    steps = new_tokens - 1  # the first new token comes out of the prefill
    compute_one = single["vision"] + single["prefill"] + single["rest"]
    fixed_one = single["tiling"] + compute_one
    fixed_batched = batched["vision"] + batched["prefill"] + batched["rest"]
    one = fixed_one + steps * single["decode per row-step"]
    return {
        "new tokens": new_tokens,
        "gain": one / (fixed_batched + steps * batched["decode per row-step"]),
        "bound": one / fixed_batched,
        "gain, compute as single": one / (compute_one + steps * batched["decode per row-step"]),
        "bound, compute as single": one / compute_one,
    }


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
    args.add_argument(
        "--long",
        type=int,
        default=0,
        metavar="N",
        help="also measure one batch of cells at N new tokens against chat per cell",
    )
    args.add_argument("--split-only", action="store_true",
                      help="only part (3), the split and its bound (a loaded machine)")  # fmt: skip
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
    # warm-up: the vision tower, a prefill and decode steps once each, and a batch, so that no
    # side pays first-call costs (allocations, kernel selection)
    warm = load_image(rows[0]["image"], max_num=1).pixel_values
    model.chat(warm, "Hi", {"max_new_tokens": 2})
    model.batch_chat(warm.repeat(2, 1, 1, 1), ["Hi", "Hello"], {"max_new_tokens": 2}, num_patches_list=[1, 1])  # fmt: skip

    def per_cell() -> None:
        for r in rows:
            model.chat(load_image(r["image"], max_num=1).pixel_values, r["question"], gen)

    def experiment() -> None:
        exp = Experiment(rows, prompts={"q": "{question}"}, settings={"s": {"max_num": 1, **gen}})
        exp.run(model, batch_size=opts.batch_size, progress=False)

    base, ours = [], []
    for _ in range(0 if opts.split_only else repeats):  # interleaved
        for fn, out in ((per_cell, base), (experiment, ours)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
            print(f"{fn.__name__}: {out[-1]:.1f} s", file=sys.stderr, flush=True)
    table_rows, lines = [], []
    if not opts.split_only:
        base_s, ours_s = statistics.median(base), statistics.median(ours)
        table_rows = [
            {"way": "load_image + chat per cell (card)", "seconds": base_s, "rows/s": SAMPLES / base_s},
            {"way": f"Experiment.run (batch {opts.batch_size})", "seconds": ours_s, "rows/s": SAMPLES / ours_s},
        ]  # fmt: skip
        lines = [result_line("experiment_rows_per_s", baseline=base_s, ours=ours_s, unit="s", target=TARGET_BATCHED)]  # fmt: skip

    if not opts.no_ray and not opts.split_only:
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

    # (3) where the time goes, and what batching can give on this machine
    stages = split(model, rows, gen, batch=opts.batch_size)
    names = ["tiling", "vision", "prefill", "decode", "rest", "total", "decode per row-step"]
    split_rows = [{"per cell, s": way, **{k: v[k] for k in names}} for way, v in stages.items()]
    single, batched = stages["one cell"], stages[f"batch of {opts.batch_size}"]
    bound_rows = [
        amdahl(single, batched, new_tokens=n)
        for n in sorted({NEW_TOKENS, 64, 128, opts.long or NEW_TOKENS})
    ]
    headline = amdahl(single, batched, new_tokens=NEW_TOKENS)
    lines.insert(0, json.dumps({"name": "experiment_amdahl_bound", "new_tokens": NEW_TOKENS, "bound": round(headline["bound"], 3), "bound_compute_as_single": round(headline["bound, compute as single"], 3), "target": TARGET_BATCHED}))  # fmt: skip

    if opts.long and not opts.split_only:
        long_gen = {**gen, "max_new_tokens": opts.long, "min_new_tokens": opts.long}
        few = rows[: opts.batch_size]

        def per_cell_long() -> None:
            for r in few:
                model.chat(load_image(r["image"], max_num=1).pixel_values, r["question"], long_gen)

        def experiment_long() -> None:
            exp = Experiment(few, prompts={"q": "{question}"}, settings={"s": {"max_num": 1, **long_gen}})  # fmt: skip
            exp.run(model, batch_size=opts.batch_size, progress=False)

        long_s = {}
        for fn in (per_cell_long, experiment_long):
            start = time.perf_counter()
            fn()
            long_s[fn.__name__] = time.perf_counter() - start
            print(f"{fn.__name__}: {long_s[fn.__name__]:.1f} s", file=sys.stderr, flush=True)
        table_rows += [
            {"way": f"load_image + chat per cell, {len(few)} cells x {opts.long} tokens", "seconds": long_s["per_cell_long"], "rows/s": len(few) / long_s["per_cell_long"]},
            {"way": f"Experiment.run, {len(few)} cells x {opts.long} tokens", "seconds": long_s["experiment_long"], "rows/s": len(few) / long_s["experiment_long"]},
        ]  # fmt: skip
        lines.insert(0, result_line(f"experiment_rows_per_s_{opts.long}_tokens", baseline=long_s["per_cell_long"], ours=long_s["experiment_long"], unit="s", target=TARGET_BATCHED))  # fmt: skip

    print(f"experiments: {'tiny' if opts.quick else 'full-size random'} checkpoint, float32, "
          f"{SAMPLES} samples x 1 tile, {NEW_TOKENS} new tokens each, median of {repeats}; "
          f"load_model {load_s:.1f} s")  # fmt: skip
    print(machine())
    if table_rows:
        print(table(table_rows, list(table_rows[0])))
    print(
        "\nwhere the time goes (seconds per cell; decode per row-step = one row's share of a step)"
    )
    print(table(split_rows, list(split_rows[0])))
    print("\nbatching gain on this machine, projected from the split, and its Amdahl bound")
    print(table(bound_rows, list(bound_rows[0])))
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
