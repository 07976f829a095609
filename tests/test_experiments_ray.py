"""engine="ray" on a local Ray with the tiny model: same rows as in-process, exactly once after a
killed worker, resume after a stop; an address that does not answer is refused up front."""

from __future__ import annotations

import json
import os
import signal
import warnings

import pytest

from vltools.cluster import RayAddressError, block_rows, cell_from_row, plan_rows
from vltools.experiments import Experiment

pytest.importorskip("ray")

SIZES = [(448, 448), (900, 300), (300, 900), (640, 480)]
SETTINGS = {"t1": {"max_num": 1, "max_new_tokens": 4}, "t2": {"max_num": 2, "max_new_tokens": 4}}


def exact(prediction: str, references: list[str]) -> float:
    return float(prediction.strip() in references)


@pytest.fixture
def charts(tmp_path, labelled_folder):
    return labelled_folder(
        tmp_path / "charts",
        SIZES,
        colour=lambda i: (50 * i, 90, 200 - 40 * i),
        question="Bar {i}?",
    )


def make(charts, output):
    prompts = {"short": "{question} One word.", "plain": "{question}"}
    return Experiment(charts, prompts=prompts, settings=SETTINGS, metric=exact, output=output)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (vltools uses a Ray already running and leaves it up)."""
    import ray

    from vltools.cluster import start_local

    start_local(num_workers=2)
    yield
    ray.shutdown()


def test_plan_rows_carry_every_cell_to_the_workers_and_back(charts, tmp_path):
    cells = make(charts, tmp_path / "out").cells("fp")
    back = {c.id: c for c in map(cell_from_row, plan_rows(cells))}
    for c in cells:
        again = back[c.id]
        assert (again.question, again.options, again.images, again.tiles) == (
            c.question, c.options, c.images, c.tiles,
        )  # fmt: skip
    assert block_rows(16, batch_size=4, num_workers=2) == 4  # a small plan is several blocks
    assert block_rows(10_000, batch_size=8, num_workers=2) == 24


def test_an_address_that_does_not_answer_is_refused_before_model_work(charts, tmp_path):
    exp = make(charts, tmp_path / "out")
    with pytest.raises(RayAddressError, match=r"127\.0\.0\.1:9.*does not answer.*address=None"):
        exp.run("tiny", engine="ray", address="ray://127.0.0.1:9")
    with pytest.raises(ValueError, match="not a Ray address"):
        exp.run("tiny", engine="ray", address="my-cluster")
    assert not (tmp_path / "out" / "rows").exists()


@pytest.mark.slow
def test_ray_gives_the_rows_of_the_in_process_run(charts, tiny_model, tmp_path, local_ray):
    local = make(charts, tmp_path / "local").run(tiny_model, batch_size=4, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        remote = make(charts, tmp_path / "ray").run(
            "tiny", engine="ray", num_workers=2, batch_size=4, progress=False
        )
    # what vltools passes to map/map_batches is not deprecated (Ray 2.64 removes their
    # **ray_remote_args; Ray's own DataContext deprecations are not ours)
    deprecated = [str(w.message) for w in caught if "ray_remote_args" in str(w.message)]
    assert not deprecated, deprecated
    assert list(remote.results["id"]) == list(local.results["id"])
    assert list(remote.results["answer"]) == list(local.results["answer"])
    assert (remote.results["error"] == "").all()


@pytest.mark.slow
def test_a_stopped_run_resumes_and_a_killed_worker_leaves_every_id_once(
    charts, tmp_path, local_ray
):
    from vltools.cluster import run_on_ray

    out = tmp_path / "ray"
    first: list[dict] = []

    def stop(rows):
        first.extend(rows)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_on_ray(make(charts, out), "tiny", num_workers=2, batch_size=4, progress=False, on_rows=stop)  # fmt: skip
    assert len(make(charts, out).result().results) == len(first) > 0

    later: list[dict] = []

    def kill_once(rows):
        if not later:
            os.kill(int(rows[0]["worker_pid"]), signal.SIGKILL)
        later.extend(rows)

    run_on_ray(make(charts, out), "tiny", num_workers=2, batch_size=4, progress=False, on_rows=kill_once)  # fmt: skip
    assert len(later) == 16 - len(first)  # only the missing rows were computed
    results = make(charts, out).result().results
    assert len(results) == 16 and results["id"].is_unique
    assert set(results["id"]) == {
        c.id
        for c in make(charts, out).cells(json.loads((out / "manifest.json").read_text())["model"])
    }
