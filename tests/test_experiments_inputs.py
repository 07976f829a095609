"""Experiment inputs: every kind of sample source, column mappings, and bad input refused
before any model work (no model is loaded in this file)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from vltools.dataset import read_samples
from vltools.experiments import Experiment, choices_text, render_question, template_fields
from vltools.store import ForeignStoreError


def exact(prediction: str, references: list[str]) -> float:
    return float(prediction.strip() in references)


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (500 + 100 * i, 400), (60 * i, 0, 0)).save(images / f"{i}.png")
    return images


def records(folder):
    return [
        {"img": f"{i}.png", "q": f"What is {i}?", "gt": [str(i), f"#{i}"], "unit": "cm"}
        for i in range(3)
    ]


COLUMNS = {"image": "img", "question": "q", "answers": "gt"}


def hashes(samples):
    return [(s.name, s.hash, s.question, s.references) for s in samples]


def test_every_source_reads_to_the_same_samples(folder):
    rows = records(folder)
    absolute = [{**r, "img": str(folder / r["img"])} for r in rows]
    (folder / "set.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pd.DataFrame(rows).assign(gt=lambda d: d["gt"].map(json.dumps)).to_csv(
        folder / "set.csv", index=False
    )
    pd.DataFrame(rows).to_parquet(folder / "set.parquet")

    class Dataset:  # what vltools needs of a datasets.Dataset
        column_names = ["img", "q", "gt", "unit"]

        def __iter__(self):
            return iter(absolute)

    expected = hashes(read_samples(absolute, columns=COLUMNS))
    for source in (
        folder / "set.jsonl",
        folder / "set.csv",
        folder / "set.parquet",
        pd.DataFrame(absolute),
        Dataset(),
    ):
        assert hashes(read_samples(source, columns=COLUMNS)) == expected, source
    assert expected[1][3] == ("1", "#1")


def test_a_folder_of_images_is_one_sample_per_image(folder):
    samples = read_samples(folder)
    assert [s.name for s in samples] == ["0.png", "1.png", "2.png"]
    assert all(s.references is None and s.question == "" for s in samples)
    plan = Experiment(folder, prompts=["Describe the image."]).plan()
    assert len(plan) == 3 and plan["id"].isna().all()  # ids need a model's fingerprint


def test_templates_fill_question_choices_and_any_column(folder):
    rows = [{**r, "choices": ["red", "blue"]} for r in records(folder)]
    rows = [{**r, "img": str(folder / r["img"])} for r in rows]
    exp = Experiment(
        rows, prompts={"mc": "{question} ({unit})\n{choices}\nLetter?"}, columns=COLUMNS
    )
    plan = exp.plan()
    assert plan["question"][0] == "What is 0? (cm)\nA. red\nB. blue\nLetter?"
    assert choices_text({"X": "yes", "Y": "no"}) == "X. yes\nY. no"
    assert template_fields("{question} {choices} {unit}") == ["question", "choices", "unit"]
    assert render_question("{question}", {"question": "Q"}) == "Q"


def test_several_images_and_a_video_per_sample(folder):
    from vltools.data import sample

    rows = [
        {"image": [str(folder / "0.png"), str(folder / "1.png")], "question": "Compare."},
        {"video": str(sample("sample_video.mp4")), "num_segments": 3, "question": "What happens?"},
    ]
    plan = Experiment(rows, prompts=["{question}"], settings=[{"max_num": 1}]).plan("tiny")
    assert list(plan["tiles"]) == [2, 3]


def test_several_images_per_sample_from_parquet_and_a_dataframe_are_a_list(folder):
    # Parquet list columns come back from pandas as 1-D numpy arrays, not lists
    rows = [
        {"image": ["0.png", "1.png"], "question": "Compare."},
        {"image": ["2.png"], "question": "One."},
    ]
    pd.DataFrame(rows).to_parquet(folder / "multi.parquet")
    absolute = [{**r, "image": [str(folder / i) for i in r["image"]]} for r in rows]
    pd.DataFrame(absolute).to_parquet(folder / "absolute.parquet")
    frame = pd.read_parquet(folder / "absolute.parquet")
    assert type(frame["image"][0]).__name__ == "ndarray"
    for source in (folder / "multi.parquet", frame):
        samples = read_samples(source)
        assert [len(s.images) for s in samples] == [2, 1], source
        assert [Path(i).name for i in samples[0].images] == ["0.png", "1.png"]


def test_a_list_of_tiled_images_and_pil_images(folder):
    from vltools.images import load_image

    rows = [{"image": load_image(folder / "0.png", max_num=2)}, {"image": Image.new("RGB", (9, 9))}]
    plan = Experiment(rows, prompts=["Describe."]).plan("tiny")
    assert plan["tiles"][0] == load_image(folder / "0.png", max_num=2).num_tiles
    assert plan["tiles"][1] == 1


@pytest.mark.parametrize(
    ("samples", "kwargs", "error", "match"),
    [
        (
            [{"image": "missing.png", "question": "Q", "answers": ["a"]}],
            {},
            FileNotFoundError,
            r"missing\.png.*does not exist.*Fix the path",
        ),
        (
            "records",
            {"columns": {"image": "img", "question": "question_text"}},
            ValueError,
            r"question_text.*Available columns.*img",
        ),
        (
            "records",
            {"prompts": {"p": "{question} in {units}"}},
            ValueError,
            r"\{units\}.*Available fields",
        ),
        ("records", {"metric": "no_such_metric"}, ValueError, r"no_such_metric"),
        ("bad refs", {}, ValueError, r"references in column 'gt'.*expected a list"),
        (
            "no refs",
            {"columns": {"image": "img", "question": "q"}},
            ValueError,
            r"no reference answers.*metric=None",
        ),
        (
            "records",
            {"settings": {"s": {"max_tokens": 3}}},
            ValueError,
            r"unknown option.*max_tokens",
        ),
        ("records", {"settings": {"s": {"max_num": 0}}}, ValueError, r"max_num=0"),
        ("records", {"prompts": {"p": "{question"}}, ValueError, r"not a valid format string"),
        ("records", {"prompts": {"p": "{question.upper}"}}, ValueError, r"plain column names"),
        ("records", {"prompts": {"p": "{}"}}, ValueError, r"plain column names"),
        ("records", {"prompts": {"p": "{unit:d}"}}, ValueError, r"prompt 'p' cannot be filled"),
        ("records", {"prompts": {}}, ValueError, r"prompts is empty"),
        ("records", {"settings": {}}, ValueError, r"settings is empty"),
        (
            "records",
            {"settings": {"s": {"max_new_tokens": 0}}},
            ValueError,
            r"'s'.*max_new_tokens=0",
        ),  # fmt: skip
        (
            "records",
            {"settings": {"s": {"temperature": "hot"}}},
            TypeError,
            r"temperature='hot'",
        ),  # fmt: skip
        ("records", {"settings": {"s": {"seed": "1"}}}, TypeError, r"seed='1'.*an int"),
        ("records", {"settings": {"s": {"system_message": 5}}}, TypeError, r"system_message=5"),
        (
            "records",
            {"columns": {**COLUMNS, "name": "q"}},
            ValueError,
            r"onto the same column 'q'",
        ),  # fmt: skip
        (
            "records",
            {"metric": lambda p, r: 1 / 0},
            ValueError,
            r"fails on sample.*ZeroDivision",
        ),  # fmt: skip
        (
            "records",
            {"metric": lambda p: 1.0},
            ValueError,
            r"metric\(prediction: str, references",
        ),  # fmt: skip
        ("nan refs", {}, ValueError, r"references in column 'gt' are \['0', nan\]"),
        ("empty", {}, ValueError, r"samples is empty"),
        ("same content", {}, ValueError, r"Samples 0.*and 1.*same image.*Drop the duplicate"),
        ("no image", {}, ValueError, r"Sample 1 has no image.*image=\[\]"),
        ("bad segments", {}, ValueError, r"num_segments is 0; expected a whole number"),
        ("int image", {}, TypeError, r"Sample 0: Cannot hash an image of type int"),
    ],
)
def test_bad_input_is_refused_naming_the_value_and_the_fix(folder, samples, kwargs, error, match):
    rows = [{**r, "img": str(folder / r["img"])} for r in records(folder)]
    if samples == "records":
        samples = rows
    elif samples == "bad refs":
        samples = [{**rows[0], "gt": {"answer": 1}}]
    elif samples == "no refs":
        samples = [{k: v for k, v in rows[0].items() if k != "gt"}]
    elif samples == "nan refs":
        samples = [{**rows[0], "gt": ["0", float("nan")]}]
    elif samples == "empty":
        samples = pd.DataFrame(columns=["img", "q", "gt"])
    elif samples == "same content":
        samples = [rows[0], {**rows[0], "name": "copy"}]
    elif samples == "no image":
        samples = [rows[0], {**rows[1], "img": None}]
    elif samples == "bad segments":
        video = folder / "clip.mp4"
        video.write_bytes(b"")
        samples = [{"video": str(video), "q": "Q", "gt": ["a"], "num_segments": 0}]
        kwargs = {"columns": {"question": "q", "answers": "gt"}}
    elif samples == "int image":
        samples = [{"img": 7, "q": "Q", "gt": ["a"]}]
    args = {"prompts": {"p": "{question}"}, "metric": exact, "columns": COLUMNS, **kwargs}
    if (
        isinstance(samples, list)
        and samples is not rows
        and "columns" not in kwargs
        and samples[0].get("image")
    ):
        args["columns"] = None
    with pytest.raises(error, match=match):
        Experiment(samples, **args)


def test_a_folder_with_result_files_but_no_manifest_is_refused(folder, tmp_path):
    out = tmp_path / "out"
    (out / "rows").mkdir(parents=True)
    (out / "rows" / "part-x.parquet").write_bytes(b"")
    with pytest.raises(ForeignStoreError, match="not a vltools experiment store"):
        Experiment(folder, prompts=["Describe."], output=out)


def test_loading_a_folder_without_an_experiment_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        Experiment.load(tmp_path)


def test_an_output_that_is_a_file_is_refused(folder, tmp_path):
    (tmp_path / "out").write_text("")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        Experiment(folder, prompts=["Describe."], output=tmp_path / "out")


def test_an_output_that_cannot_be_written_is_refused_before_the_model_loads(folder, monkeypatch):
    import vltools.models

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(vltools.models, "load_model", no_loading)
    exp = Experiment(folder, prompts=["Describe."], output="/proc/vltools-no-such/run")
    with pytest.raises(PermissionError, match="cannot write its store.*/proc"):
        exp.run("tiny", progress=False)


@pytest.mark.parametrize("model", [42, object()])
def test_a_model_that_is_neither_a_vlmodel_nor_a_source_is_refused(folder, model):
    exp = Experiment(folder, prompts=["Describe."])
    with pytest.raises(TypeError, match="expected a loaded VLModel.*or its source"):
        exp.run(model, progress=False)
    with pytest.raises(TypeError, match="expected a loaded VLModel"):
        exp.plan(model)


def test_mc_choice_scores_with_the_samples_choices_and_the_prompt_shows_the_same_letters(folder):
    from vltools.results import ExperimentResult

    sample = {"img": str(folder / "0.png"), "q": "Which animal?", "gt": ["B"]}
    sample["choices"] = json.dumps(["cat", "dog"])  # as a CSV cell holds it
    exp = Experiment([sample], prompts={"p": "{question}\n{choices}"}, metric="mc_choice", columns=COLUMNS)  # fmt: skip
    assert exp.cells("m")[0].question == "Which animal?\nA. cat\nB. dog"
    row = {"id": "x", "sample": exp.samples[0].name, "references": '["B"]', "error": ""}
    fields = {s.name: s.fields for s in exp.samples}
    scores = [
        ExperimentResult.from_rows([{**row, "answer": a}], metric=exp.metric_fn, fields=fields)
        .results["score"][0]
        for a in ("dog", "The answer is B", "cat")
    ]  # fmt: skip
    assert scores == [1.0, 1.0, 0.0]


def test_a_metric_failing_on_an_answer_names_the_cell_and_how_to_rescore():
    from vltools.results import ExperimentResult

    def picky(prediction, references):
        if prediction == "boom":
            raise RuntimeError("cannot parse")
        return 1.0

    row = {"id": "abc", "sample": "s", "prompt": "p", "setting": "t", "references": '["a"]'}
    with pytest.raises(ValueError, match=r"picky fails on the answer 'boom' of cell abc.*load"):
        ExperimentResult.from_rows([{**row, "answer": "boom", "error": ""}], metric=picky)


def test_the_plot_labels_every_bar_with_its_mean_even_at_zero():
    from vltools.results import ExperimentResult

    rows = [
        {"id": f"{i}{p}", "sample": f"s{i}", "prompt": p, "setting": "t", "answer": "x",
         "references": '["a"]', "error": ""}
        for i in range(3)
        for p in ("short", "plain")
    ]  # fmt: skip
    figure = ExperimentResult.from_rows(rows, metric=exact, metric_name="exact").plot()
    labels = [t.get_text() for t in figure.axes[0].texts]
    assert labels == ["0.00", "0.00"]
    assert figure._repr_png_().startswith(b"\x89PNG"), "the plot shows itself in a notebook"
