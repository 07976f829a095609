"""Hostile videos: pictures renamed .mp4, requests too large, special files, frame numbering
that must not shift, backends that must agree, variable frame rates said out loud."""

from __future__ import annotations

import dataclasses
import os
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vltools import decoding, video
from vltools.video import load_video

av = pytest.importorskip("av")


BACKENDS = video.available_backends()


@pytest.fixture(scope="module")
def clips(tmp_path_factory, video_writer) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hostile_videos")
    vfr = [0, 40, 80, 200, 240, 500, 540, 580, 900, 940]
    return {
        "plain": video_writer(d / "plain.mp4", 30, noise=False),
        "vfr": video_writer(d / "vfr.mp4", 10, pts_ms=vfr, noise=False),
    }


# --- pictures are not videos ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "suffix"),
    [("PNG", ".mp4"), ("JPEG", ".mp4"), ("BMP", ".mkv"), ("GIF", ".mp4"), ("WEBP", ".avi")],
)
@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_a_still_image_renamed_as_a_video_is_refused(tmp_path, fmt, suffix, backend):
    path = tmp_path / f"photo{suffix}"
    Image.new("RGB", (64, 48), (200, 100, 50)).save(path, format=fmt)
    with pytest.raises(ValueError, match=r"is a still image .*not a video.*load_image"):
        load_video(path, backend=backend)


def test_a_one_frame_h264_video_is_still_a_video(tmp_path, video_writer):
    clip = load_video(video_writer(tmp_path / "one.mp4", 1, noise=False), num_segments=2)
    assert clip.num_frames == 1


# --- bounded work ---------------------------------------------------------------------------


def forbid_decoding(monkeypatch):
    def fail(*args, **kwargs):
        pytest.fail("frames were decoded before the request was refused")

    for name in ("read_decord", "decode_pyav"):
        monkeypatch.setattr(video, name, fail)


@pytest.mark.parametrize(
    ("num_segments", "max_num", "shape"),
    [(10**5, 1, r"100,000 frames x 1 tiles"), (3000, 1, "3,000 frames"), (200, 12, "200 frames")],
)
def test_a_request_above_the_stated_limit_is_refused_before_decoding(
    clips, monkeypatch, num_segments, max_num, shape
):
    forbid_decoding(monkeypatch)
    with pytest.raises(ValueError, match=rf"{shape}.*GiB, above vltools' limit.*num_segments"):
        load_video(clips["plain"], num_segments=num_segments, max_num=max_num)


@pytest.mark.parametrize("bad", [8.0, 8.5, "8", None])
def test_float_or_text_segment_and_tile_counts_are_refused(clips, bad):
    with pytest.raises(TypeError):
        load_video(clips["plain"], num_segments=bad)
    with pytest.raises(TypeError):
        load_video(clips["plain"], max_num=bad)


def test_a_fifo_or_device_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "stream.mp4"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        errors: list[BaseException] = []

        def run(path=path, errors=errors):
            try:
                load_video(path)
            except BaseException as e:  # noqa: BLE001 - handed to the test
                errors.append(e)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(60)
        assert not t.is_alive(), f"load_video blocked on {path}"
        assert isinstance(errors[0], ValueError) and "not a file" in str(errors[0])


# --- frame numbers ----------------------------------------------------------------------------


class _FakeStream:
    """Ten packets of one frame each; packet ``bad`` fails to decode."""

    thread_type = "AUTO"

    def __init__(self, bad: int) -> None:
        self.bad = bad

    def decode(self, packet):
        if packet == self.bad:
            raise av.error.InvalidDataError(1094995529, "Invalid data")
        return [_FakeFrame(packet)]


@dataclasses.dataclass
class _FakeFrame:
    number: int

    def to_ndarray(self, format):  # noqa: A002 - PyAV's name
        return np.full((2, 2, 3), self.number, np.uint8)


class _FakeContainer:
    def __init__(self, bad: int) -> None:
        self.streams = type("S", (), {"video": [_FakeStream(bad)]})()

    def demux(self, stream):
        return iter(range(10))


@pytest.mark.parametrize("bad", [0, 3, 8])
def test_a_packet_that_fails_to_decode_never_shifts_later_frames(bad):
    found = decoding._decode_counting(_FakeContainer(bad), set(range(10)))
    # every frame returned is the frame of that number; none after the lost packet
    assert all(int(a[0, 0, 0]) == k for k, a in found.items())
    assert set(found) == set(range(bad))


def probe_with(monkeypatch, **changes):
    real = decoding.probe_video

    def changed(path):
        return dataclasses.replace(real(path), **changes)

    monkeypatch.setattr(video, "probe_video", changed)


@pytest.mark.skipif("decord" not in BACKENDS, reason="decord does not import here")
@pytest.mark.parametrize(
    "changes", [{"fps": 23.0}, {"fps": 24.5}, {"num_frames": 29}, {"num_frames": 31}]
)
def test_backends_that_would_number_frames_differently_are_not_mixed(clips, monkeypatch, changes):
    probe = decoding.probe_video(clips["plain"])
    if "num_frames" in changes:  # keep the probe's arrays consistent with its count
        n = changes["num_frames"]
        pts = np.arange(n, dtype=np.int64) * int(probe.pts[1] - probe.pts[0])
        changes = {**changes, "pts": pts, "timestamps": pts * float(probe.time_base)}
    probe_with(monkeypatch, **changes)
    with pytest.raises(ValueError, match="number .*frames differently"):
        load_video(clips["plain"], num_segments=4, backend="decord")
    if "pyav" in BACKENDS and "fps" in changes:
        with pytest.warns(UserWarning, match="frames differently.*PyAV instead"):
            clip = load_video(clips["plain"], num_segments=4, backend="auto")
        assert clip.backend == "pyav"


@pytest.mark.parametrize("backend", BACKENDS)
def test_frame_n_is_the_same_picture_on_every_backend(clips, backend):
    clip = load_video(clips["plain"], num_segments=6, backend=backend)
    for i, frame in zip(clip.frame_indices, clip.frames, strict=True):
        assert abs(int(np.asarray(frame)[40, 32, 0]) - (37 * int(i)) % 256) <= 3


# --- variable frame rate ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_variable_frame_rate_video_has_its_real_duration(clips, backend):
    with pytest.warns(UserWarning, match=r"variable frame rate.*real 0\.980 s"):
        clip = load_video(clips["vfr"], num_segments=4, backend=backend)
    assert clip.duration == pytest.approx(0.98)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bound_on_a_variable_frame_rate_video_says_which_seconds_it_took(clips, backend):
    with pytest.warns(UserWarning) as record:
        clip = load_video(clips["vfr"], num_segments=3, bound=(0.1, 0.5), backend=backend)
    text = " ".join(str(w.message) for w in record)
    first, last = clip.timestamps[0], clip.timestamps[-1]
    assert f"real times are {first:.3f} to {last:.3f} s" in text


def test_a_constant_frame_rate_video_keeps_the_cards_duration_and_no_warning(clips):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clip = load_video(clips["plain"], num_segments=4)
    assert clip.duration == 30 / 24


@pytest.mark.parametrize("num_segments", [10**6 + 1, 10**9, 10**18])
def test_sampling_more_frames_than_the_stated_limit_is_refused_without_allocating(num_segments):
    with pytest.raises(ValueError, match=r"above the 1,000,000 frames.*Lower num_segments"):
        video.sample_frame_indices(100, 24.0, num_segments=num_segments)
