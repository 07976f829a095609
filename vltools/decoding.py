"""Reading video files: probing them with PyAV and decoding the sampled frames.

The decoding half of :func:`vltools.video.load_video`, which decides which frames to take.

- :func:`choose_backend` resolves ``"auto"`` to the decoder that imports here.
- :func:`probe_video` demuxes the file with PyAV (no decoding) into a :class:`VideoProbe`:
  clear errors for missing, empty and non-video files before a decoder sees them, and the
  presentation time of every frame, so both backends report the same timestamps. Frames are
  numbered in presentation order, as decord does.
- :func:`read_decord` reads the frames with decord (the card's decoder) in one batched call;
  :func:`decode_pyav` decodes them with PyAV, seeking by timestamp where the container allows
  it and counting frames from the start where it does not. Both give :class:`DecodedFrames`
  (decord) or arrays (PyAV); decord's failures are :class:`DecordFailed`, so that the caller
  can fall back to PyAV.

Every file handle is closed on every path, and every loop is bounded by the file's packets,
so a damaged file ends in an error, never a hang.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vltools._optional import require

__all__ = [
    "BACKENDS",
    "DECORD_MISSEEKS",
    "Backend",
    "DecodedFrames",
    "DecordFailed",
    "VideoProbe",
    "available_backends",
    "choose_backend",
    "decode_pyav",
    "is_still_image",
    "probe_video",
    "read_decord",
]

logger = logging.getLogger(__name__)

Backend = Literal["auto", "decord", "pyav"]
BACKENDS: tuple[str, ...] = ("auto", "decord", "pyav")


def available_backends() -> tuple[str, ...]:
    """The decoders that import here, in order of preference."""
    out = []
    for name, module in (("decord", "decord"), ("pyav", "av")):
        try:
            require(module, purpose="Decoding video")
        except ImportError:
            continue
        out.append(name)
    return tuple(out)


def choose_backend(backend: str) -> str:
    """The decoder to use for ``backend``: ``"decord"`` or ``"pyav"``.

    ``"auto"`` is the first of :func:`available_backends`; a named backend must import here.
    Raises ``ValueError`` for a name not in :data:`BACKENDS` and ``ImportError`` (saying what
    to install) where the decoder is missing.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    if backend == "auto":
        found = available_backends()
        if not found:
            require("av", purpose="vltools.load_video")  # raises the ImportError to install it
        return found[0]
    require("decord" if backend == "decord" else "av", purpose=f"load_video(backend={backend!r})")
    return backend


# --- probing (PyAV, no decoding) ------------------------------------------------------------

# DECORD_MISSEEKS: containers where decord 0.6 returned other frames than the ones asked for (tests/
# test_video_files.py): sparse reads from AVI with B-frames, any read from MPEG-TS.
DECORD_MISSEEKS: frozenset[str] = frozenset({"avi", "mpegts"})


@dataclass(frozen=True)
class VideoProbe:
    """What :func:`probe_video` learnt from demuxing a video file (no frame decoded).

    ``pts``, ``timestamps``: one entry per frame in presentation order; ``keyframe_pts``:
    sorted; ``fps``: the stream's average rate (or one derived from the timestamps).
    """

    container_format: str
    num_frames: int
    fps: float
    pts: np.ndarray  # int64 [num_frames], presentation order
    keyframe_pts: np.ndarray  # int64, sorted
    time_base: Fraction
    timestamps: np.ndarray  # float64 [num_frames], seconds from the first frame
    variable_frame_rate: bool
    width: int = 0
    height: int = 0
    duration: float = 0.0  # real seconds: first frame's start to last frame's end


def probe_video(path: Path) -> VideoProbe:
    """Demux ``path`` with PyAV (no decoding) into a :class:`VideoProbe`.

    Raises ``ValueError`` for a file FFmpeg cannot read, without a video stream, without
    frames or timestamps, damaged while demuxing, or a still image under a video's name.
    """
    av = require("av", purpose="Reading video files")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError as e:
        raise ValueError(f"{path.name} is not a video FFmpeg can read ({e}).") from e
    try:
        if not container.streams.video:
            kinds = ", ".join(s.type for s in container.streams) or "none"
            raise ValueError(
                f"{path.name} has no video stream (streams: {kinds}); pass a video file."
            )
        stream = container.streams.video[0]
        pts, keys = [], []
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the demuxer's flush packet
                    continue
                if packet.pts is None:
                    raise ValueError(
                        f"{path.name} has frames without timestamps; remux it, e.g. "
                        "ffmpeg -i in -c copy out.mp4."
                    )
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keys.append(packet.pts)
        except av.FFmpegError as e:
            raise ValueError(f"{path.name} is damaged: reading it failed with {e}.") from e
        if not pts:
            raise ValueError(f"{path.name} has a video stream but no frames.")
        rate = stream.average_rate or stream.guessed_rate
        time_base = stream.time_base
        container_format = container.format.name
        width, height = stream.codec_context.width, stream.codec_context.height
        codec = stream.codec_context.name
    finally:
        container.close()
    if is_still_image(container_format, codec, len(pts)):
        raise ValueError(
            f"{path.name} is a still image ({codec} in FFmpeg's {container_format!r} format), "
            "not a video, whatever its name says. Load it with vltools.load_image."
        )
    pts_sorted = np.sort(np.asarray(pts, dtype=np.int64))  # [num_frames]
    timestamps = (pts_sorted - pts_sorted[0]).astype(np.float64) * float(time_base)
    if rate is None or rate <= 0:  # no rate in the container: derive it from the timestamps
        span = timestamps[-1]
        rate = (len(pts) - 1) / span if span > 0 else 1.0
        logger.warning("%s declares no frame rate; using %.3f fps from its timestamps", path, rate)
    steps = np.diff(pts_sorted)
    vfr = bool(len(steps) > 1 and steps.max() - steps.min() > 1)
    # the last frame lasts as long as the typical frame before it (one frame period if alone)
    last = float(np.median(steps)) * float(time_base) if len(steps) else 1.0 / float(rate)
    return VideoProbe(
        container_format=container_format,
        num_frames=len(pts),
        fps=float(rate),
        pts=pts_sorted,
        keyframe_pts=np.sort(np.asarray(keys, dtype=np.int64)),
        time_base=time_base,
        timestamps=timestamps,
        variable_frame_rate=vfr,
        width=int(width or 0),
        height=int(height or 0),
        duration=float(timestamps[-1]) + last,
    )


# FFmpeg demuxers of single images, and codecs of still pictures: a file that FFmpeg reads
# through one of these with one frame is a picture, not a video.
_IMAGE_CODECS = frozenset(
    {"png", "apng", "mjpeg", "jpeg2000", "bmp", "gif", "webp", "tiff", "ppm", "pgm", "qoi"}
)


def is_still_image(container_format: str, codec: str, num_frames: int) -> bool:
    """Whether FFmpeg's reading of a file says it is a still picture rather than a video."""
    formats = set(container_format.split(","))
    if formats & {"image2", "image2pipe"} or any(f.endswith("_pipe") for f in formats):
        return True
    return num_frames == 1 and codec in _IMAGE_CODECS


# --- decoding -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodedFrames:
    """Frames decoded for a clip: ``arrays[k]`` is frame ``indices[k]``, shown at
    ``timestamps[k]`` seconds; ``num_frames`` and ``fps`` are the decoder's own counts."""

    arrays: list[np.ndarray]  # [H, W, 3] uint8 each, one per index
    indices: np.ndarray  # int64 [num_segments]
    timestamps: np.ndarray  # float64 [num_segments]
    num_frames: int
    fps: float


# Frames per decord get_batch call. Batches of 8 were faster than one call for all the frames
# (32 segments: 38 against 49 ms on the sample video, 527 against 840 ms on a 60 s 30 fps
# one), and they let tiling start while the rest decodes. Two readers, each on half of the
# frames, took the 60 s video from about 820 to 520 ms on 2 cores.
_DECORD_BATCH = 8


class DecordFailed(Exception):
    """decord could not open or decode a file (or numbers its frames unlike the container);
    the message says which. :func:`vltools.video.load_video` falls back to PyAV on it."""


def _open_decord(decord: Any, path: Path) -> Any:
    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except Exception as e:  # decord raises RuntimeError/DECORDError
        first = str(e).strip().splitlines()[-1][:200]
        raise DecordFailed(f"decord cannot open {path.name} ({first})") from e


def read_decord(
    path: Path,
    probe: VideoProbe,
    *,
    pick: Callable[[int, float], np.ndarray],
    on_frame: Callable[[int, np.ndarray], None] | None = None,
) -> DecodedFrames:
    """Sample and read the frames with decord.

    ``pick(num_frames, fps)`` chooses the indices from decord's own frame count and rate (as
    the card does). The frames are then read in batches of :data:`_DECORD_BATCH`; on a
    machine with two cores or more the first half of the frames on this thread and the second
    half on a thread of the shared pool (:mod:`vltools.threads`) with a second reader
    (decord decodes with the GIL released, and each reader seeks to its first frame's
    keyframe, as the card's ``vr[i]`` does).
    ``on_frame(k, array)`` is called, from either thread, for each frame as soon as its batch
    is read, so the caller can work on it while the rest decodes.
    """
    decord = require("decord", purpose="load_video(backend='decord')")
    reader = _open_decord(decord, path)
    try:
        num_frames = len(reader)
        fps = float(reader.get_avg_fps())
        if num_frames != probe.num_frames or not math.isclose(fps, probe.fps, rel_tol=1e-6):
            # sampling from other numbers would make frame n another frame than PyAV's n
            raise DecordFailed(
                f"decord reads {num_frames} frames at {fps:.6g} fps in {path.name}, the "
                f"container holds {probe.num_frames} at {probe.fps:.6g} fps, so the two "
                "backends would number (and sample) its frames differently"
            )
        indices = pick(num_frames, fps)
        timestamps = probe.timestamps[indices]
        wanted = indices.tolist()
        arrays: list[Any] = [None] * len(wanted)

        def read(source: Any, first: int, stop: int) -> None:
            for start in range(first, stop, _DECORD_BATCH):
                chunk = wanted[start : min(start + _DECORD_BATCH, stop)]
                try:
                    batch = source.get_batch(chunk).asnumpy()  # [len(chunk), H, W, 3] uint8
                except Exception as e:
                    first_line = str(e).strip().splitlines()[-1][:200]
                    raise DecordFailed(
                        f"decord could not decode frames {chunk} of {path.name} ({first_line}); "
                        "the file may be damaged. backend='pyav' conceals damaged frames instead"
                    ) from e
                for k, array in enumerate(batch, start):
                    arrays[k] = array
                    if on_frame is not None:
                        on_frame(k, array)

        from vltools.threads import on_pool_thread, shared_pool

        half = (len(wanted) + 1) // 2
        if len(wanted) < 2 or (os.cpu_count() or 1) < 2 or on_pool_thread():
            read(reader, 0, len(wanted))  # (a pool job never waits for another: no helper)
        else:

            def second_half() -> None:
                other = _open_decord(decord, path)
                try:
                    read(other, half, len(wanted))
                finally:
                    del other  # decord has no close(); dropping the reader closes the file

            future = shared_pool().submit(second_half)
            try:
                read(reader, 0, half)
            finally:
                future.exception()  # always wait for the other reader
            future.result()
    finally:
        del reader  # decord has no close(); dropping the reader closes the file
    return DecodedFrames(arrays, indices, timestamps, num_frames, fps)


def decode_pyav(path: Path, probe: VideoProbe, indices: np.ndarray) -> list[np.ndarray]:
    """The frames at ``indices`` (presentation order) as ``[H, W, 3]`` uint8 arrays, via PyAV.

    First by timestamps with seeking (:func:`_decode_seeking`); where that misses frames (a
    container whose seeking is coarse, such as MPEG-TS, or whose packet timestamps are not
    the frames', such as AVI with B-frames) by decoding from the start and counting frames.
    """
    av = require("av", purpose="load_video(backend='pyav')")
    wanted = {int(probe.pts[i]) for i in indices.tolist()}
    with av.open(str(path), metadata_errors="ignore") as container:
        try:
            found = _decode_seeking(container, probe, wanted)
        except _UnreliableTimestamps:
            found = {}
    arrays = [found.get(int(probe.pts[i])) for i in indices]
    if any(a is None for a in arrays):
        logger.info("%s: seeking by timestamp missed frames; decoding from the start", path)
        with av.open(str(path), metadata_errors="ignore") as container:
            by_index = _decode_counting(container, set(indices.tolist()))
        arrays = [by_index.get(int(i)) for i in indices]
    missing = [int(i) for i, a in zip(indices, arrays, strict=True) if a is None]
    if missing and len(missing) == len(arrays):
        raise ValueError(
            f"{path.name} has no decodable frames among {indices.tolist()}: the file is "
            "damaged or its codec is not supported. Re-encode it, e.g. with ffmpeg -i in out.mp4."
        )
    if missing:
        raise ValueError(
            f"Frames {missing} of {path.name} could not be decoded: the file is truncated or "
            "damaged there. Try a bound that avoids the damaged part, or re-encode the file."
        )
    return arrays


def _decode_seeking(container, probe: VideoProbe, wanted: set[int]) -> dict[int, np.ndarray]:
    """Frames by pts: seek to the keyframe before each wanted frame unless decoding is there.

    Frames no other frame refers to are skipped unless wanted (FFmpeg's
    ``skip_frame=NONREF``; the wanted ones decode exactly as they would otherwise), and only
    the wanted frames are converted to RGB. Packets that fail to decode are skipped, so FFmpeg
    conceals damage where it can.
    """
    stream = container.streams.video[0]
    stream.thread_type = "SLICE"  # frame threads would apply skip_frame changes late
    stream.codec_context.skip_frame = "NONREF"
    found: dict[int, np.ndarray] = {}
    position: int | None = None  # pts of the last decoded frame
    for target in sorted(wanted):
        if target in found:
            continue
        key = probe.keyframe_pts[probe.keyframe_pts <= target]
        key = int(key[-1]) if len(key) else int(probe.pts[0])
        at_start = position is None and key <= int(probe.pts[0])
        if not at_start and (position is None or position >= target or key > position):
            container.seek(key, stream=stream, backward=True, any_frame=False)
            position = None
        position = _decode_until(container, stream, target, wanted, found, position)
    return found


class _UnreliableTimestamps(Exception):
    """Decoded frames came out with timestamps out of order: frames cannot be found by pts."""


def _decode_counting(container, wanted: set[int]) -> dict[int, np.ndarray]:
    """Frames by number: decode from the start, counting frames as they come out."""
    av = require("av", purpose="load_video(backend='pyav')")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    found: dict[int, np.ndarray] = {}
    last, count = max(wanted), 0
    for packet in container.demux(stream):
        try:
            frames = stream.decode(packet)
        except av.FFmpegError as e:
            # a packet lost here would shift every later frame number by one: stop counting,
            # so the frames after it are reported missing rather than returned shifted
            logger.info(
                "a packet does not decode (%s); frames from %d on are not numbered", e, count
            )
            break
        for frame in frames:
            if count in wanted:
                found[count] = frame.to_ndarray(format="rgb24")  # [H, W, 3] uint8
            count += 1
        if count > last:
            break
    return found


def _decode_until(
    container, stream, target: int, wanted: set, found: dict, position: int | None
) -> int | None:
    """Decode forward until the frame with pts ``target`` (or a later one) has come out.

    ``position`` is the pts of the last frame out of the decoder (None after a seek); frames
    must come out with increasing pts, else :class:`_UnreliableTimestamps` is raised.
    """
    av = require("av", purpose="load_video(backend='pyav')")
    context = stream.codec_context
    packets = container.demux(stream)
    while True:
        packet = next(packets, None)
        keep = packet is None or packet.pts in wanted
        if keep:
            context.skip_frame = "DEFAULT"
        try:
            frames = stream.decode(packet)  # packet None: drain the decoder
        except av.FFmpegError as e:
            logger.debug("skipping a packet that does not decode: %s", e)
            frames = []
        finally:
            if keep:
                context.skip_frame = "NONREF"
        for frame in frames:
            if frame.pts is None or (position is not None and frame.pts <= position):
                raise _UnreliableTimestamps(frame.pts)
            position = frame.pts
            if frame.pts in wanted and frame.pts not in found:
                found[frame.pts] = frame.to_ndarray(format="rgb24")  # [H, W, 3] uint8
        if packet is None or (position is not None and position >= target):
            return position
