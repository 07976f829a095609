"""Loading InternVL2-1B: vltools' on-the-fly conversion against transformers' native loading.

Writes the full-size random checkpoint once (original format, real InternVL2-1B sizes, bf16,
~1.9 GB, cached by ``vltools.testing.full_size_checkpoint``) and a native-format copy of the
same weights, then measures in one run, each load in a fresh process (imports done first):

- wall time of ``vltools.load_model`` on the ORIGINAL format (validation, conversion and the
  tokenizer included) against ``InternVLForConditionalGeneration.from_pretrained`` on the
  native copy, alone (the headline, as the issue words it) and followed by
  ``AutoTokenizer.from_pretrained`` (the same result as load_model: a model and its
  tokenizer). ``ours, model only`` subtracts load_model's own tokenizer time;
- peak RSS (``VmHWM``) above the process's RSS just before the load, after touching every
  page of the weights once: both loaders map a same-dtype file lazily, so the RSS right after
  loading says little; the peak after a full read is what the first forward pass costs.

Targets (loading issue): time ratio native / ours >= 0.83 (at most 1.2x the native time), and
peak RSS <= 1.3x the size of the weights in the chosen dtype (bf16 = the file's dtype, and
fp32 = the CPU default, which converts every tensor).

Run: ``python -m benchmarks.loading [--quick]``.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from benchmarks._common import machine, parser, result_line, run_child, table

CHILD = r"""
import json, sys, time
mode, path, dtype = sys.argv[1:4]
import torch, transformers
import vltools.models
from transformers import AutoTokenizer, InternVLForConditionalGeneration, Qwen2Tokenizer


def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


tokenizer_seconds = []
load_tokenizer = vltools.models._load_tokenizer


def timed_tokenizer(*args, **kwargs):
    start = time.perf_counter()
    try:
        return load_tokenizer(*args, **kwargs)
    finally:
        tokenizer_seconds.append(time.perf_counter() - start)


vltools.models._load_tokenizer = timed_tokenizer
before = status("VmRSS")
start = time.perf_counter()
if mode == "ours":
    model = vltools.models.load_model(path, device="cpu", dtype=dtype).model
else:
    model = InternVLForConditionalGeneration.from_pretrained(
        path, dtype=getattr(torch, dtype), trust_remote_code=False
    )
    if mode == "native+tok":
        AutoTokenizer.from_pretrained(path, trust_remote_code=False)
seconds = time.perf_counter() - start
loaded = status("VmRSS")
with torch.no_grad():  # one strided read per 4 KiB page, no temporaries
    for p in model.parameters():
        p.reshape(-1)[:: max(1, 4096 // p.element_size())].sum()
peak = status("VmHWM")  # this process's own high-water mark (ru_maxrss would include the parent)
weights = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"seconds": seconds, "tokenizer": sum(tokenizer_seconds), "peak": peak,
                  "before": before, "loaded": loaded, "weights": weights}))
"""

LABELS = {
    "ours": "load_model (original format, converted)",
    "native": "from_pretrained (native format)",
    "native+tok": "from_pretrained + AutoTokenizer (native)",
}


def native_copy(original: Path) -> Path:
    """The same weights saved in transformers' native format (built once, beside the original)."""
    target = original.with_name(original.name + "-native")
    if (target / "config.json").is_file():
        return target
    from vltools.models import load_model

    staging = target.with_name(target.name + ".partial")
    load_model(str(original), device="cpu", dtype="bfloat16").save_pretrained(staging)
    staging.rename(target)
    return target


def measure(modes: dict[str, Path], dtype: str, repeats: int) -> dict[str, dict[str, float]]:
    """Median seconds and memory of each mode, runs interleaved so drift hits all alike."""
    for mode, path in modes.items():  # warm the page cache: every run reads from memory
        run_child(CHILD, mode, str(path), dtype)
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    for _ in range(repeats):
        for mode, path in modes.items():
            runs[mode].append(run_child(CHILD, mode, str(path), dtype))
    out = {}
    for mode, results in runs.items():
        med = lambda key, results=results: statistics.median(key(r) for r in results)  # noqa: E731
        out[mode] = {
            "seconds": med(lambda r: r["seconds"]),
            "model seconds": med(lambda r: r["seconds"] - r["tokenizer"]),
            "after load": med(lambda r: r["loaded"] - r["before"]),
            "peak": med(lambda r: r["peak"] - r["before"]),
            "weights": results[0]["weights"],
        }
    return out


def rows(results: dict[str, dict[str, float]], dtype: str) -> list[dict]:
    out = []
    for mode, r in results.items():
        out.append(
            {
                "dtype": dtype,
                "load": LABELS[mode],
                "median s": r["seconds"],
                "RSS after load GB": r["after load"] / 1e9,
                "peak after reading GB": r["peak"] / 1e9,
                "peak / weights": r["peak"] / r["weights"],
                "weights GB": r["weights"] / 1e9,
            }
        )
        if mode == "ours":
            out.append(
                {"dtype": dtype, "load": "  ours, model only", "median s": r["model seconds"]}
            )
    return out


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    from vltools.testing import full_size_checkpoint

    original = full_size_checkpoint()
    native = native_copy(original)
    repeats = 1 if args.quick else 3
    bf16 = measure({"ours": original, "native": native, "native+tok": native}, "bfloat16", repeats)
    fp32 = measure({"ours": original, "native": native}, "float32", 1)

    print(
        f"Loading an InternVL2-1B-sized random checkpoint on the CPU (median of {repeats}; fp32: 1)"
    )
    print(machine())
    print(table(rows(bf16, "bfloat16") + rows(fp32, "float32"), list(rows(bf16, "bfloat16")[0])))
    ours, native_only, native_tok = bf16["ours"], bf16["native"], bf16["native+tok"]
    print(
        f"time (bf16): from_pretrained+tokenizer / load_model = "
        f"{native_tok['seconds'] / ours['seconds']:.3f}; from_pretrained / load_model = "
        f"{native_only['seconds'] / ours['seconds']:.3f}; model only: "
        f"{native_only['seconds'] / ours['model seconds']:.3f} (target >= 0.83)"
    )
    for dtype, r in (("float32", fp32["ours"]), ("bfloat16", ours)):
        print(
            result_line(
                f"loading_peak_rss_over_weights_{dtype}",
                baseline=r["weights"] / 1e9,
                ours=r["peak"] / 1e9,
                unit="GB",
                target=round(1 / 1.3, 3),
            )
        )
    print(
        result_line(
            "loading_time_vs_from_pretrained_and_tokenizer",
            baseline=native_tok["seconds"],
            ours=ours["seconds"],
            unit="s",
            target=0.83,
        )
    )
    # headline, as the issue words it: all of load_model against from_pretrained alone
    print(
        result_line(
            "loading_time_vs_from_pretrained",
            baseline=native_only["seconds"],
            ours=ours["seconds"],
            unit="s",
            target=0.83,
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
