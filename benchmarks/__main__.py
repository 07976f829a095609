"""``python -m benchmarks [--quick]``: run every benchmark script in turn (``make bench``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPTS = [
    "tiling",
    "tiling_paths",
    "video",
    "loading",
    "multiturn",
    "batch",
    "attention",
    "widgets",
    "stock_processor",
    "experiments",
]


def main(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent
    failed = []
    for name in SCRIPTS:
        if not (here / f"{name}.py").exists():
            continue
        print(f"\n=== benchmarks.{name} ===", flush=True)
        if subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *argv]).returncode:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
