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
8 generated tokens) against plain generation: extra peak memory, target at most 1.5 x plain's.
To keep it to one 4,000-token prefill per method its warm-up is a short text-only generation
(through the capture for the capture) and it skips the second timing.

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


def child(method: str, model: str, max_num: str, tokens: str, length: str = "0") -> None:
    """One measured run in this (fresh) process; prints one JSON line.

    ``length`` > 0 pads the question with text until the prompt has at least that many tokens.
    """
    import gc

    import torch

    import vltools
    from vltools.attention import capture, eager_language_model
    from vltools.data import sample
    from vltools.prompts import chat_query
    from vltools.testing import full_size_checkpoint

    torch.manual_seed(0)
    source = str(full_size_checkpoint()) if model == "full" else "tiny"
    vlm = vltools.load_model(source, device="cpu", dtype="float32")
    native = vlm.model
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
    n_new = int(tokens)
    kwargs: dict[str, Any] = {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "pixel_values": tiled.pixel_values.to(torch.float32),
        "max_new_tokens": n_new,
        "min_new_tokens": n_new,  # random weights may say <|im_end|> early: force the length
        "do_sample": False,
        "eos_token_id": vlm.im_end_id,
        "pad_token_id": vlm.im_end_id,
    }
    long = int(length) > 0  # --long: a short warm-up and no second timing (one long prefill)
    if not long:  # warm-up on the same prompt: first-run costs (shapes, allocations)
        with torch.no_grad():
            native.generate(**{**kwargs, "max_new_tokens": 2, "min_new_tokens": 2})
    else:  # warm-up on a short text prompt, through the same method: imports, registrations
        short = vlm.tokenizer(
            chat_query("Hi.", system_message=vlm.system_message).text, return_tensors="pt"
        )
        warm = {**kwargs, **dict(short), "max_new_tokens": 2, "min_new_tokens": 2}
        del warm["pixel_values"]
        with torch.no_grad():
            if method == "capture":
                with capture(vlm, None):
                    native.generate(**warm)
            else:
                native.generate(**warm)
    gc.collect()
    before = _memory()["VmRSS"]
    _reset_peak()
    start, cpu_start = time.perf_counter(), time.process_time()
    kept: Any = None
    with torch.no_grad():
        if method == "plain":
            kept = native.generate(**kwargs)
        elif method == "capture":
            with capture(vlm, tiled) as cap:
                native.generate(**kwargs)
            kept = cap.maps
        elif method == "naive":
            with eager_language_model(vlm):
                kept = native.generate(
                    **kwargs, output_attentions=True, return_dict_in_generate=True
                )
        else:  # pragma: no cover
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = _memory()["VmHWM"]
    # the same process then times plain generation once more: a baseline under the same load
    plain_seconds = float("nan")
    if not long:
        start = time.perf_counter()
        with torch.no_grad():
            native.generate(**kwargs)
        plain_seconds = time.perf_counter() - start
    info = {
        "method": method,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "plain_seconds_same_process": plain_seconds,
        "before_mib": before,
        "peak_mib": peak,
        "extra_peak_mib": peak - before,
        "prompt_tokens": int(enc["input_ids"].shape[1]),
        "tiles": int(tiled.num_tiles),
    }
    if method == "capture":
        info["kept_mib"] = (kept.rows.nbytes + kept.vision.cls.nbytes) / 2**20
        info["shape"] = list(kept.rows.shape)
    print(json.dumps(info))


def long_context(model: str, tokens: str) -> None:
    """Capture over a prompt of at least LONG tokens: extra peak memory against plain generate.

    The naive method is left out (its 24 layers of ``[14, 4000, 4000]`` weights would need
    about 20 GiB). Target: the capture's extra peak at most 1.5 x plain generation's.
    """
    runs = {m: run_child(_CHILD, m, model, "6", tokens, str(LONG)) for m in ("plain", "capture")}
    plain, cap = runs["plain"], runs["capture"]
    print(
        f"long context: {plain['prompt_tokens']} prompt tokens ({plain['tiles']} tiles), "
        f"{tokens} generated; captured rows {cap.get('shape')} = {cap.get('kept_mib', 0):.1f} "
        "MiB kept"
    )
    rows = [
        {"method": m, "time s": r["seconds"], "peak - before MiB": r["extra_peak_mib"]}
        for m, r in runs.items()
    ]
    print(table(rows, ["method", "time s", "peak - before MiB"]))
    print(
        result_line(
            f"attention capture at {plain['prompt_tokens']} tokens: extra peak (plain / capture)",
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
    args = p.parse_args(argv)
    if args.long:
        print(f"machine: {machine()}")
        long_context("tiny" if args.quick else "full", "2" if args.quick else "8")
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
