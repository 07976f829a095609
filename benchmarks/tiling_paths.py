"""The straight tiling path against the threaded one, side by side (issue 16).

``python -m benchmarks.tiling_paths [--quick]``

Both write the same bits (checked here on every case before timing): ``straight`` is
:func:`vltools.images.cut_tiles` (the card's steps one after the other), ``parallel`` the
threaded variant ``load_image`` runs (``vltools.images._cut_threaded``: the thumbnail's resize
beside the canvas's, tiles normalised on the shared pool, the canvas one tile column per
thread where the height does not shrink). Same in-memory image, same preallocated output,
interleaved runs, medians. The decision rule (issue 16): keep the threaded path only if
``straight / parallel >= 1.3`` on the 4032 x 3024 photo at ``max_num`` 12.
"""

from __future__ import annotations

import numpy as np

from benchmarks._common import interleaved_medians, machine, parser, result_line, table
from benchmarks.tiling import photo

KEEP_TARGET = 1.3


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    from vltools import images
    from vltools.tiling import plan_tiles

    parallel = getattr(images, "_cut_threaded", None)
    if parallel is None:
        raise SystemExit("this vltools has no threaded tiling path any more (removed in issue 16)")
    repeats = 5 if args.quick else 15
    big = photo(4032, 3024)
    cases = [
        ("photo 4032x3024", big, 12),
        ("photo 4032x3024", big, 6),
        ("small 640x480", photo(640, 480, seed=1), 12),
    ]
    rows = []
    for label, image, max_num in cases:
        grid = plan_tiles(image.width, image.height, max_num=max_num)
        a = np.empty((grid.num_tiles, 3, 448, 448), np.float32)
        b = np.empty_like(a)
        images.cut_tiles(image, grid, a)
        parallel(image, grid, b, fast=False)
        if a.tobytes() != b.tobytes():
            raise SystemExit(f"the two paths differ on {label} at max_num {max_num}")
        fns = {
            "straight": lambda i=image, g=grid, o=a: images.cut_tiles(i, g, o),
            "parallel": lambda i=image, g=grid, o=b: parallel(i, g, o, fast=False),
        }
        med = interleaved_medians(fns, repeats=repeats)
        rows.append(
            {
                "case": label,
                "max_num": max_num,
                "grid": f"{grid.cols}x{grid.rows}+{int(grid.has_thumbnail)}",
                "straight ms": med["straight"] * 1e3,
                "parallel ms": med["parallel"] * 1e3,
                "straight/parallel": med["straight"] / med["parallel"],
            }
        )
    print(machine())
    print(f"medians of {repeats} interleaved runs")
    print(table(rows, list(rows[0])))
    gain = rows[0]["straight/parallel"]
    verdict = "keep the threaded path" if gain >= KEEP_TARGET else "remove the threaded path"
    print(
        f"photo at max_num 12: straight/parallel = {gain:.3f} (keep if >= {KEEP_TARGET}): {verdict}"
    )
    print(
        result_line(
            "tiling: straight cut_tiles vs the threaded path, 12 MP photo, max_num 12",
            baseline=rows[0]["straight ms"] / 1e3,
            ours=rows[0]["parallel ms"] / 1e3,
            unit="s",
            target=KEEP_TARGET,
        )
    )


if __name__ == "__main__":
    main()
