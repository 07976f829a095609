"""Shared fixtures: the tiny checkpoint and the model loaded from it, built once per run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The project's own copy of the test vectors (tests/reference/README.md says where they came from).
REFERENCE = REPO / "tests" / "reference"

# Tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``tests/reference``: the test vectors computed with the original code."""
    return REFERENCE


@pytest.fixture(scope="session")
def tiny_path() -> Path:
    """The offline tiny checkpoint (original InternVL2 format), built or taken from the cache."""
    from vltools.testing import tiny_checkpoint

    return tiny_checkpoint()


@pytest.fixture(scope="session")
def tiny_model(tiny_path):
    """``load_model("tiny")`` in fp32 on the CPU, shared by the tests that only read it."""
    from vltools.models import load_model

    return load_model(str(tiny_path), device="cpu", dtype="float32")


# --- small files written on the fly ---------------------------------------------------------


def write_video(
    path: Path,
    num_frames: int,
    *,
    fps: int = 24,
    size: tuple[int, int] = (64, 48),
    pix_fmt: str = "yuv420p",
    pts_ms: list[int] | None = None,
    faststart: bool = False,
    noise: bool = True,
) -> Path:
    """A small H.264 video (GOP 12) whose frame ``i`` is filled with grey level ``(37 * i) % 256``.

    ``noise`` fills the top quarter with seeded random pixels (so that frames compress like
    pictures, not flat fields); ``pts_ms`` gives each frame's time in milliseconds (a variable
    frame rate); ``faststart`` moves the MP4 index to the front.
    """
    from fractions import Fraction

    import numpy as np

    av = pytest.importorskip("av")
    options = {"movflags": "+faststart"} if faststart else {}
    width, height = size
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = pix_fmt
        stream.options = {"g": "12"}
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        rng = np.random.default_rng(0)
        for i in range(num_frames):
            pixels = np.full((height, width, 3), (37 * i) % 256, np.uint8)  # [H, W, 3]
            if noise:
                pixels[: height // 4] = rng.integers(0, 256, (height // 4, width, 3))
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = i if pts_ms is None else pts_ms[i]
            if pts_ms is not None:
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="session")
def video_writer():
    """:func:`write_video`: ``video_writer(path, num_frames, fps=..., size=..., ...)``."""
    return write_video


def write_labelled_folder(
    folder: Path,
    sizes: list[tuple[int, int]],
    *,
    colour=lambda i: (40 * i, 200 - 30 * i, 90),
    question: str = "Value of bar {i}?",
) -> Path:
    """A folder of images ``c0.png, c1.png, ...`` of ``sizes`` with a ``labels.jsonl`` as
    ``data/charts`` ships (``image``, ``question``, ``answers``: ``[str(i)]``)."""
    import json

    from PIL import Image

    folder.mkdir(parents=True)
    lines = []
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), colour(i)).save(folder / f"c{i}.png")
        lines.append({"image": f"c{i}.png", "question": question.format(i=i), "answers": [str(i)]})
    (folder / "labels.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    return folder


@pytest.fixture(scope="session")
def labelled_folder():
    """:func:`write_labelled_folder`: ``labelled_folder(folder, sizes, colour=..., question=...)``."""
    return write_labelled_folder
