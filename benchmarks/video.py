"""Loading video frames: vltools.load_video against the model card's per-frame loop.

The baseline is the card's ``load_video`` (``vltools.card.card_load_video``): a decord ``VideoReader``
with one thread, ``vr[i]`` for each sampled frame in a Python loop, ``dynamic_preprocess`` and
the torchvision transforms tile by tile. vltools is timed with its default backend (decord,
one batched ``get_batch``) and with PyAV (non-reference frames skipped, only the wanted frames
converted). Both produce the card's pixels; the benchmark checks that before timing.

Videos: the 4-second sample (96 frames, 448x336) and a 60-second one at 30 fps (1,800 frames,
640x360, libx264 defaults: a keyframe every 250 frames) written once into the cache folder
(``$VLTOOLS_CACHE`` or ``~/.cache/vltools``) by ``data/make_sample_video.py``.

    python -m benchmarks.video [--quick]

Headline (last line): the long video at 32 segments, card loop / vltools default; target 3x.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from benchmarks._common import machine, median_time, parser, result_line, table
from vltools.card import card_load_video

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "vltools" / "samples" / "sample_video.mp4"
TARGET = 3.0


def long_video() -> Path:
    """The 60 s, 30 fps video, generated on first use into the cache folder."""
    cache = Path(os.environ.get("VLTOOLS_CACHE", Path.home() / ".cache" / "vltools"))
    path = cache / "benchmarks" / "video_60s_30fps_640x360.mp4"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        spec = importlib.util.spec_from_file_location(
            "make_sample_video", REPO / "data" / "make_sample_video.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        tmp = path.with_suffix(".part.mp4")
        module.write_video(tmp, seconds=60, fps=30, size=(640, 360))
        tmp.replace(path)
    return path


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    from vltools.video import available_backends, load_video

    repeats = 1 if args.quick else 5
    videos = {"sample (4 s, 96 frames)": SAMPLE, "long (60 s, 1800 frames)": long_video()}
    backends = available_backends()
    rows, lines = [], []
    for label, path in videos.items():
        for segments in (8, 32):
            expected, _ = card_load_video(path, num_segments=segments)
            for backend in backends:  # the pixels must be the card's before timing means anything
                got = load_video(path, num_segments=segments, backend=backend).pixel_values
                if not got.equal(expected):
                    raise SystemExit(f"{backend} pixels differ from the card on {path.name}")
            card = median_time(
                lambda p=path, n=segments: card_load_video(p, num_segments=n), repeats=repeats
            )
            times = {
                b: median_time(
                    lambda p=path, n=segments, b=b: load_video(p, num_segments=n, backend=b),
                    repeats=repeats,
                )
                for b in backends
            }
            default = times[backends[0]]
            row = {"video": label, "segments": segments, "card loop (s)": card}
            for b in backends:
                row[f"vltools {b} (s)"] = times[b]
                row[f"x {b}"] = card / times[b]
            rows.append(row)
            name = f"video_load_{'long' if 'long' in label else 'sample'}_{segments}seg"
            lines.append(result_line(name, baseline=card, ours=default, unit="s", target=TARGET))
    columns = ["video", "segments", "card loop (s)"]
    for b in backends:
        columns += [f"vltools {b} (s)", f"x {b}"]
    print(f"Video loading, median of {repeats} (pixels checked identical to the card's first)")
    print(machine())
    print(table(rows, columns))
    print(f"default backend: {backends[0]}; ratio = card loop / vltools (higher is better)")
    headline = lines.pop(3)  # long video, 32 segments
    for line in lines:
        print(line)
    print(headline)
    json.loads(headline)


if __name__ == "__main__":
    main()
