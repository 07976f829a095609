"""vltools.metrics: each metric on cases from its source definition, the registry, the
reference checks and the evaluation prompt presets."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vltools import metrics
from vltools.metrics import (
    PRESETS,
    anls,
    exact_match,
    levenshtein,
    mc_choice,
    normalize_vqa_answer,
    parse_choice,
    relaxed_accuracy,
    render_choices,
    vqa_accuracy,
)

ALL = list(metrics.METRICS.values())
answers = st.text(min_size=0, max_size=30)
# mc_choice's references must name an option, and vqa_accuracy needs two references or more
SCORED = [exact_match, anls, relaxed_accuracy]

# --------------------------------------------------------------------------------------------
# exact_match


@pytest.mark.parametrize(
    ("prediction", "reference", "score"),
    [
        ("Paris", "Paris", 1.0),
        ("paris", "Paris", 1.0),
        (" Paris. ", "paris", 1.0),
        ("New  York", "new york", 1.0),
        ("\u2019Paris\u2019", "paris", 1.0),  # curly quotes around the answer
        ("3.5", "3.5", 1.0),
        ("3.5", "35", 0.0),  # punctuation inside the answer stays
        ("Paris, France", "paris", 0.0),
        ("the cat", "cat", 0.0),  # no article removal: that is vqa_accuracy's normalisation
        ("", "", 1.0),
    ],
)
def test_exact_match_compares_normalised_strings(prediction, reference, score):
    assert exact_match(prediction, [reference]) == score


def test_exact_match_takes_the_best_over_references():
    assert exact_match("dog", ["cat", "Dog"]) == 1.0
    assert exact_match("dog", ["cat", "cow"]) == 0.0


@given(answers)
def test_exact_match_of_an_answer_with_itself_is_one(text):
    assert exact_match(text, [text]) == 1.0


# --------------------------------------------------------------------------------------------
# anls


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [("", "", 0), ("abc", "", 3), ("kitten", "sitting", 3), ("flaw", "lawn", 2), ("ab", "ba", 2)],
)
def test_levenshtein_distance_matches_known_values(a, b, distance):
    assert levenshtein(a, b) == distance == levenshtein(b, a)


@pytest.mark.parametrize(
    ("prediction", "reference", "score"),
    [
        ("The Cat", "the cat", 1.0),  # lower-cased
        ("  the   cat ", "the cat", 1.0),  # whitespace collapsed
        ("ab", "ac", 0.5),  # NL = 0.5 exactly: kept, as the DocVQA script does
        ("abcd", "abxy", 0.5),
        ("abcde", "abxyz", 0.0),  # NL = 0.6 > 0.5: zero, not 0.4
        ("abcdefghij", "abcdefghix", 0.9),  # one edit in ten characters
        ("", "x", 0.0),
        ("", "", 1.0),
        ("1/2/2003", "1/2/2003.", 1 - 1 / 9),
    ],
)
def test_anls_is_normalised_levenshtein_similarity_with_threshold_one_half(
    prediction, reference, score
):
    assert anls(prediction, [reference]) == pytest.approx(score)


def test_anls_takes_the_best_over_references_after_the_threshold():
    assert anls("abcde", ["zzzzz", "abcdx", "abxyz"]) == pytest.approx(0.8)
    assert anls("abcde", ["vwxyz", "abxyz"]) == 0.0


def test_anls_threshold_can_be_changed_and_is_checked():
    assert anls("abcde", ["abxyz"], threshold=0.3) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="threshold must be in"):
        anls("a", ["a"], threshold=2)


def test_anls_does_not_reward_padding_the_answer_with_spaces():
    assert anls("ab" + " " * 40, ["ac"]) == anls("ab", ["ac"])


@given(answers, st.lists(answers, min_size=1, max_size=4))
def test_anls_lies_in_zero_one_and_is_one_on_a_reference(prediction, references):
    score = anls(prediction, references)
    assert score == 0.0 or 0.5 <= score <= 1.0
    assert anls(references[0], references) == 1.0


# --------------------------------------------------------------------------------------------
# relaxed_accuracy


@pytest.mark.parametrize(
    ("prediction", "reference", "score"),
    [
        ("100", "100", 1.0),
        ("104.9", "100", 1.0),  # 4.9 % off
        ("105", "100", 1.0),  # 5 % exactly: within
        ("105.1", "100", 0.0),  # 5.1 % off
        ("95.1", "100", 1.0),
        ("94.9", "100", 0.0),
        ("-5.2", "-5", 1.0),
        ("0.45", "45%", 1.0),  # the source's rule: a percentage is divided by 100
        ("45%", "45%", 1.0),
        ("44%", "45%", 1.0),  # 2.2 % off
        ("45%", "45", 1.0),  # departure: a percentage also stands for its number
        ("45", "45%", 1.0),
        ("50%", "45", 0.0),
        ("1,200", "1200", 1.0),  # thousands separators
        ("1,250", "1200", 1.0),
        ("0", "0", 1.0),
        ("0.0", "0", 1.0),  # the source compares strings here and misses
        ("0.01", "0", 0.0),
        ("Yes", "yes", 1.0),  # non-numeric: exact, ignoring case and spaces
        (" Brazil ", "brazil", 1.0),
        ("Brazil.", "brazil", 0.0),
        ("12 apples", "12", 0.0),  # not a number: compared as text
        ("nan", "nan", 1.0),  # a word, not a number that equals nothing
        ("inf", "100", 0.0),
    ],
)
def test_relaxed_accuracy_allows_five_percent_on_numbers_and_exact_match_otherwise(
    prediction, reference, score
):
    assert relaxed_accuracy(prediction, [reference]) == score


def test_relaxed_accuracy_takes_the_best_over_references_and_a_tolerance():
    assert relaxed_accuracy("12", ["20", "12.5"]) == 1.0
    assert relaxed_accuracy("110", ["100"], tolerance=0.1) == 1.0
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        relaxed_accuracy("1", ["1"], tolerance=-0.1)


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).filter(lambda x: abs(x) > 1e-3))
def test_relaxed_accuracy_accepts_four_and_rejects_six_percent_off(value):
    reference = repr(value)
    assert relaxed_accuracy(repr(value * 1.04), [reference]) == 1.0
    assert relaxed_accuracy(repr(value * 0.96), [reference]) == 1.0
    assert relaxed_accuracy(repr(value * 1.06), [reference]) == 0.0


@given(answers)
def test_relaxed_accuracy_of_an_answer_with_itself_is_one(text):
    assert relaxed_accuracy(text, [text]) == 1.0


# --------------------------------------------------------------------------------------------
# vqa_accuracy


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        # the processing steps listed on the VQA evaluation page, one by one
        ("Yes", "yes"),  # lower case
        ("yes.", "yes"),  # periods go ...
        ("3.5", "3.5"),  # ... except as a decimal point
        ("two", "2"),  # number words to digits
        ("Ten", "10"),
        ("none", "0"),
        ("a dog", "dog"),  # articles go
        ("the cat", "cat"),
        ("an apple", "apple"),
        ("dont", "don't"),  # a contraction gets its apostrophe
        ("isnt", "isn't"),
        ("don't", "don't"),
        ("100,978", "100978"),  # the comma between digits goes
        ("black-and-white", "black and white"),  # punctuation becomes a space ...
        ("left / right", "left right"),  # ... or goes, next to a space
        ("yes!", "yes"),
        ("what?", "what"),
        ("10:30", "10:30"),  # the colon stays
        ("Two dogs.", "2 dogs"),
        ("  The\tRed\nCar ", "red car"),
    ],
)
def test_vqa_normalisation_follows_the_official_steps(raw, normalised):
    assert normalize_vqa_answer(raw) == normalised


@pytest.mark.parametrize(
    ("matching", "score"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]
)
def test_vqa_accuracy_averages_min_matches_over_three_over_the_ten_leave_one_out_sets(
    matching, score
):
    references = ["red"] * matching + ["blue"] * (10 - matching)
    assert vqa_accuracy("red", references) == pytest.approx(score)


def test_vqa_accuracy_normalises_answer_and_references():
    assert vqa_accuracy("Two.", ["2", "2", "2", "two", "3", "3", "3", "3", "3", "3"]) == 1.0
    assert vqa_accuracy("the dog", ["dog"] * 3 + ["cat"] * 7) == pytest.approx(0.9)


def test_vqa_accuracy_works_on_other_counts_and_refuses_a_single_reference():
    assert vqa_accuracy("red", ["red", "red", "red", "blue"]) == pytest.approx((2 / 3 * 3 + 1) / 4)
    with pytest.raises(ValueError, match="at least 2 reference answers"):
        vqa_accuracy("red", ["red"])


@given(answers, st.lists(st.sampled_from(["red", "Red.", "blue", "two", "2"]), min_size=2))
def test_vqa_accuracy_lies_in_zero_one(prediction, references):
    assert 0.0 <= vqa_accuracy(prediction, references) <= 1.0


# --------------------------------------------------------------------------------------------
# mc_choice

CHOICES = ["cat", "dog", "red fox", "fox"]


@pytest.mark.parametrize(
    ("prediction", "letter"),
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("b", "B"),
        ("[B]", "B"),
        ("B. dog", "B"),
        ("(B) dog", "B"),
        ("B: dog", "B"),
        ("The answer is B", "B"),
        ("The answer is B.", "B"),
        ("The correct answer is (C).", "C"),
        ("Answer: D", "D"),
        ("the correct option is B, the dog", "B"),
        ("I choose B.", "B"),
        ("dog", "B"),  # the option's text
        ("It is a dog.", "B"),
        ("The Red Fox", "C"),  # the longer option wins over "fox" contained in it
        ("the fox", "D"),
        ("A cat", "A"),  # "A" the article; "cat" the option
        ("A", "A"),
        ("", None),
        ("I don't know", None),
        ("A or B", None),  # two letters: ambiguous
        ("cat or dog", None),  # two options: ambiguous
        ("E", None),  # not one of the four options
        ("The answer is E", None),
    ],
)
def test_parse_choice_reads_the_option_an_answer_picks(prediction, letter):
    assert parse_choice(prediction, CHOICES) == letter


def test_parse_choice_without_choices_reads_letters_only():
    assert parse_choice("The answer is E") == "E"
    assert parse_choice("dog") is None
    assert parse_choice("A dog") is None


def test_parse_choice_takes_a_mapping_and_skips_empty_options():
    options = {"A": "cat", "B": "dog", "C": None, "D": float("nan")}
    assert parse_choice("C", options) is None
    assert parse_choice("dog", options) == "B"


@pytest.mark.parametrize(
    ("prediction", "score"),
    [("B", 1.0), ("(B) dog", 1.0), ("The answer is B", 1.0), ("dog", 1.0), ("A", 0.0), ("", 0.0)],
)
def test_mc_choice_scores_one_for_the_correct_option_only(prediction, score):
    assert mc_choice(prediction, ["B"], choices=CHOICES) == score


def test_mc_choice_unparseable_answers_count_as_wrong():
    assert mc_choice("I cannot tell from the picture", ["B"], choices=CHOICES) == 0.0
    assert mc_choice("A or B", ["B"], choices=CHOICES) == 0.0


def test_mc_choice_references_may_name_the_option_by_text_when_choices_are_given():
    assert mc_choice("B", ["dog"], choices=CHOICES) == 1.0
    assert mc_choice("B", ["(B)"]) == 1.0
    with pytest.raises(ValueError, match="names no option.*pass choices="):
        mc_choice("B", ["dog"])
    with pytest.raises(ValueError, match=r"names no option.*\(A, B, C, D\) or an option.s text"):
        mc_choice("B", ["E"], choices=CHOICES)


@given(st.lists(st.text(st.characters(categories=["L"]), min_size=1), min_size=1, max_size=8))
def test_mc_choice_the_correct_letter_always_scores_one(choices):
    for i in range(len(choices)):
        letter = "ABCDEFGH"[i]
        assert mc_choice(letter, [letter], choices=choices) == 1.0
        assert mc_choice(f"The answer is ({letter}).", [letter], choices=choices) == 1.0


def test_render_choices_letters_options_as_internvl_mmbench_eval():
    assert render_choices(["cat", "dog"]) == "A. cat\nB. dog"
    assert render_choices({"A": "cat", "B": "dog", "C": None}) == "A. cat\nB. dog"


@pytest.mark.parametrize(
    ("choices", "error", "match"),
    [
        ("cat", TypeError, "list of option texts"),
        ([], ValueError, "choices is empty"),
        (["cat", 3], TypeError, r"choices\[1\] is int"),
        ({"AA": "cat"}, ValueError, "option letters"),
    ],
)
def test_render_choices_refuses_bad_choices(choices, error, match):
    with pytest.raises(error, match=match):
        render_choices(choices)


# --------------------------------------------------------------------------------------------
# Shared behaviour: references' shape, the registry


@pytest.mark.parametrize("metric", ALL, ids=lambda m: m.__name__)
def test_every_metric_refuses_a_bare_string_as_references(metric):
    with pytest.raises(TypeError, match=r"Wrap a single answer in a list: \['B'\]"):
        metric("B", "B")


@pytest.mark.parametrize("metric", ALL, ids=lambda m: m.__name__)
def test_every_metric_refuses_empty_references(metric):
    with pytest.raises(ValueError, match="references is empty"):
        metric("B", [])


@pytest.mark.parametrize("metric", ALL, ids=lambda m: m.__name__)
def test_every_metric_refuses_non_string_references_and_says_how_to_fix(metric):
    with pytest.raises(TypeError, match=r"references\[1\] is int 42.*'42'"):
        metric("B", ["B", 42])
    with pytest.raises(TypeError, match="references must be a list"):
        metric("B", None)
    with pytest.raises(TypeError, match="prediction must be the model's answer as a str"):
        metric(None, ["B", "B"])


@pytest.mark.parametrize("metric", ALL, ids=lambda m: m.__name__)
def test_every_metric_accepts_a_numpy_array_of_references_as_parquet_gives(metric):
    assert metric("B", np.array(["B"] * 4, dtype=object)) == 1.0


@pytest.mark.parametrize("metric", SCORED, ids=lambda m: m.__name__)
@given(prediction=answers, references=st.lists(answers, min_size=1, max_size=4))
def test_scores_lie_in_zero_one(metric, prediction, references):
    assert 0.0 <= metric(prediction, references) <= 1.0


def test_get_resolves_names_and_passes_callables_through():
    assert metrics.get("anls") is anls

    def mine(prediction, references):
        return 1.0

    assert metrics.get(mine) is mine


def test_get_refuses_an_unknown_name_listing_the_known_ones():
    with pytest.raises(ValueError, match="Unknown metric 'accuracy'.*exact_match, anls"):
        metrics.get("accuracy")
    with pytest.raises(TypeError, match="metric must be a name"):
        metrics.get(3)


def test_metric_columns_name_the_sample_columns_a_metric_takes():
    assert metrics.metric_columns("mc_choice") == ("choices",)
    assert metrics.metric_columns("anls") == ()  # threshold is a knob, not a column
    assert metrics.metric_columns("relaxed_accuracy") == ()

    def with_unit(prediction, references, *, unit=None, scale=2.0):
        return 1.0

    assert metrics.metric_columns(with_unit) == ("unit",)


@pytest.mark.parametrize("name", list(metrics.METRICS))
def test_every_metric_cites_its_source_in_its_docstring(name):
    doc = metrics.METRICS[name].__doc__
    assert "Source" in doc, name


# --------------------------------------------------------------------------------------------
# Presets


def test_presets_use_internvls_evaluation_prompts():
    short = "Answer the question using a single word or phrase."
    for name in ("docvqa", "infovqa", "chartqa", "textvqa", "vqav2"):
        assert PRESETS[name].template == "{question} " + short
        assert PRESETS[name].render("What is the total?") == f"What is the total? {short}"
    assert PRESETS["mmbench"].render("Which animal?", choices=["cat", "dog"]) == (
        "Which animal?\nA. cat\nB. dog\n"
        "Answer with the option's letter from the given choices directly."
    )


def test_presets_name_known_metrics_and_cite_internvl_eval_code():
    expected = {
        "docvqa": "anls",
        "infovqa": "anls",
        "chartqa": "relaxed_accuracy",
        "textvqa": "vqa_accuracy",
        "vqav2": "vqa_accuracy",
        "mmbench": "mc_choice",
    }
    assert {name: p.metric for name, p in PRESETS.items()} == expected
    for preset in PRESETS.values():
        assert metrics.get(preset.metric)
        assert "InternVL@2410d1d internvl_chat/eval/" in preset.source


def test_a_preset_is_frozen_and_asks_for_choices_when_it_lists_options():
    with pytest.raises(AttributeError):
        PRESETS["chartqa"].template = "x"
    with pytest.raises(ValueError, match="pass choices="):
        PRESETS["mmbench"].render("Which animal?")
    assert "relaxed_accuracy" in repr(PRESETS["chartqa"])


def test_score_passes_the_sample_columns_a_metric_takes():
    row = {"question": "Which animal?", "choices": ["cat", "dog"], "answers": ["B"]}
    assert metrics.score("mc_choice", "dog", row["answers"], sample=row) == 1.0
    assert metrics.score("mc_choice", "dog", ["B"]) == 0.0  # without choices, no option texts
    assert metrics.score("mc_choice", "B", ["B"], sample={"choices": float("nan")}) == 1.0
    assert metrics.score("relaxed_accuracy", "104", ["100"], sample=row) == 1.0


def test_score_with_an_empty_prediction_checks_references_before_any_model_work():
    assert metrics.score("vqa_accuracy", "", ["cat", "dog"]) == 0.0
    with pytest.raises(ValueError, match="at least 2 reference answers"):
        metrics.score("vqa_accuracy", "", ["cat"])
    with pytest.raises(ValueError, match="names no option"):
        metrics.score("mc_choice", "", ["E"], sample={"choices": ["cat", "dog"]})


def test_score_names_a_missing_required_column_and_a_metric_that_returns_no_number():
    def per_unit(prediction, references, *, unit):
        return 1.0

    with pytest.raises(ValueError, match="needs the sample column 'unit'.*has: question"):
        metrics.score(per_unit, "1", ["1"], sample={"question": "q"})
    assert metrics.score(per_unit, "1", ["1"], sample={"unit": "kg"}) == 1.0
    with pytest.raises(TypeError, match="returned str 'yes'; a metric returns a number"):
        metrics.score(lambda p, r: "yes", "1", ["1"])
    assert metrics.score(lambda p, r: True, "1", ["1"]) == 1.0


def test_importing_metrics_imports_nothing_heavy():
    import subprocess
    import sys

    probe = (
        "import sys, vltools.metrics; "
        "print(sorted(m for m in ('numpy', 'torch', 'pandas', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
