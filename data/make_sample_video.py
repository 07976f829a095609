"""Write ``vltools/samples/sample_video.mp4``: a short video whose frames show their number and time.

Every frame carries its frame number and timestamp in big text, a progress bar along the
bottom and a square that moves across the picture, so that which frames a sampler picked can
be read straight off the pictures. The background hue steps once per second.

The video is H.264 (libx264, yuv420p) in MP4, 448 x 336 pixels, 24 fps, 4 seconds (96 frames),
about 100 kB. It is written with PyAV, single-threaded and with FFmpeg's bit-exact flags, so
that a rerun on the same PyAV/FFmpeg build gives the same bytes. Licence: CC0.

Run from the repository root::

    python data/make_sample_video.py            # writes vltools/samples/sample_video.mp4
    python data/make_sample_video.py --seconds 60 --fps 30 out.mp4   # a longer one

``benchmarks/video.py`` imports :func:`write_video` from this file for its longer video.
"""

from __future__ import annotations

import argparse
import colorsys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "vltools" / "samples" / "sample_video.mp4"  # package data


def render_frame(index: int, *, num_frames: int, fps: float, size: tuple[int, int]) -> Image.Image:
    """The RGB picture of frame ``index``: its number, its time, a progress bar, a square."""
    width, height = size
    second = int(index // fps)
    r, g, b = colorsys.hsv_to_rgb((second * 0.13) % 1.0, 0.35, 0.95)
    image = Image.new("RGB", size, (int(r * 255), int(g * 255), int(b * 255)))
    draw = ImageDraw.Draw(image)
    big = ImageFont.load_default(size=height // 4)
    small = ImageFont.load_default(size=height // 8)
    draw.text((width / 2, height * 0.36), f"#{index}", fill=(0, 0, 0), font=big, anchor="mm")
    draw.text(
        (width / 2, height * 0.62),
        f"t = {index / fps:.3f} s",
        fill=(0, 0, 0),
        font=small,
        anchor="mm",
    )
    # a square moving left to right once per second, for motion
    step = (index % round(fps)) / max(round(fps) - 1, 1)
    side = height // 8
    left = int(step * (width - side))
    draw.rectangle((left, 4, left + side, 4 + side), fill=(200, 30, 30))
    # progress bar
    bar_top = height - height // 12
    draw.rectangle((0, bar_top, width - 1, height - 1), outline=(0, 0, 0), fill=(255, 255, 255))
    filled = round((index + 1) / num_frames * (width - 2))
    if filled >= 1:
        draw.rectangle((1, bar_top + 1, filled, height - 2), fill=(40, 90, 220))
    return image


def write_video(
    path: Path | str,
    *,
    seconds: float = 4.0,
    fps: int = 24,
    size: tuple[int, int] = (448, 336),
    crf: int = 28,
    gop: int | None = None,
) -> Path:
    """Encode ``seconds * fps`` rendered frames to ``path`` (H.264, yuv420p, MP4)."""
    path = Path(path)
    num_frames = round(seconds * fps)
    width, height = size
    options = {"crf": str(crf), "preset": "medium", "threads": "1"}
    if gop is not None:
        options["g"] = str(gop)
    with av.open(str(path), mode="w", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = options
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        stream.thread_count = 1
        for index in range(num_frames):
            image = render_frame(index, num_frames=num_frames, fps=fps, size=size)
            frame = av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", default=str(DEFAULT_OUT))
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--fps", type=int, default=24)
    p.add_argument("--width", type=int, default=448)
    p.add_argument("--height", type=int, default=336)
    args = p.parse_args()
    out = write_video(args.out, seconds=args.seconds, fps=args.fps, size=(args.width, args.height))
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} kB)")


if __name__ == "__main__":
    main()
