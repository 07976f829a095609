"""Video input: which frames the model card samples, decoding them, and the tiles they become.

Follows the InternVL2-1B model card's Quick Start (``get_index`` and ``load_video``): the
frames between the start and the end of the video (or of ``bound``, in seconds) are split into
``num_segments`` equal segments and the frame nearest the middle of each is taken; every frame
is tiled like an image (one 448-pixel tile at the card's ``max_num=1``); the prompt names them
``Frame1: <image>\\nFrame2: <image>\\n...``. transformers' own ``InternVLVideoProcessor``
samples different frames (format sheet, section 6.3); vltools follows the card.

- :func:`sample_frame_indices` is the card's ``get_index``, pure, with a ``ValueError`` where the
  card would read outside the video.
- :func:`load_video` decodes the chosen frames with decord (the card's choice; one batched call)
  or PyAV (the fallback where decord has no wheels), tiles each with
  :func:`vltools.images.load_image`, and returns a :class:`VideoClip`.

Before decoding, the file is probed with PyAV (demuxing only, no decoding): that gives clear
errors for missing, empty and non-video files before a decoder sees them, and the presentation
time of every frame, so both backends report the same timestamps. Frames are numbered in
presentation order, as decord does. Every file handle is closed on every path, and every loop
is bounded by the file's packets, so a damaged file ends in an error, never a hang.

``backend="auto"`` takes decord, except for AVI and MPEG-TS files, where decord 0.6 returns
other frames than the ones asked for, and except where decord cannot read a file PyAV can (a
truncated MP4); both with a warning in the second case. On 8-bit video both decoders give
identical pixels; on 10-bit video their RGB conversions differ by a few levels.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from vltools._optional import require
from vltools.constants import IMAGE_PLACEHOLDER, TILE_SIZE

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

    from vltools.images import TiledImage

logger = logging.getLogger(__name__)

Backend = Literal["auto", "decord", "pyav"]
BACKENDS: tuple[str, ...] = ("auto", "decord", "pyav")

# The card's get_index stands in +-100000 seconds for "no bound".
_NO_BOUND: tuple[float, float] = (-100000.0, 100000.0)


# --- which frames ---------------------------------------------------------------------------


def frame_range(
    num_frames: int, fps: float, *, bound: Sequence[float] | None = None, first_idx: int = 0
) -> tuple[int, int]:
    """The first and last frame index the card's segments span: ``(start_idx, end_idx)``.

    ``start_idx = max(first_idx, round(start * fps))`` and
    ``end_idx = min(round(end * fps), num_frames - 1)``, as in the card's ``get_index``; without
    ``bound`` that is ``(first_idx, num_frames - 1)``. Raises ``ValueError`` where the range is
    empty or reversed, that is where the card's code would read outside the video.
    """
    _check_int("num_frames", num_frames, minimum=1, fix="The video has no frames to sample.")
    _check_int("first_idx", first_idx, minimum=0, fix="Pass 0 to start at the first frame.")
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not math.isfinite(fps):
        raise TypeError(f"fps must be a finite number of frames per second, got {fps!r}.")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps!r}.")
    start, end = _check_bound(bound)
    max_frame = num_frames - 1
    if first_idx > max_frame:
        raise ValueError(
            f"first_idx={first_idx} is past the last frame ({max_frame}) of a {num_frames}-frame "
            "video; pass a first_idx below num_frames."
        )
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    if start_idx > end_idx:
        duration = num_frames / fps
        raise ValueError(
            f"bound={tuple(bound) if bound is not None else None} selects no frames of a "
            f"{duration:.3f}-second video ({num_frames} frames at {fps:g} fps, first_idx="
            f"{first_idx}): it maps to frames {start_idx}..{end_idx}. Pass a bound that "
            f"overlaps [0, {duration:.3f}) seconds, or bound=None for the whole video."
        )
    return start_idx, end_idx


def sample_frame_indices(
    num_frames: int,
    fps: float,
    *,
    num_segments: int = 8,
    bound: Sequence[float] | None = None,
    first_idx: int = 0,
) -> np.ndarray:
    """The frame indices the model card's ``get_index`` picks: int64 array ``[num_segments]``.

    The span :func:`frame_range` gives is cut into ``num_segments`` equal segments of
    ``seg = (end_idx - start_idx) / num_segments`` frames, and segment ``k`` contributes
    ``int(start_idx + seg / 2 + round(seg * k))`` (numpy's round-half-to-even, as the card).
    Short videos repeat frames. The result is sorted and lies in ``[0, num_frames - 1]``.

    ``bound`` is ``(start, end)`` in seconds, converted to frames with ``fps``; ``first_idx``
    is the lowest frame allowed. Raises ``ValueError`` for ``num_segments < 1``, an empty
    video, a bound with ``start >= end``, and wherever the card's code would read outside the
    video (a bound past the end, ``first_idx`` past the last frame).
    """
    _check_int("num_segments", num_segments, minimum=1, fix="Sample at least one frame.")
    start_idx, end_idx = frame_range(num_frames, fps, bound=bound, first_idx=first_idx)
    seg_size = float(end_idx - start_idx) / num_segments
    steps = np.round(seg_size * np.arange(num_segments, dtype=np.float64))  # [num_segments]
    # same operation order as the card: (start_idx + seg_size / 2) + round(seg_size * k)
    indices = np.trunc((start_idx + seg_size / 2) + steps).astype(np.int64)
    return indices


def _check_int(name: str, value: Any, *, minimum: int, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}. {fix}")


def _check_bound(bound: Sequence[float] | None) -> tuple[float, float]:
    if bound is None:
        return _NO_BOUND
    try:
        start, end = (float(x) for x in bound)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"bound must be None or (start, end) in seconds, got {bound!r}; "
            "for example bound=(1.0, 3.5)."
        ) from e
    if not (math.isfinite(start) and math.isfinite(end)):
        raise ValueError(f"bound must be finite seconds, got {bound!r}.")
    if start >= end:
        raise ValueError(
            f"bound={tuple(bound)!r} starts at or after its end; pass (start, end) with "
            "start < end, in seconds."
        )
    return start, end


# --- the clip -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoClip:
    """Frames sampled from a video the model card's way, tiled and ready for the model.

    Attributes:
        source: the file name the frames came from.
        pixel_values: float32 ``[sum(num_patches_list), 3, 448, 448]``, ImageNet-normalised,
            the tiles of frame 0, then of frame 1, ... (each frame's thumbnail last).
        num_patches_list: tiles per frame, ``len == num_segments``.
        frame_indices: int64 ``[num_segments]``, the sampled frames, in presentation order.
        timestamps: float64 ``[num_segments]``, presentation time of each sampled frame in
            seconds from the first frame.
        fps: the stream's average frame rate (what the card's ``bound`` arithmetic uses).
        duration: ``num_frames / fps`` seconds.
        num_frames: frames in the video.
        frames: the sampled frames as RGB PIL images, one per segment.
        tiled: one :class:`~vltools.images.TiledImage` per frame, each with its ``TileGrid``;
            their ``pixel_values`` are views into ``pixel_values``.
        bound: the ``(start, end)`` seconds asked for, or None for the whole video.
        backend: the decoder used, ``"decord"`` or ``"pyav"``.
        variable_frame_rate: True where the frames are not evenly spaced in time.
    """

    source: str
    pixel_values: torch.Tensor
    num_patches_list: tuple[int, ...]
    frame_indices: np.ndarray
    timestamps: np.ndarray
    fps: float
    duration: float
    num_frames: int
    frames: tuple[Image.Image, ...]
    tiled: tuple[TiledImage, ...]
    bound: tuple[float, float] | None = None
    backend: str = "decord"
    variable_frame_rate: bool = False

    @property
    def num_segments(self) -> int:
        """Number of sampled frames."""
        return len(self.num_patches_list)

    @property
    def num_image_tokens(self) -> int:
        """Image tokens the clip costs in the prompt (256 per tile, thumbnails included)."""
        return sum(t.grid.num_image_tokens for t in self.tiled)

    def prompt_prefix(self) -> str:
        """The card's video prompt prefix: ``"Frame1: <image>\\nFrame2: <image>\\n..."``."""
        return "".join(f"Frame{i + 1}: {IMAGE_PLACEHOLDER}\n" for i in range(self.num_segments))

    def to(self, device: Any = None, dtype: Any = None) -> VideoClip:
        """A copy with ``pixel_values`` (and the per-frame views) moved and/or cast.

        ``dtype`` may be a ``torch.dtype`` or its name (``"bfloat16"``).
        """
        if isinstance(dtype, str):  # a name such as "bfloat16": the loader's own resolution
            from vltools.models import resolve_dtype

            dtype = resolve_dtype(dtype, None)
        pixel_values = self.pixel_values.to(device=device, dtype=dtype)
        return dataclasses.replace(
            self, pixel_values=pixel_values, tiled=_tiled_views(self.tiled, pixel_values)
        )

    def _repr_png_(self) -> bytes:
        """The frame strip (:func:`vltools.viz.show_frames`) for notebooks."""
        from vltools.viz import figure_to_png, show_frames

        return figure_to_png(show_frames(self), dpi=72)

    def __repr__(self) -> str:
        bound = "" if self.bound is None else f", bound={self.bound}"
        return (
            f"VideoClip({Path(self.source).name!r}, {self.num_segments} frames "
            f"{self.frame_indices.tolist()} of {self.num_frames} at {self.fps:g} fps{bound}, "
            f"{int(sum(self.num_patches_list))} tiles, {self.num_image_tokens} image tokens, "
            f"backend={self.backend!r})"
        )


def _tiled_views(tiled: Sequence[TiledImage], pixel_values: torch.Tensor) -> tuple:
    """Each TiledImage with its pixel_values replaced by its slice of ``pixel_values``."""
    out, offset = [], 0
    for t in tiled:
        n = t.num_patches
        out.append(dataclasses.replace(t, pixel_values=pixel_values[offset : offset + n]))
        offset += n
    return tuple(out)


# --- loading --------------------------------------------------------------------------------


def load_video(
    source: str | os.PathLike[str],
    *,
    num_segments: int = 8,
    max_num: int = 1,
    bound: Sequence[float] | None = None,
    backend: Backend = "auto",
) -> VideoClip:
    """Sample ``num_segments`` frames of the video at ``source`` and tile them, as the card does.

    ``max_num`` is the most tiles per frame (the card's default 1: one 448-pixel tile per
    frame; above 1 each frame is tiled like an image, thumbnail included). ``bound`` is
    ``(start, end)`` in seconds. ``backend`` is ``"decord"`` (the card's decoder), ``"pyav"``,
    or ``"auto"``: decord where it imports, PyAV otherwise, and PyAV for AVI and MPEG-TS files
    (where decord returns wrong frames) and for files decord fails on (with a warning).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file that is not
    a video, has no video stream, has no decodable frames, or is damaged where a sampled
    frame lies.
    """
    _check_int("num_segments", num_segments, minimum=1, fix="Sample at least one frame.")
    _check_int("max_num", max_num, minimum=1, fix="Use max_num=1 for one tile per frame.")
    _check_bound(bound)
    path = _check_path(source)
    chosen = _choose_backend(backend)
    probe = _probe(path)
    frames = None
    if chosen == "decord" and probe.container_format in _DECORD_MISSEEKS:
        if backend == "auto" and "pyav" in available_backends():
            chosen = "pyav"  # decord returns other frames than asked for in these containers
        else:
            warnings.warn(
                f"decord seeks inaccurately in {probe.container_format} files and may return "
                f"other frames than {path.name}'s frames asked for; backend='pyav' is exact.",
                stacklevel=2,
            )
    if chosen == "decord":
        try:
            frames = _read_decord(path, probe, num_segments=num_segments, bound=bound)
        except _DecordFailed as e:
            if backend == "decord":
                raise ValueError(str(e)) from e
            warnings.warn(f"{e}; decoding with PyAV instead.", stacklevel=2)
            chosen = "pyav"
    if frames is None:
        indices = sample_frame_indices(
            probe.num_frames, probe.fps, num_segments=num_segments, bound=bound
        )
        frames = _Frames(
            arrays=_decode_pyav(path, probe, indices),
            indices=indices,
            timestamps=probe.timestamps[indices],
            num_frames=probe.num_frames,
            fps=probe.fps,
        )
    if probe.variable_frame_rate:
        warnings.warn(
            f"{path.name} has a variable frame rate. Frames are sampled evenly in frame "
            f"numbers, as the model card does, not in time, and bound seconds are converted "
            f"with the average rate ({frames.fps:.3f} fps); timestamps are the frames' real "
            "times.",
            stacklevel=2,
        )
    return _make_clip(
        path,
        frames,
        max_num=max_num,
        bound=None if bound is None else (float(bound[0]), float(bound[1])),
        backend=chosen,
        variable_frame_rate=probe.variable_frame_rate,
    )


def tile_frames(frames: Sequence[Image.Image], *, max_num: int = 1) -> list[TiledImage]:
    """Tile each frame through :func:`vltools.images.load_image`, with the card's settings.

    Frames are independent, so they are tiled on a few threads (PIL's resize and numpy's
    gathers release the GIL); the result is in frame order and identical to a serial loop.
    """
    from concurrent.futures import ThreadPoolExecutor

    workers = min(len(frames), os.cpu_count() or 1, 4)
    if workers <= 1:
        return [_tile_frame(frame, max_num) for frame in frames]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vltools-frames") as pool:
        return list(pool.map(_tile_frame, frames, [max_num] * len(frames)))


def _tile_frame(frame: Image.Image, max_num: int) -> TiledImage:
    from vltools.images import load_image

    return load_image(
        frame,
        max_num=max_num,
        min_num=1,
        image_size=TILE_SIZE,
        use_thumbnail=True,
        exif_transpose=False,  # decoded frames carry no EXIF; the card ignores it anyway
    )


def _make_clip(
    path: Path,
    frames: _Frames,
    *,
    max_num: int,
    bound: tuple[float, float] | None,
    backend: str,
    variable_frame_rate: bool,
) -> VideoClip:
    torch = require("torch", purpose="vltools.load_video")
    pil = require("PIL.Image", purpose="vltools.load_video")
    images = tuple(pil.fromarray(a).convert("RGB") for a in frames.arrays)  # each [H, W, 3]
    tiled = tile_frames(images, max_num=max_num)
    pixel_values = torch.cat([t.pixel_values for t in tiled])  # [sum(tiles), 3, 448, 448]
    return VideoClip(
        source=str(path),
        pixel_values=pixel_values,
        num_patches_list=tuple(int(t.num_patches) for t in tiled),
        frame_indices=frames.indices,
        timestamps=np.asarray(frames.timestamps, dtype=np.float64),
        fps=float(frames.fps),
        duration=frames.num_frames / float(frames.fps),
        num_frames=int(frames.num_frames),
        frames=images,
        tiled=_tiled_views(tiled, pixel_values),
        bound=bound,
        backend=backend,
        variable_frame_rate=variable_frame_rate,
    )


def _check_path(source: Any) -> Path:
    if isinstance(source, VideoClip):
        raise TypeError("load_video got a VideoClip; it is already loaded, use it directly.")
    if not isinstance(source, str | os.PathLike):
        raise TypeError(
            f"load_video needs a path to a video file (str or Path), got {type(source).__name__}."
        )
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"No video file at {str(path)!r}; check the path.")
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not a file; pass the path of a video file.")
    if path.stat().st_size == 0:
        raise ValueError(f"{str(path)!r} is empty (0 bytes), not a video.")
    return path


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


def _choose_backend(backend: str) -> str:
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

# Containers where decord 0.6 returned other frames than the ones asked for (tests/
# test_video_files.py): sparse reads from AVI with B-frames, any read from MPEG-TS.
_DECORD_MISSEEKS: frozenset[str] = frozenset({"avi", "mpegts"})


@dataclass(frozen=True)
class _Probe:
    container_format: str
    num_frames: int
    fps: float
    pts: np.ndarray  # int64 [num_frames], presentation order
    keyframe_pts: np.ndarray  # int64, sorted
    time_base: Fraction
    timestamps: np.ndarray  # float64 [num_frames], seconds from the first frame
    variable_frame_rate: bool


def _probe(path: Path) -> _Probe:
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
    finally:
        container.close()
    pts_sorted = np.sort(np.asarray(pts, dtype=np.int64))  # [num_frames]
    timestamps = (pts_sorted - pts_sorted[0]).astype(np.float64) * float(time_base)
    if rate is None or rate <= 0:  # no rate in the container: derive it from the timestamps
        span = timestamps[-1]
        rate = (len(pts) - 1) / span if span > 0 else 1.0
        logger.warning("%s declares no frame rate; using %.3f fps from its timestamps", path, rate)
    steps = np.diff(pts_sorted)
    vfr = bool(len(steps) > 1 and steps.max() - steps.min() > 1)
    return _Probe(
        container_format=container_format,
        num_frames=len(pts),
        fps=float(rate),
        pts=pts_sorted,
        keyframe_pts=np.sort(np.asarray(keys, dtype=np.int64)),
        time_base=time_base,
        timestamps=timestamps,
        variable_frame_rate=vfr,
    )


# --- decoding -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Frames:
    arrays: list[np.ndarray]  # [H, W, 3] uint8 each, one per index
    indices: np.ndarray  # int64 [num_segments]
    timestamps: np.ndarray  # float64 [num_segments]
    num_frames: int
    fps: float


class _DecordFailed(Exception):
    pass


def _read_decord(
    path: Path, probe: _Probe, *, num_segments: int, bound: Sequence[float] | None
) -> _Frames:
    """Sample and read the frames with decord: its frame count and rate, one batched read."""
    decord = require("decord", purpose="load_video(backend='decord')")
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except Exception as e:  # decord raises RuntimeError/DECORDError
        first = str(e).strip().splitlines()[-1][:200]
        raise _DecordFailed(f"decord cannot open {path.name} ({first})") from e
    try:
        num_frames = len(reader)
        fps = float(reader.get_avg_fps())
        indices = sample_frame_indices(num_frames, fps, num_segments=num_segments, bound=bound)
        if num_frames == probe.num_frames:
            timestamps = probe.timestamps[indices]
        else:
            warnings.warn(
                f"decord counts {num_frames} frames in {path.name}, the container "
                f"{probe.num_frames}; following decord, as the model card does.",
                stacklevel=3,
            )
            timestamps = reader.get_frame_timestamp(indices.tolist())[:, 0]
        try:
            batch = reader.get_batch(indices.tolist()).asnumpy()  # [n, H, W, 3] uint8
        except Exception as e:
            first = str(e).strip().splitlines()[-1][:200]
            raise _DecordFailed(
                f"decord could not decode frames {indices.tolist()} of {path.name} ({first}); "
                "the file may be damaged. backend='pyav' conceals damaged frames instead"
            ) from e
    finally:
        del reader  # decord has no close(); dropping the reader closes the file
    return _Frames(list(batch), indices, timestamps, num_frames, fps)


def _decode_pyav(path: Path, probe: _Probe, indices: np.ndarray) -> list[np.ndarray]:
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


def _decode_seeking(container, probe: _Probe, wanted: set[int]) -> dict[int, np.ndarray]:
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
            logger.debug("skipping a packet that does not decode: %s", e)
            continue
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
