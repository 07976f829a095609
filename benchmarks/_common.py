"""Shared helpers for the benchmarks: median timing, peak memory, the closing JSON line.

Convention (foundation issue): each benchmark prints a readable table and, as its last line,
one JSON object ``{"name", "baseline", "ours", "unit", "ratio", "target"}`` measured side by
side in one run. ``ratio`` is baseline / ours for a cost, so higher is better, and ``target``
is the floor the issue sets for it. A second question gets its own line, the headline last.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the shared ``--quick`` flag."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="fewer repeats and smaller inputs")
    return p


def median_time(fn: Callable[[], Any], *, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(fns: dict[str, Callable[[], Any]], *, repeats: int) -> dict[str, float]:
    """Median wall time in seconds of each ``fns`` entry, the entries run in turn ``repeats`` times.

    Interleaving makes a change of machine load hit every entry alike; a side-by-side ratio of
    these medians is what the benchmark tables quote.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(median_time(fn, repeats=1, warmup=0))
    return {name: statistics.median(t) for name, t in times.items()}


def run_child(code: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``code`` in a fresh Python process; it must print one JSON object as its last line.

    Used for peak-RSS measurements, which need a process of their own. ``env``: variables
    added to this process's environment for the child (e.g. malloc settings).
    """
    import os

    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        check=True,
        capture_output=True,
        text=True,
        env=None if env is None else {**os.environ, **env},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    """One line naming the machine the numbers were measured on."""
    import os

    try:
        import torch

        threads = torch.get_num_threads()
        accel = "CUDA " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except ImportError:  # pragma: no cover
        threads, accel = "?", "?"
    return (
        f"{platform.machine()} {platform.processor() or ''}".strip()
        + f", {os.cpu_count()} cores, torch threads {threads}, {accel}, Python {platform.python_version()}"
    )


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table of ``rows`` with the given ``columns``."""
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def result_line(name: str, *, baseline: float, ours: float, unit: str, target: float) -> str:
    """The closing JSON line; ratio = baseline / ours (a cost: higher is better)."""
    ratio = baseline / ours if ours else float("inf")
    return json.dumps(
        {
            "name": name,
            "baseline": round(baseline, 6),
            "ours": round(ours, 6),
            "unit": unit,
            "ratio": round(ratio, 3),
            "target": target,
        }
    )
