"""Experiment on the tiny model: plan, batched run, store, resume, faults, seeds, results."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

import vltools
from vltools import experiments
from vltools.experiments import Experiment
from vltools.images import load_image
from vltools.results import mcnemar_exact
from vltools.store import ForeignStoreError
from vltools.tiling import plan_tiles

SIZES = [(448, 448), (900, 300), (300, 900), (640, 480), (1000, 500), (200, 200)]
GREEDY = {"max_new_tokens": 4}


def exact(prediction: str, references: list[str]) -> float:
    """The stand-in metric: 1.0 when the answer is one of the references, else 0.0."""
    return float(prediction.strip().lower() in {r.lower() for r in references})


@pytest.fixture
def charts(tmp_path, labelled_folder):
    """Six labelled images of different shapes, with a labels.jsonl as data/charts ships."""
    return labelled_folder(tmp_path / "charts", SIZES)


def make(charts, output=None, **kwargs):
    args = {
        "prompts": {"short": "{question} One word.", "plain": "{question}"},
        "settings": {"t1": {"max_num": 1, **GREEDY}, "t2": {"max_num": 2, **GREEDY}},
        "metric": exact,
        "output": output,
    }
    return Experiment(charts, **{**args, **kwargs})


def test_the_plan_lists_every_cell_with_its_tiles_before_any_model_work(charts):
    plan = make(charts).plan("tiny")
    assert len(plan) == 6 * 2 * 2 and plan["id"].is_unique
    assert list(plan.columns[:4]) == ["id", "sample", "prompt", "setting"]
    row = plan[(plan["sample"] == "c1.png") & (plan["setting"] == "t2")].iloc[0]
    assert row["tiles"] == plan_tiles(900, 300, max_num=2).num_tiles == 3
    assert row["image_tokens"] == 3 * 256
    assert (make(charts).plan("tiny")["id"] == plan["id"]).all()  # stable


def test_ids_hash_the_image_bytes_not_the_path(charts, tmp_path):
    moved = tmp_path / "elsewhere.png"
    shutil.copy(charts / "c0.png", moved)
    a = Experiment(
        [{"image": str(charts / "c0.png"), "question": "Q"}], prompts={"p": "{question}"}
    )
    b = Experiment([{"image": str(moved), "question": "Q"}], prompts={"p": "{question}"})
    assert a.plan("tiny")["id"][0] == b.plan("tiny")["id"][0]
    Image.new("RGB", (448, 448), "white").save(tmp_path / "other.png")
    c = Experiment(
        [{"image": str(tmp_path / "other.png"), "question": "Q"}], prompts={"p": "{question}"}
    )
    assert c.plan("tiny")["id"][0] != a.plan("tiny")["id"][0]


def test_batched_answers_equal_one_chat_call_per_cell(charts, tiny_model):
    res = make(charts).run(tiny_model, batch_size=4, progress=False)
    df = res.results
    assert len(df) == 24 and (df["error"] == "").all()
    for r in df.itertuples():
        max_num = 1 if r.setting == "t1" else 2
        image = load_image(charts / r.sample, max_num=max_num)
        expected = tiny_model.chat(image.pixel_values, r.question, dict(GREEDY, do_sample=False))
        assert r.answer == expected, (r.sample, r.prompt, r.setting)
        assert r.tiles == image.num_tiles and r.tokens >= 1


def test_a_second_run_computes_only_the_missing_ids_and_stores_each_once(
    charts, tiny_model, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    first = make(charts, out).run(tiny_model, batch_size=4, progress=False)
    parts = sorted((out / "rows").glob("part-*.parquet"))
    assert len(parts) >= 6  # one file per batch
    parts[0].unlink()
    lost = 24 - len(make(charts, out).result().results)
    assert lost > 0
    answered = []
    real = experiments.answer_batch
    monkeypatch.setattr(
        experiments, "answer_batch", lambda vlm, b: answered.extend(b) or real(vlm, b)
    )
    again = make(charts, out).run(tiny_model, batch_size=4, progress=False)
    assert len(answered) == lost
    assert again.results["id"].is_unique and len(again.results) == 24
    assert sorted(again.results["answer"]) == sorted(first.results["answer"])


def test_an_interrupt_keeps_the_finished_batches_and_the_next_run_finishes(
    charts, tiny_model, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    real = experiments.answer_batch
    calls = []

    def interrupted(vlm, batch):
        calls.append(len(batch))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(vlm, batch)

    monkeypatch.setattr(experiments, "answer_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make(charts, out).run(tiny_model, batch_size=4, progress=False)
    kept = Experiment.load(out, metric=exact).result().results
    assert len(kept) == sum(calls[:2])
    monkeypatch.setattr(experiments, "answer_batch", real)
    done = Experiment.load(out, metric=exact).run(tiny_model, batch_size=4, progress=False)
    assert len(done.results) == 24 and done.results["id"].is_unique


def test_a_machine_fault_stops_the_run_with_earlier_rows_kept(charts, tiny_model, tmp_path):
    class OutOfMemory:
        """The tiny model, until its second batch_chat runs out of memory."""

        def __init__(self):
            self.calls = 0

        def __getattr__(self, name):
            return getattr(tiny_model, name)

        def batch_chat(self, *args, **kwargs):
            self.calls += 1
            if self.calls == 2:
                raise MemoryError("out of memory")
            return tiny_model.batch_chat(*args, **kwargs)

    exp = make(charts, tmp_path / "run")
    exp.begin("fp")
    with pytest.raises(MemoryError):
        exp._run_local(OutOfMemory(), exp.missing("fp"), batch_size=4, progress=False)
    assert len(exp.store.rows()) == 4


def test_a_cell_failing_on_its_input_records_the_error_and_the_run_goes_on(charts, tiny_model):
    (charts / "c5.png").write_bytes(b"not a png at all")
    settings = {"t1": {"max_num": 1, **GREEDY}, "long": {"max_num": 1, "max_new_tokens": 9000}}
    df = make(charts, settings=settings).run(tiny_model, progress=False).results
    broken = df[df["sample"] == "c5.png"]
    assert broken["error"].str.contains("c5.png|image", regex=True).all()
    assert (broken["score"] == 0).all()
    over = df[(df["setting"] == "long") & (df["sample"] != "c5.png")]
    assert over["error"].str.startswith("ContextBudgetError").all()
    fine = df[(df["setting"] == "t1") & (df["sample"] != "c5.png")]
    assert (fine["error"] == "").all() and len(fine) == 10


def test_sampled_cells_are_seeded_per_cell_and_leave_the_global_rng_alone(charts, tiny_model):
    sampled = {"s": {"max_num": 1, "max_new_tokens": 5, "do_sample": True, "temperature": 1.5}}
    torch.manual_seed(123)
    state = torch.get_rng_state()
    one = make(charts, settings=sampled).run(tiny_model, batch_size=4, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    two = make(charts, settings=sampled).run(tiny_model, batch_size=1, progress=False)
    assert list(one.results["answer"]) == list(two.results["answer"])


def test_a_store_of_another_experiment_is_refused_with_the_fix(charts, tiny_model, tmp_path):
    out = tmp_path / "run"
    make(charts, out, settings={"t1": {"max_num": 1, **GREEDY}}).run(tiny_model, progress=False)
    with pytest.raises(ForeignStoreError, match=r"another experiment.*new output folder"):
        make(charts, out, prompts={"other": "{question}?"})
    exp = make(charts, out, settings={"t1": {"max_num": 1, **GREEDY}})
    with pytest.raises(ForeignStoreError, match="model"):
        exp.begin("another model")


def test_a_reopened_run_gives_the_same_results(charts, tiny_model, tmp_path):
    out = tmp_path / "run"
    res = make(charts, out).run(tiny_model, progress=False)
    again = Experiment.load(out, metric=exact)
    assert again.prompts == make(charts).prompts
    back = again.result().results
    assert list(back["id"]) == list(res.results["id"])
    assert list(back["answer"]) == list(res.results["answer"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"].startswith("weights:") and len(manifest["samples"]) == 6


def test_summary_compare_plot_and_browse(charts, tiny_model):
    res = make(charts).run(tiny_model, progress=False)
    table = res.summary()
    assert len(table) == 4 and (table["n"] == 6).all()
    assert (table["ci_low"] <= table["mean"]).all() and (table["mean"] <= table["ci_high"]).all()
    assert table.equals(res.summary())  # the bootstrap is seeded
    comparison = res.compare("short", "plain")
    assert comparison.n == 12 and comparison.axis == "prompt"
    assert comparison.difference == pytest.approx(comparison.mean_a - comparison.mean_b)
    assert comparison.p_mcnemar == mcnemar_exact(comparison.a_only, comparison.b_only)
    assert res.compare("t1", "t2").axis == "setting"
    with pytest.raises(ValueError, match="both must be prompts"):
        res.compare("short", "t1")
    from matplotlib.figure import Figure

    assert isinstance(res.plot(), Figure)
    browser = res.browse("short", "plain")
    items = res.disagreements("short", "plain")
    assert len(browser.items) == len(items)
    if items:
        browser.index.value = len(items) - 1
        assert items[-1]["sample"] in browser.text.value
        assert browser.picture.value.startswith(b"\x89PNG")


def test_the_exact_mcnemar_p_is_the_two_sided_binomial_tail():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 5) == pytest.approx(2 * (1 + 6) / 64)
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    assert mcnemar_exact(7, 7) == 1.0


def test_experiment_is_exported_at_the_top_level():
    assert vltools.Experiment is Experiment


def test_samples_with_several_images_or_a_video_are_answered(charts, tiny_model):
    from vltools.data import sample
    from vltools.video import load_video

    rows = [
        {"image": [str(charts / "c0.png"), str(charts / "c1.png")], "question": "Compare."},
        {"video": str(sample("sample_video.mp4")), "num_segments": 2, "question": "What happens?"},
    ]
    exp = Experiment(rows, prompts={"p": "{question}"}, settings={"s": {"max_num": 1, **GREEDY}})
    df = exp.run(tiny_model, progress=False).results
    assert (df["error"] == "").all() and list(df["tiles"]) == [2, 2]
    clip = load_video(sample("sample_video.mp4"), num_segments=2, max_num=1)
    expected = tiny_model.chat(
        clip.pixel_values,
        clip.prompt_prefix() + "What happens?",
        dict(GREEDY, do_sample=False),
        num_patches_list=list(clip.num_tiles),
    )
    assert df["answer"][1] == expected
