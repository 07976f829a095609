"""Attention capture: peak memory and time against ``generate(output_attentions=True)``.

Question (attention-maps issue): capturing every generated token's attention to the image, for
all 24 layers and 14 heads, on one image at ``max_num=6`` (7 tiles, about 1,900 tokens) with 16
generated tokens, how much extra peak memory and time does ``vltools.attention.capture`` cost,
compared with the naive ``generate(output_attentions=True)`` (which keeps every layer's full
``[heads, seq, seq]`` prefill tensor) and with plain generation without capture?

Each method runs once, in a fresh process of its own, on the full-size random-weight
checkpoint (``vltools.testing.full_size_checkpoint()``), CPU, float32, greedy decoding forced
to 16 tokens. After loading and a warm-up generation of 2 tokens on the same prompt (the first
full-size run pays one-off costs), the process resets its peak-RSS counter
(``/proc/self/clear_refs``), runs the method, and reports ``VmHWM - VmRSS before``: the extra
peak of the run. "Extra" below is that minus plain generation's, i.e. what capturing adds.
The vltools capture also records the vision tower's CLS attention (all 24 layers). Each
process then times plain generation once more, so every method's time is compared with a
plain run under the same machine load ("x plain"); the time line uses the capture process's.

``--long`` measures only the capture over a prompt padded with text to 4,000 tokens (one image,
8 generated tokens) against plain generation: extra peak memory, target at most 1.5 x plain's,
counted three ways side by side (see :func:`long_context`; ``--ways`` picks some): allocations
(live torch tensors from the profiler's memory events plus numpy/Python via ``tracemalloc``,
plain then capture in one process), peak RSS in a fresh process per method with glibc's mmap
threshold fixed, and peak RSS in a fresh process per method under glibc's default malloc (what
a user's process sees). To keep it to one 4,000-token prefill per measured run, its warm-up is
a short text-only generation (through the capture for the capture) and it skips the second
timing.

``--quick`` runs the same on the tiny checkpoint with 4 tokens: it checks the script, its
numbers mean nothing.

Lines printed last: the time question (ratio = plain time / capture time, floor 1/1.5), then
the headline (ratio = naive extra peak / capture extra peak, floor 10).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from benchmarks._common import machine, parser, result_line, run_child, table

IMAGE = "photo_coffee.jpg"  # 600 x 400: a 3 x 2 grid + thumbnail = 7 tiles at max_num=6
QUESTION = "Describe the image in detail."
METHODS = ("plain", "capture", "naive")
LONG = 4000  # --long: prompt tokens of the long-context capture
PADDING = "The cup stands on a wooden table by the window. "  # text that pads the prompt

_CHILD = "import sys; from benchmarks.attention import child; child(*sys.argv[1:])"
_ALLOC_CHILD = (
    "import sys; from benchmarks.attention import alloc_child; alloc_child(*sys.argv[1:])"
)


def _memory() -> dict[str, int]:
    """VmRSS and VmHWM of this process in MiB (Linux)."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) // 1024
    return values


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def _setup(model: str, max_num: str, length: str) -> tuple[Any, Any, dict[str, Any], int]:
    """The model, the image, ``generate`` keyword arguments and the prompt's length in tokens.

    ``length`` > 0 pads the question with text until the prompt has at least that many tokens.
    """
    import torch

    import vltools
    from vltools.data import sample
    from vltools.prompts import chat_query
    from vltools.testing import full_size_checkpoint

    torch.manual_seed(0)
    source = str(full_size_checkpoint()) if model == "full" else "tiny"
    vlm = vltools.load_model(source, device="cpu", dtype="float32")
    tiled = vltools.load_image(sample(IMAGE), max_num=int(max_num))
    question = QUESTION
    while True:
        prompt = chat_query(
            question,
            num_patches_list=[tiled.num_tiles],
            system_message=vlm.system_message,
            tokens_per_tile=vlm.tokens_per_tile,
        )
        enc = vlm.tokenizer(prompt.text, return_tensors="pt", add_special_tokens=False)
        missing = int(length) - int(enc["input_ids"].shape[1])
        if missing <= 0:
            break
        per = len(vlm.tokenizer(PADDING * 20, add_special_tokens=False)["input_ids"]) / 20
        question = PADDING * max(1, int(missing / per)) + question
    kwargs: dict[str, Any] = {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "pixel_values": tiled.pixel_values.to(torch.float32),
        "do_sample": False,
        "eos_token_id": vlm.im_end_id,
        "pad_token_id": vlm.im_end_id,
    }
    return vlm, tiled, kwargs, int(enc["input_ids"].shape[1])


def _run(method: str, vlm: Any, tiled: Any, kwargs: dict[str, Any], tokens: int) -> Any:
    """One generation of ``tokens`` forced tokens by ``method``; returns what it keeps."""
    import torch

    from vltools.attention import capture, eager_language_model

    # random weights may say <|im_end|> early: force the length
    kwargs = {**kwargs, "max_new_tokens": tokens, "min_new_tokens": tokens}
    with torch.no_grad():
        if method == "plain":
            return vlm.model.generate(**kwargs)
        if method == "capture":
            with capture(vlm, tiled) as cap:
                vlm.model.generate(**kwargs)
            return cap.maps
        if method == "naive":
            with eager_language_model(vlm):
                return vlm.model.generate(
                    **kwargs, output_attentions=True, return_dict_in_generate=True
                )
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def _warm_up(method: str, vlm: Any, tiled: Any, kwargs: dict[str, Any], *, long: bool) -> None:
    """First-run costs (imports, shapes, the attention registration) before the measured run.

    Short prompts: 2 tokens of plain generation on the same prompt (a naive warm-up would
    leave gigabytes in malloc's free lists and hide the naive run's peak). Long prompts: a
    short text-only generation through the same method, so there is one 4,000-token prefill
    per measured method.
    """
    if not long:
        _run("plain", vlm, tiled, kwargs, 2)
        return
    from vltools.prompts import chat_query

    short = vlm.tokenizer(
        chat_query("Hi.", system_message=vlm.system_message).text, return_tensors="pt"
    )
    warm = {**kwargs, **dict(short)}
    del warm["pixel_values"]
    _run(method, vlm, None, warm, 2)


def child(method: str, model: str, max_num: str, tokens: str, length: str = "0") -> None:
    """One run measured by peak RSS in this (fresh) process; prints one JSON line."""
    import gc

    import torch

    vlm, tiled, kwargs, prompt_tokens = _setup(model, max_num, length)
    n_new = int(tokens)
    long = int(length) > 0
    _warm_up(method, vlm, tiled, kwargs, long=long)
    gc.collect()
    before = _memory()["VmRSS"]
    _reset_peak()
    start, cpu_start = time.perf_counter(), time.process_time()
    kept = _run(method, vlm, tiled, kwargs, n_new)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = _memory()["VmHWM"]
    # the same process then times plain generation once more: a baseline under the same load
    plain_seconds = float("nan")
    if not long:
        start = time.perf_counter()
        _run("plain", vlm, tiled, kwargs, n_new)
        plain_seconds = time.perf_counter() - start
    info = {
        "method": method,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "plain_seconds_same_process": plain_seconds,
        "before_mib": before,
        "peak_mib": peak,
        "extra_peak_mib": peak - before,
        "prompt_tokens": prompt_tokens,
        "tiles": int(tiled.num_tiles),
        "torch_threads": torch.get_num_threads(),
    }
    if method == "capture":
        info["kept_mib"] = (kept.weights.nbytes + kept.vision.cls.nbytes) / 2**20
        info["shape"] = list(kept.weights.shape)
    print(json.dumps(info))


def _tensor_peak(prof: Any) -> int:
    """Peak bytes of live tensors during a ``profile_memory=True`` profile, above its start.

    The profiler logs every allocation and free of the torch CPU allocator as a ``[memory]``
    event with a signed size; their running sum in time order is the live tensor bytes.
    """
    events = prof.profiler.kineto_results.events()
    sizes = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    live = peak = 0
    for _, size in sizes:
        live += size
        peak = max(peak, live)
    return peak


def alloc_child(model: str, max_num: str, tokens: str, length: str) -> None:
    """Plain generation and the capture side by side in one process, by counted allocations.

    Each method's extra peak is the torch CPU allocator's live-tensor peak (the profiler's
    memory events) plus the peak of numpy and Python allocations (``tracemalloc``; the kept
    maps are numpy), above what was live before the run: page-exact and free of the malloc
    caching and fragmentation that move RSS. Prints one JSON line.
    """
    import gc
    import tracemalloc

    from torch.profiler import ProfilerActivity, profile

    vlm, tiled, kwargs, prompt_tokens = _setup(model, max_num, length)
    for method in ("plain", "capture"):
        _warm_up(method, vlm, tiled, kwargs, long=int(length) > 0)
    info: dict[str, Any] = {"prompt_tokens": prompt_tokens, "tiles": int(tiled.num_patches)}
    for method in ("plain", "capture"):
        gc.collect()
        tracemalloc.start()
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            kept = _run(method, vlm, tiled, kwargs, int(tokens))
        seconds = time.perf_counter() - start
        numpy_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        tensor_peak = _tensor_peak(prof)
        info[method] = {
            "seconds_profiled": seconds,
            "tensor_peak_mib": tensor_peak / 2**20,
            "numpy_peak_mib": numpy_peak / 2**20,
            "extra_peak_mib": (tensor_peak + numpy_peak) / 2**20,
        }
        if method == "capture":
            info[method]["kept_mib"] = (kept.weights.nbytes + kept.vision.cls.nbytes) / 2**20
        del kept, prof
    print(json.dumps(info))


WAYS = ("alloc", "fixed", "default")  # --long: the ways extra peak memory is counted


def long_context(model: str, tokens: str, *, ways: tuple[str, ...] = WAYS) -> None:
    """Capture over a prompt of at least LONG tokens: extra peak memory against plain generate.

    Counted up to three ways (``ways``), side by side in one benchmark run: ``alloc``,
    allocations, plain then capture in one process (:func:`alloc_child`: live torch tensors
    plus numpy); ``fixed``, peak RSS, each method in a fresh process with glibc's mmap
    threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``), so that freed large blocks go back
    to the system instead of staying in the heap where RSS counts them; ``default``, peak RSS,
    each method in a fresh process under glibc's default (dynamic) malloc settings, what a
    user's process sees. The naive method is left out (its 24 layers of ``[14, 4000, 4000]``
    weights would need about 20 GiB). Target: the capture's extra peak at most 1.5 x plain
    generation's, by every way counted.
    """
    bad = [w for w in ways if w not in WAYS]
    if bad or not ways:
        raise ValueError(f"ways={ways!r}: choose one or more of {WAYS}")
    alloc = run_child(_ALLOC_CHILD, model, "6", tokens, str(LONG)) if "alloc" in ways else None
    envs = {"fixed": {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}, "default": None}
    rss = {
        way: {
            m: run_child(_CHILD, m, model, "6", tokens, str(LONG), env=envs[way])
            for m in ("plain", "capture")
        }
        for way in ("fixed", "default")
        if way in ways
    }
    first = next(iter(rss.values()), {}).get("capture", {})
    prompt_tokens = alloc["prompt_tokens"] if alloc else first.get("prompt_tokens")
    tiles = alloc["tiles"] if alloc else first.get("tiles")
    print(
        f"long context: {prompt_tokens} prompt tokens ({tiles} tiles), {tokens} generated; "
        f"kept {first.get('shape')} weights + vision = {first.get('kept_mib', 0):.1f} MiB"
    )
    rows = []
    for m in ("plain", "capture"):
        row: dict[str, Any] = {"method": m}
        if alloc:
            row["tensors MiB"] = alloc[m]["tensor_peak_mib"]
            row["numpy MiB"] = alloc[m]["numpy_peak_mib"]
            row["allocated MiB"] = alloc[m]["extra_peak_mib"]
        for way, label in (("fixed", "RSS fixed mmap MiB"), ("default", "RSS default MiB")):
            if way in rss:
                row[label] = rss[way][m]["extra_peak_mib"]
                row[f"time s ({way})"] = rss[way][m]["seconds"]
        rows.append(row)
    print(table(rows, list(rows[0])))
    lines = []
    if alloc:
        lines.append(("extra peak allocated, tensors + numpy", alloc["plain"], alloc["capture"]))
    names = {
        "fixed": "extra peak RSS, fixed mmap threshold",
        "default": "extra peak RSS, default malloc",
    }
    lines += [(names[way], rss[way]["plain"], rss[way]["capture"]) for way in rss]
    for name, plain, cap in lines:
        print(
            result_line(
                f"attention capture at {prompt_tokens} tokens: {name} (plain / capture)",
                baseline=float(max(plain["extra_peak_mib"], 1)),
                ours=float(max(cap["extra_peak_mib"], 1)),
                unit="MiB",
                target=round(1 / 1.5, 3),
            )
        )


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--long", action="store_true", help=f"only the capture over {LONG} prompt tokens"
    )
    p.add_argument(
        "--ways",
        default=",".join(WAYS),
        help=f"--long: how extra peak memory is counted, comma-separated from {','.join(WAYS)}",
    )
    args = p.parse_args(argv)
    if args.long:
        print(f"machine: {machine()}")
        ways = tuple(w.strip() for w in args.ways.split(",") if w.strip())
        long_context("tiny" if args.quick else "full", "2" if args.quick else "8", ways=ways)
        return
    model, max_num, tokens = ("tiny", "6", "4") if args.quick else ("full", "6", "16")
    print(f"machine: {machine()}")
    print(f"model: {model} checkpoint, CPU, float32; image {IMAGE} at max_num={max_num}")
    runs = {m: run_child(_CHILD, m, model, max_num, tokens) for m in METHODS}
    plain = runs["plain"]
    rows = []
    for m in METHODS:
        r = runs[m]
        rows.append(
            {
                "method": {
                    "plain": "generate (SDPA, no capture)",
                    "capture": "vltools capture (24 LM + 24 ViT layers)",
                    "naive": "generate(output_attentions=True)",
                }[m],
                "time s": r["seconds"],
                "cpu s": r["cpu_seconds"],
                "plain s (same process)": r["plain_seconds_same_process"],
                "x plain": r["seconds"] / r["plain_seconds_same_process"],
                "peak - before MiB": r["extra_peak_mib"],
                "extra over plain MiB": r["extra_peak_mib"] - plain["extra_peak_mib"],
            }
        )
    print(
        f"prompt: {plain['prompt_tokens']} tokens ({plain['tiles']} tiles), {tokens} generated; "
        f"captured rows {runs['capture'].get('shape')} + vision = "
        f"{runs['capture'].get('kept_mib', 0):.1f} MiB kept"
    )
    columns = ["method", "time s", "cpu s", "plain s (same process)", "x plain"]
    print(table(rows, [*columns, "peak - before MiB", "extra over plain MiB"]))
    ours_extra = max(runs["capture"]["extra_peak_mib"] - plain["extra_peak_mib"], 1)
    naive_extra = runs["naive"]["extra_peak_mib"] - plain["extra_peak_mib"]
    print(
        result_line(
            "attention capture time (plain generation / capture)",
            baseline=runs["capture"]["plain_seconds_same_process"],
            ours=runs["capture"]["seconds"],
            unit="s",
            target=round(1 / 1.5, 3),
        )
    )
    print(
        result_line(
            "attention capture extra peak memory (output_attentions / vltools)",
            baseline=float(naive_extra),
            ours=float(ours_extra),
            unit="MiB",
            target=10.0,
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
