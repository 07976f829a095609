"""One slider step of the live widgets: TileExplorer on a 12 MP photo, FrameStrip on a 60 s video.

``python -m benchmarks.widgets [--quick]``

A step is one change of one trait, as a released slider makes it, timed until the widget has
redrawn (its state, the figure and the PNG the browser shows). Side by side in one run:

* ``baseline``: the work the widgets did per step before issue 16, with public calls: for the
  TileExplorer the full ``load_image`` (float ``pixel_values`` included) then
  ``viz.show_tiles`` and the PNG; for the FrameStrip ``load_video`` (decoding and tiling the
  sampled frames again) then ``viz.show_frames`` and the PNG.
* ``widget``: ``explorer.max_num = 12`` (from 11) on the 4032 x 3024 photo of
  ``benchmarks/tiling.py``; ``strip.num_segments = n`` on the 60 s, 30 fps video of
  ``benchmarks/video.py``, once to a count not shown before (new frames to decode) and once
  back to one already shown (every frame decoded already).

Headline (last line): the TileExplorer step, baseline / widget; target 1.2x.
"""

from __future__ import annotations

import statistics
import time

from benchmarks._common import machine, parser, result_line, table

TARGET = 1.2


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def tiles(repeats: int, quick: bool) -> tuple[dict, str]:
    from benchmarks.tiling import photo
    from vltools.images import load_image
    from vltools.viz import figure_to_png, show_tiles
    from vltools.widgets import TileExplorer

    image = photo(2016, 1512) if quick else photo(4032, 3024)
    explorer = TileExplorer(image, max_num=11)

    def baseline() -> None:
        figure_to_png(show_tiles(load_image(image, max_num=12)), dpi=72)

    def step() -> None:
        explorer.max_num = 12

    base, ours = [], []
    baseline()  # warm-up: fonts, the image pool
    for _ in range(repeats):  # interleaved, so that load changes hit both alike
        base.append(_timed(baseline))
        explorer.max_num = 11
        ours.append(_timed(step))
        if explorer.error:
            raise SystemExit(f"TileExplorer failed: {explorer.error}")
    b, o = statistics.median(base), statistics.median(ours)
    row = {
        "widget": f"TileExplorer {image.width}x{image.height}",
        "step": "max_num 11 -> 12",
        "baseline ms": b * 1e3,
        "widget ms": o * 1e3,
        "baseline/widget": b / o,
    }
    line = result_line(
        f"widgets: TileExplorer step, {image.width}x{image.height} photo, max_num 12",
        baseline=b,
        ours=o,
        unit="s",
        target=TARGET,
    )
    return row, line


def frames(repeats: int, quick: bool) -> tuple[list[dict], list[str]]:
    from benchmarks.video import SAMPLE, long_video
    from vltools.video import load_video
    from vltools.viz import figure_to_png, show_frames
    from vltools.widgets import FrameStrip

    path = SAMPLE if quick else long_video()
    first = 8
    strip = FrameStrip(path, num_segments=first)
    counts = [first + 1 + k for k in range(repeats)]

    def baseline(n: int) -> None:
        figure_to_png(show_frames(load_video(path, num_segments=n)), dpi=72)

    def step(n: int) -> None:
        strip.num_segments = n

    baseline(first)  # warm-up
    base, new, seen = [], [], []
    for n in counts:  # interleaved
        base.append(_timed(lambda n=n: baseline(n)))
        new.append(_timed(lambda n=n: step(n)))  # a count not shown before
        strip.num_segments = n - 1
        seen.append(_timed(lambda n=n: step(n)))  # back to one shown already
        if strip.error:
            raise SystemExit(f"FrameStrip failed: {strip.error}")
    b = statistics.median(base)
    rows, lines = [], []
    for label, times in [("new count", new), ("count seen before", seen)]:
        o = statistics.median(times)
        rows.append(
            {
                "widget": f"FrameStrip {path.name}",
                "step": f"num_segments {counts[0]}..{counts[-1]}, {label}",
                "baseline ms": b * 1e3,
                "widget ms": o * 1e3,
                "baseline/widget": b / o,
            }
        )
        lines.append(
            result_line(
                f"widgets: FrameStrip step, {path.name}, {label}",
                baseline=b,
                ours=o,
                unit="s",
                target=TARGET,
            )
        )
    return rows, lines


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    repeats = 3 if args.quick else 9
    video_rows, video_lines = frames(repeats, args.quick)
    tile_row, headline = tiles(repeats, args.quick)
    print(f"machine: {machine()}")
    print(f"medians of {repeats} interleaved steps; ratio = baseline / widget (higher is better)")
    print(table([tile_row, *video_rows], list(tile_row)))
    for line in video_lines:
        print(line)
    print(headline)


if __name__ == "__main__":
    main()
