"""Experiments on Ray Data: the same cells, the same batched code, past one machine.

``Experiment.run(source, engine="ray", address=None, num_workers=2, gpus_per_worker=0)``:

1. The cells not stored yet are written as the **plan**: Parquet files of at most
   :data:`BLOCK_ROWS` rows under ``output/plan/``, sorted by setting and tile count so that
   batches share them; each file becomes one block of the dataset (so rows stream out instead
   of arriving all at the end, and every actor gets work).
2. **Tiling** runs as Ray CPU tasks (:func:`vltools.cells.prepare`).
3. The **model** runs in an actor pool (``ray.data.ActorPoolStrategy``, ``num_gpus`` per actor
   from ``gpus_per_worker``); each actor loads the model once and answers batches with
   :func:`vltools.cells.answer_batch`, the code the in-process engine uses. Actors are
   restarted and their tasks retried when a worker dies.
4. The driver appends each batch of rows to the experiment's store as it arrives (one Parquet
   file per batch, named by its ids: a retried batch replaces its own file), so an interrupt
   loses at most the batches in flight, and the next run computes only the missing ids.

With ``address=None`` vltools starts a local Ray (no dashboard, localhost only, a small object
store, and more logical CPUs than cores so that model actors cannot take every CPU and starve
the tiling tasks) and shuts it down afterwards; an already running Ray in this process is used
and left running. ``address="auto"`` or ``"ray://host:10001"`` joins a cluster (vltools is
shipped to it with ``runtime_env``; the images, and the plan folder under ``output``, must be
on storage every node sees; the plan travels through Ray's object store). An address that does not answer is reported before any model work.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vltools._optional import require
from vltools.cells import Cell, Prepared, answer_batch, prepare

if TYPE_CHECKING:  # pragma: no cover
    from vltools.experiments import Experiment

__all__ = [
    "run_on_ray",
    "start_local",
    "connect",
    "check_reachable",
    "RayAddressError",
    "BLOCK_ROWS",
    "MIN_RAY",
]

logger = logging.getLogger(__name__)

BLOCK_ROWS = 24  # plan rows per Parquet file (= per block)
MIN_RAY = (2, 54)
LOCAL_OBJECT_STORE = 512 * 1024**2  # bytes; the tiles of a few batches
CONNECT_TIMEOUT_S = 5.0
TILING_CPUS = 0.5


class RayAddressError(ConnectionError):
    """A Ray address that does not answer."""


def _ray() -> Any:
    ray = require("ray", purpose="engine='ray' (pip install 'ray[data]>=2.54')")
    require("ray.data", purpose="engine='ray' (pip install 'ray[data]>=2.54')")
    version = tuple(int(x) for x in ray.__version__.split(".")[:2])
    if version < MIN_RAY:
        raise ImportError(
            f"engine='ray' needs Ray {'.'.join(map(str, MIN_RAY))} or newer, found "
            f"{ray.__version__}; pip install -U 'ray[data]>=2.54'."
        )
    return ray


def _package_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


def start_local(*, num_workers: int = 2, gpus_per_worker: float = 0) -> None:
    """Start a local Ray for this process (see the module docstring)."""
    ray = _ray()
    cores = os.cpu_count() or 1
    shm = _shm_bytes()
    store = LOCAL_OBJECT_STORE if shm is None else min(LOCAL_OBJECT_STORE, int(shm * 0.5))
    if shm is not None and shm < 2 * LOCAL_OBJECT_STORE:
        logger.warning(
            "/dev/shm holds %d MiB; Ray's object store gets %d MiB.", shm >> 20, store >> 20
        )
    path = os.pathsep.join(p for p in (_package_root(), os.environ.get("PYTHONPATH")) if p)
    # A busy machine can take longer than Ray's default 30 s to register the raylet.
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "180")
    ray.init(
        address="local",
        num_cpus=cores
        + num_workers,  # one logical CPU per actor beyond the cores: tiling never starves
        num_gpus=None if gpus_per_worker else 0,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        object_store_memory=store,
        log_to_driver=False,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false"}},
    )


def _shm_bytes() -> int | None:
    try:
        stat = os.statvfs("/dev/shm")
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def check_reachable(address: str) -> None:
    """Raise :class:`RayAddressError` (ValueError for a malformed address) when the host and
    port of ``address`` do not accept a connection; ``"auto"`` is left to Ray."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(
            f"address={address!r} is not a Ray address; expected 'auto', "
            "'ray://host:10001' (Ray Client) or 'host:6379' (the head's GCS)."
        )
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise RayAddressError(
            f"The Ray cluster at {address!r} does not answer ({e}). Check that the head node "
            "runs (`ray status` there) and that the port is reachable from here, or pass "
            "address=None to start a local Ray on this machine."
        ) from e


def connect(address: str) -> None:
    """Join the Ray cluster at ``address`` (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``).

    Raises :class:`RayAddressError` naming the address and the fix when it does not answer.
    """
    ray = _ray()
    check_reachable(address)
    try:
        ray.init(
            address=address,
            log_to_driver=False,
            runtime_env={"py_modules": [str(Path(__file__).resolve().parent)]},
        )
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise RayAddressError(
            f"Could not join the Ray cluster at {address!r}: {e}. With 'auto', start one first "
            "(`ray start --head`) or pass address=None to start a local Ray."
        ) from e


# --------------------------------------------------------------------------- the plan


def plan_rows(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """Cells as Parquet rows: paths kept, other images as PNG bytes (tensors refused)."""
    rows = []
    for c in sorted(cells, key=lambda c: (c.setting, -1 if c.tiles is None else c.tiles)):
        images, blobs = [], []
        for item in c.images:
            if isinstance(item, (str, os.PathLike)):
                images.append({"path": os.fspath(item)})
            else:
                images.append({"blob": len(blobs)})
                blobs.append(_png(item, c))
        rows.append(
            {
                "id": c.id,
                "sample": c.sample,
                "prompt": c.prompt,
                "setting": c.setting,
                "question": c.question,
                "references": json.dumps(list(c.references), ensure_ascii=False),
                "options": json.dumps(c.options, default=str),
                "images": json.dumps(images),
                "blobs": blobs,
                "video": c.video,
                "num_segments": c.num_segments,
                "tiles": c.tiles,
            }
        )
    return rows


def _png(item: Any, cell: Cell) -> bytes:
    import io

    from PIL import Image

    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, Image.Image):
        buffer = io.BytesIO()
        item.save(buffer, format="PNG")
        return buffer.getvalue()
    raise TypeError(
        f"Sample {cell.sample!r} holds an image of type {type(item).__name__}, which cannot be "
        "sent to Ray workers; give image files, bytes or PIL images (tiled tensors stay "
        "in-process: use engine='local')."
    )


def cell_from_row(row: Mapping[str, Any]) -> Cell:
    """The :class:`Cell` of a plan row (the inverse of :func:`plan_rows`)."""
    blobs = list(row.get("blobs") or [])
    images = tuple(
        i["path"] if "path" in i else bytes(blobs[i["blob"]]) for i in json.loads(row["images"])
    )
    tiles = row.get("tiles")
    return Cell(
        id=row["id"],
        sample=row["sample"],
        prompt=row["prompt"],
        setting=row["setting"],
        question=row["question"],
        references=tuple(json.loads(row["references"])),
        options=json.loads(row["options"]),
        images=images,
        video=row.get("video") or None,
        num_segments=int(row["num_segments"]),
        tiles=None if tiles is None or tiles != tiles else int(tiles),
    )


def block_rows(total: int, *, batch_size: int, num_workers: int) -> int:
    """Rows per plan file: enough blocks to keep every worker busy twice over, each at least
    one batch and at most :data:`BLOCK_ROWS` (a small plan never becomes one block)."""
    per_block = -(-total // (2 * num_workers))  # ceil
    return max(1, min(BLOCK_ROWS, max(batch_size, per_block)))


def write_plan(
    cells: Sequence[Cell], folder: Path, *, rows_per_block: int = BLOCK_ROWS
) -> list[str]:
    """The plan as Parquet files of ``rows_per_block`` rows in ``folder`` (replaced)."""
    pa = require("pyarrow", purpose="engine='ray'")
    pq = require("pyarrow.parquet", purpose="engine='ray'")
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("block-*.parquet"):
        old.unlink()
    rows = plan_rows(cells)
    paths = []
    for n, start in enumerate(range(0, len(rows), rows_per_block)):
        path = folder / f"block-{n:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows[start : start + rows_per_block]), path)
        paths.append(str(path))
    return paths


# --------------------------------------------------------------------------- the stages


def tile_row(row: dict[str, Any]) -> dict[str, Any]:
    """Ray CPU task: a plan row with its cell's tiles (float32 bytes) or its error."""
    prepared = prepare(cell_from_row(row))
    pixels = prepared.pixel_values
    return {
        **row,
        "pixels": b"" if pixels is None else pixels.contiguous().numpy().tobytes(),
        "shape": json.dumps([] if pixels is None else list(pixels.shape)),
        "patches": json.dumps(list(prepared.patches)),
        "text": prepared.text,
        "error": prepared.error,
        "prep_seconds": prepared.seconds,
    }


class ModelWorker:
    """Ray actor: loads the model once, answers batches with :func:`answer_batch`."""

    def __init__(self, source: str, dtype: str, device: str, threads: int | None):
        torch = require("torch", purpose="engine='ray'")
        if threads:
            torch.set_num_threads(threads)
        from vltools.models import load_model

        self.vlm = load_model(source, device=device, dtype=dtype)
        self.pid = os.getpid()

    def __call__(self, batch: Any) -> Any:
        import numpy as np
        import pandas as pd
        import torch

        prepared = []
        for row in batch.to_dict(orient="records"):
            shape = json.loads(row["shape"])
            pixels = None
            if shape:
                array = np.frombuffer(row["pixels"], dtype=np.float32).reshape(shape)
                pixels = torch.from_numpy(array.copy())
            prepared.append(
                Prepared(
                    cell_from_row(row),
                    pixels,
                    tuple(json.loads(row["patches"])),
                    row["text"],
                    row["error"],
                    float(row["prep_seconds"]),
                )
            )
        groups: dict[tuple[str, int], list[Prepared]] = {}
        for p in prepared:
            groups.setdefault(p.cell.group(), []).append(p)
        rows = [r for group in groups.values() for r in answer_batch(self.vlm, group)]
        for r in rows:
            r["worker_pid"] = self.pid
        return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the run


def run_on_ray(
    exp: Experiment,
    source: Any,
    *,
    address: str | None = None,
    num_workers: int = 2,
    gpus_per_worker: float = 0,
    batch_size: int = 8,
    dtype: str | None = None,
    progress: bool = True,
    on_rows: Callable[[list[dict[str, Any]]], None] | None = None,
) -> int:
    """Run ``exp``'s missing cells on Ray Data; returns how many rows were stored.

    ``on_rows`` is called with each batch of stored rows (with the ``worker_pid`` that
    answered them), after they are stored.
    """
    from vltools.store import source_fingerprint

    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"engine='ray' needs the model's source (a Hub id, a folder, 'tiny' or 'toy'), got "
            f"{type(source).__name__}: each worker loads its own copy. Pass the string you gave "
            "load_model, or use engine='local' for a loaded model."
        )
    if not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers={num_workers!r}; expected an int >= 1.")
    if gpus_per_worker < 0:
        raise ValueError(f"gpus_per_worker={gpus_per_worker!r}; expected a number >= 0.")
    if exp.store.folder is None:
        raise ValueError(
            "engine='ray' needs an output folder for the plan and the results; pass output=..."
        )
    ray = _ray()
    dtype = dtype or ("bfloat16" if gpus_per_worker else "float32")
    source = os.fspath(source)
    if address is not None:
        check_reachable(address)  # before any model work, even when Ray already runs here
    started = False
    if not ray.is_initialized():
        if address is None:
            start_local(num_workers=num_workers, gpus_per_worker=gpus_per_worker)
        else:
            connect(address)
        started = True
    try:
        fingerprint = source_fingerprint(source, dtype=dtype)
        exp.begin(fingerprint)
        todo = exp.missing(fingerprint)
        if not todo:
            return 0
        size = block_rows(len(todo), batch_size=batch_size, num_workers=num_workers)
        paths = write_plan(todo, exp.store.folder / "plan", rows_per_block=size)
        return _execute(
            ray, exp, paths, source=source, dtype=dtype, num_workers=num_workers,
            gpus_per_worker=gpus_per_worker, batch_size=batch_size, total=len(todo),
            progress=progress, on_rows=on_rows, local=address is None,
        )  # fmt: skip
    finally:
        if started:
            ray.shutdown()


def _execute(
    ray: Any,
    exp: Experiment,
    paths: list[str],
    *,
    source: str,
    dtype: str,
    num_workers: int,
    gpus_per_worker: float,
    batch_size: int,
    total: int,
    progress: bool,
    on_rows: Callable | None,
    local: bool,
) -> int:
    from vltools.store import ROW_COLUMNS

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-run INFO lines in notebooks
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    context.max_errored_blocks = 0
    threads = None
    if local and not gpus_per_worker:
        threads = max(1, (os.cpu_count() or 1) // num_workers)
    # One block per plan file, put by the driver: several actors get work, rows stream out,
    # and the workers of a remote cluster need not see the plan folder. (read_parquet may read
    # small files in one task, and its path resolution races on an optional fsspec import.)
    pq = require("pyarrow.parquet", purpose="engine='ray'")
    ds = ray.data.from_arrow([pq.read_table(p) for p in paths])
    # Tiling as CPU tasks of their own: half a CPU each, which also keeps Ray from fusing them
    # into the model actors (it fuses maps whose resources are equal).
    # Fault tolerance is Ray Data's own default, which is what a resumable run wants: a task or
    # an actor lost with its worker process is run again (tasks: max_retries=-1 on system
    # errors; actors: max_restarts=-1, max_task_retries=-1), and the store's batch files make
    # a retry idempotent. They are not passed: Ray 2.60 deprecates passing them through
    # map/map_batches (**ray_remote_args) and Ray 2.64 removes it.
    ds = ds.map(tile_row, num_cpus=TILING_CPUS)
    ds = ds.map_batches(
        ModelWorker,
        fn_constructor_kwargs={
            "source": source,
            "dtype": dtype,
            "device": "cuda" if gpus_per_worker else "cpu",
            "threads": threads,
        },
        batch_size=batch_size,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=num_workers),
        num_gpus=gpus_per_worker,
        num_cpus=1,
    )
    bar = None
    if progress:
        tqdm = require("tqdm.auto", purpose="The experiment's progress bar")
        bar = tqdm.tqdm(total=total, desc="experiment (ray)", unit="row")
    stored = 0
    start = time.perf_counter()
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pandas"):
            rows = batch.to_dict(orient="records")
            exp.store.append([{c: r.get(c) for c in ROW_COLUMNS} for r in rows])
            stored += len(rows)
            if bar is not None:
                bar.update(len(rows))
            if on_rows is not None:
                on_rows(rows)
    finally:
        if bar is not None:
            bar.close()
    logger.info("Ray run: %d rows in %.1f s.", stored, time.perf_counter() - start)
    return stored
