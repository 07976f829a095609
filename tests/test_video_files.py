"""load_video on awkward files: both backends, bad input, single frames, variable frame rates.

Every video here is written into ``tmp_path`` with PyAV by the ``video_writer`` fixture
(``tests/conftest.py``).
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from vltools import decoding, video
from vltools.video import load_video, sample_frame_indices

av = pytest.importorskip("av")


def open_handles(path: Path) -> list[str]:
    """This process's open file descriptors that point at ``path`` (Linux /proc)."""
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        pytest.skip("needs /proc to list open files")
    found = []
    for fd in os.listdir(fd_dir):
        try:
            if os.path.realpath(fd_dir / fd) == os.path.realpath(path):
                found.append(fd)
        except OSError:
            continue
    return found


BACKENDS = video.available_backends()
needs_decord = pytest.mark.skipif("decord" not in BACKENDS, reason="decord does not import here")


@pytest.fixture(scope="module")
def videos(tmp_path_factory, video_writer) -> dict[str, Path]:
    write_video = video_writer
    d = tmp_path_factory.mktemp("videos")
    out = {
        "plain": write_video(d / "plain.mp4", 40),
        "single": write_video(d / "single.mp4", 1),
        "vfr": write_video(
            d / "vfr.mp4", 10, pts_ms=[0, 40, 80, 200, 240, 500, 540, 580, 900, 940]
        ),
        "ten_bit": write_video(d / "ten_bit.mp4", 6, pix_fmt="yuv420p10le"),
        "faststart": write_video(d / "faststart.mp4", 48, faststart=True),
    }
    data = out["faststart"].read_bytes()
    (d / "truncated.mp4").write_bytes(data[: int(len(data) * 0.6)])
    out["truncated"] = d / "truncated.mp4"
    (d / "cut_before_index.mp4").write_bytes(out["plain"].read_bytes()[:2000])
    out["cut_before_index"] = d / "cut_before_index.mp4"
    # every byte of the frame data replaced by noise: the container is fine, no frame decodes
    mdat = data.find(b"mdat") + 4
    noise = np.random.default_rng(1).integers(0, 256, len(data) - mdat, dtype=np.uint8)
    (d / "noise.mp4").write_bytes(data[:mdat] + noise.tobytes())
    out["noise"] = d / "noise.mp4"
    damaged = bytearray(data)  # every 97th byte of the frame data flipped
    for k in range(mdat + 200, len(damaged), 97):
        damaged[k] ^= 0xFF
    (d / "damaged.mp4").write_bytes(bytes(damaged))
    out["damaged"] = d / "damaged.mp4"
    (d / "text.mp4").write_text("not a video\n" * 20)
    out["text"] = d / "text.mp4"
    (d / "empty.mp4").write_bytes(b"")
    out["empty"] = d / "empty.mp4"
    with av.open(str(d / "audio.m4a"), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate, frame.pts = 8000, 0
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    out["audio"] = d / "audio.m4a"
    for name in ("no_frames.mp4", "no_frames.mkv"):  # a video stream header, not one frame
        container = av.open(str(d / name), "w")
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
        container.close()
        out[name] = d / name
    return out


# --- both backends ---------------------------------------------------------------------------


@needs_decord
@pytest.mark.parametrize("name", ["plain", "single", "vfr"])
def test_both_backends_pick_the_same_frames_with_the_same_times_and_pixels(videos, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = load_video(videos[name], num_segments=6, backend="decord")
        b = load_video(videos[name], num_segments=6, backend="pyav")
    assert (a.backend, b.backend) == ("decord", "pyav")
    assert a.frame_indices.tolist() == b.frame_indices.tolist()
    assert a.timestamps.tolist() == b.timestamps.tolist()
    assert (a.num_frames, a.fps) == (b.num_frames, b.fps)
    for x, y in zip(a.frames, b.frames, strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))  # 8-bit H.264: identical pixels
    assert a.pixel_values.equal(b.pixel_values)


@needs_decord
def test_ten_bit_video_differs_between_decoders_by_a_measured_tolerance(videos):
    # decord's bundled FFmpeg converts 10-bit YUV to RGB with other rounding than PyAV's:
    # measured max 47 levels, mean ~3.8 on this noisy picture. Everything else agrees exactly.
    path = videos["ten_bit"]
    probe = decoding.probe_video(path)
    pick = functools.partial(sample_frame_indices, num_segments=6, bound=None)
    a = decoding.read_decord(path, probe, pick=pick)
    b = decoding.decode_pyav(path, probe, a.indices)
    diff = np.abs(np.stack(a.arrays).astype(int) - np.stack(b).astype(int))
    assert diff.max() <= 64
    assert diff.mean() < 6.0
    assert diff.max() > 0  # if this starts failing, the decoders agree now: tighten the test


def test_auto_backend_prefers_decord_where_it_imports(videos):
    clip = load_video(videos["plain"], num_segments=2)
    assert clip.backend == BACKENDS[0]


def test_an_unknown_backend_is_refused(videos):
    with pytest.raises(ValueError, match="backend must be one of"):
        load_video(videos["plain"], backend="opencv")


# --- single frames and variable frame rates --------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_single_frame_video_repeats_its_frame(videos, backend):
    clip = load_video(videos["single"], num_segments=4, backend=backend)
    assert clip.num_frames == 1
    assert clip.frame_indices.tolist() == [0, 0, 0, 0]
    assert clip.timestamps.tolist() == [0.0] * 4
    assert clip.pixel_values.shape == (4, 3, 448, 448)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_variable_frame_rate_video_warns_and_reports_real_times(videos, backend):
    with pytest.warns(UserWarning, match="variable frame rate"):
        clip = load_video(videos["vfr"], num_segments=5, backend=backend)
    assert clip.variable_frame_rate
    assert clip.num_frames == 10
    expected = np.array([0, 40, 80, 200, 240, 500, 540, 580, 900, 940]) / 1000
    assert np.allclose(clip.timestamps, expected[clip.frame_indices])
    # the picture is the frame asked for: grey level (37 * i) % 256 below the noise band
    for i, frame in zip(clip.frame_indices, clip.frames, strict=True):
        assert abs(int(np.asarray(frame)[40, 32, 0]) - (37 * int(i)) % 256) <= 3


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_a_missing_file_raises_file_not_found(tmp_path, backend):
    with pytest.raises(FileNotFoundError, match="No video file"):
        load_video(tmp_path / "nope.mp4", backend=backend)


def test_a_folder_or_a_non_path_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a file"):
        load_video(tmp_path)
    with pytest.raises(TypeError, match="needs a path"):
        load_video(b"\x00\x00")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("text", "not a video FFmpeg can read"),
        ("empty", "empty"),
        ("audio", "no video stream"),
        ("cut_before_index", "not a video FFmpeg can read"),
        ("noise", "no decodable frames"),
        ("no_frames.mp4", "no video stream|no frames"),
        ("no_frames.mkv", "not a video FFmpeg can read|no frames"),
    ],
)
@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_bad_files_raise_a_clear_value_error_and_release_the_file(videos, name, message, backend):
    path = videos[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=message if backend != "decord" else None):
            load_video(path, num_segments=4, backend=backend)
    assert open_handles(path) == []


def test_a_truncated_video_is_read_up_to_the_cut_with_pyav(videos):
    path = videos["truncated"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clip = load_video(path, num_segments=4)  # decord cannot open it: PyAV takes over
    assert clip.backend == "pyav"
    assert 0 < clip.num_frames < 48
    assert any("decord cannot open" in str(w.message) for w in caught) or BACKENDS == ("pyav",)
    assert open_handles(path) == []


@needs_decord
def test_forcing_decord_on_a_file_it_cannot_open_raises(videos):
    with pytest.raises(ValueError, match="decord cannot open"):
        load_video(videos["truncated"], backend="decord")
    assert open_handles(videos["truncated"]) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bound_past_the_end_raises_and_releases_the_file(videos, backend):
    path = videos["plain"]  # 40 frames at 24 fps: 1.67 s
    with pytest.raises(ValueError, match="selects no frames"):
        load_video(path, bound=(5.0, 6.0), backend=backend)
    assert open_handles(path) == []


# --- containers ------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".mkv", ".mov", ".avi", ".ts"])
def test_pyav_finds_the_right_frames_in_other_containers(tmp_path, suffix, video_writer):
    # AVI stores no presentation times (B-frames come out with shuffled ones) and MPEG-TS
    # seeks coarsely: vltools then decodes from the start and counts frames.
    path = video_writer(tmp_path / f"clip{suffix}", 30, size=(64, 48))
    clip = load_video(path, num_segments=7, backend="pyav")
    assert clip.num_frames == 30
    assert clip.frame_indices.tolist() == sample_frame_indices(30, 24.0, num_segments=7).tolist()
    for i, frame in zip(clip.frame_indices, clip.frames, strict=True):
        assert abs(int(np.asarray(frame)[40, 32, 0]) - (37 * int(i)) % 256) <= 3, i
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # decord cannot read this .ts: auto falls back to PyAV
        auto = load_video(path, num_segments=7)
    assert auto.frame_indices.tolist() == clip.frame_indices.tolist()
    assert auto.timestamps.tolist() == clip.timestamps.tolist()
    assert auto.pixel_values.equal(clip.pixel_values)


@needs_decord
def test_forcing_decord_on_mpeg_ts_warns_that_it_returns_other_frames(tmp_path, video_writer):
    path = video_writer(tmp_path / "clip.ts", 30)
    with pytest.warns(UserWarning, match="seeks inaccurately"):
        clip = load_video(path, num_segments=3, backend="decord")
    assert clip.backend == "decord"


def test_auto_falls_back_to_pyav_where_decord_does_not_import(videos, monkeypatch):
    monkeypatch.setattr(decoding, "available_backends", lambda: ("pyav",))
    clip = load_video(videos["plain"], num_segments=3)
    assert clip.backend == "pyav"


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_a_damaged_video_gives_concealed_frames_or_a_clear_error(videos, backend):
    path = videos["damaged"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            clip = load_video(path, num_segments=4, backend=backend)
        except ValueError as e:
            assert path.name in str(e)  # says which file, and why
        else:
            assert clip.pixel_values.shape == (4, 3, 448, 448)
            assert clip.backend == "pyav"  # decord refuses damaged packets; PyAV conceals them
    assert open_handles(path) == []
