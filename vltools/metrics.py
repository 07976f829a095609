"""Scores for a model's answer against reference answers, and the prompts the InternVL authors
evaluated with.

Every metric is a plain function ``metric(prediction, references) -> float`` in ``[0, 1]``:
``prediction`` is the model's answer (a ``str``) and ``references`` a list of reference answers
(one or more ``str``; VQA-style datasets carry ten). A metric may also take keyword-only
arguments named after sample columns: :func:`mc_choice` takes ``choices=``. A caller that scores
rows of a dataset passes those columns by name; :func:`metric_columns` says which they are, for
the built-in metrics and for any callable a user brings.

=====================  ====================================================================
``exact_match``        normalised string equality (case, spacing, surrounding punctuation)
``anls``               DocVQA / InfographicVQA: normalised Levenshtein similarity, 0 below 0.5
``relaxed_accuracy``   ChartQA: numbers within 5 % of the reference, exact match otherwise
``vqa_accuracy``       VQAv2 / TextVQA: answer normalisation, min(matches / 3, 1) averaged
                       over the leave-one-out subsets of the references
``mc_choice``          multiple choice: the option the answer picks equals the reference
=====================  ====================================================================

``get(name_or_callable)`` resolves a metric by name (``vltools.metrics.METRICS`` lists them);
``score(metric, prediction, references, sample=row)`` scores one row of a dataset.
``PRESETS`` holds the evaluation prompts of InternVL's own evaluation code for the benchmarks
on the InternVL2 model card, each with its metric and the file it comes from, and
:func:`render_choices` writes lettered options the way InternVL's MMBench evaluation does.

Each metric's docstring names its source definition; where this module departs from the
source (to score free-form answers from a chat model sensibly), the docstring says how.
Sources quoted as ``InternVL@2410d1d`` refer to github.com/OpenGVLab/InternVL at commit
2410d1dbf208f0e799459aff9376e5747dbf41a2.
"""

from __future__ import annotations

import inspect
import math
import re
import string
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "METRICS",
    "PRESETS",
    "Preset",
    "anls",
    "check_references",
    "exact_match",
    "get",
    "levenshtein",
    "mc_choice",
    "metric_columns",
    "normalize_answer",
    "normalize_vqa_answer",
    "parse_choice",
    "relaxed_accuracy",
    "render_choices",
    "score",
    "vqa_accuracy",
]

LETTERS = string.ascii_uppercase

# --------------------------------------------------------------------------------------------
# Input checks


def check_references(references: Any, *, minimum: int = 1) -> list[str]:
    """The references as a list of ``str``, or a clear error.

    Accepts any sequence of strings (a list, a tuple, the NumPy array that pandas gives for a
    list column read from Parquet). A bare ``str`` is refused rather than read as a sequence of
    characters, and so are an empty list and non-string items (numbers from a JSON file:
    write them as strings, ``["42"]``).
    """
    if isinstance(references, str | bytes):
        raise TypeError(
            f"references must be a list of reference answers, got the string {references!r}. "
            f"Wrap a single answer in a list: [{references!r}]."
        )
    if isinstance(references, Mapping) or not isinstance(references, Iterable):
        raise TypeError(
            f"references must be a list of reference answers (str), got "
            f"{type(references).__name__} {references!r}. Pass for example ['42'] or "
            "['cat', 'a cat']."
        )
    items = list(references)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(
                f"references[{i}] is {type(item).__name__} {item!r}; every reference answer must "
                f"be a str. Convert it, e.g. {str(item)!r} (numbers in a JSON/CSV file: store "
                "them as strings)."
            )
    if len(items) < minimum:
        what = "is empty" if not items else f"holds {len(items)}"
        raise ValueError(
            f"references {what}; this metric needs at least {minimum} reference "
            f"answer{'s' if minimum > 1 else ''}. A sample without references cannot be scored: "
            "drop it, or run without a metric."
        )
    return items


def _check_prediction(prediction: Any) -> str:
    if not isinstance(prediction, str):
        raise TypeError(
            f"prediction must be the model's answer as a str, got {type(prediction).__name__} "
            f"{prediction!r}."
        )
    return prediction


# --------------------------------------------------------------------------------------------
# exact_match

_EDGE_PUNCTUATION = string.punctuation + "“”‘’«»。，：；！？"


def normalize_answer(text: str) -> str:
    """Unicode NFKC, case-folded, runs of whitespace as one space, and the punctuation at both
    ends stripped: ``" Paris. "`` -> ``"paris"``, ``"New  York"`` -> ``"new york"``.
    Punctuation inside the answer stays (``"3.5"``, ``"e-mail"``)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = " ".join(text.split())
    return text.strip(_EDGE_PUNCTUATION + " ")


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised reference, else 0.0.

    Source: the exact-match accuracy of InternVL's VQA evaluation (``InternVL@2410d1d``,
    ``internvl_chat/eval/vqa/evaluate_vqa.py``, ``evaluate_exact_match_accuracy``: the answer
    ``strip().lower()`` equals a reference's, best over the references), used there for GQA,
    OCR-VQA and AI2D. Normalisation here goes a little further so that a chat model's
    ``"Paris."`` matches ``"paris"``: see :func:`normalize_answer`.
    """
    prediction = _check_prediction(prediction)
    references = check_references(references)
    answer = normalize_answer(prediction)
    return 1.0 if any(answer == normalize_answer(r) for r in references) else 0.0


# --------------------------------------------------------------------------------------------
# anls


def levenshtein(a: str, b: str) -> int:
    """Edit distance between ``a`` and ``b`` (insertions, deletions, substitutions, each 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def anls(prediction: str, references: Sequence[str], *, threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity for one question: DocVQA, InfographicVQA.

    ``max over references of s``, with ``s = 1 - NL`` when ``1 - NL >= threshold``, else 0, and
    ``NL = levenshtein(p, r) / max(len(p), len(r))`` on answers lower-cased, stripped and with
    runs of whitespace as one space (two empty strings: NL = 0).

    Source: Biten et al., "Scene Text Visual Question Answering", ICCV 2019 (ANLS, tau = 0.5),
    and the DocVQA / InfographicVQA evaluation script (copied into InternVL@2410d1d as
    ``internvl_chat/eval/vqa/infographicsvqa_eval.py``), whose rule this follows at the
    boundary: a similarity of exactly 0.5 is kept (the paper's ``NL < tau`` would drop it).
    One departure: the script divides by the lengths of the raw strings, this by those of the
    normalised strings, so padding the answer with spaces cannot raise its score.
    """
    prediction = _check_prediction(prediction)
    references = check_references(references)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r} (ANLS uses 0.5).")
    answer = " ".join(prediction.strip().lower().split())
    best = 0.0
    for reference in references:
        target = " ".join(reference.strip().lower().split())
        length = max(len(answer), len(target))
        similarity = 1.0 - (levenshtein(answer, target) / length if length else 0.0)
        if similarity >= threshold:
            best = max(best, similarity)
    return best


# --------------------------------------------------------------------------------------------
# relaxed_accuracy

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?$")


def _numbers(text: str) -> tuple[float, ...]:
    """The values a ChartQA answer can stand for: ``"45"`` -> (45,), ``"45%"`` -> (0.45, 45),
    ``"1,200"`` -> (1200,), anything else (words, ``"nan"``, ``"12 apples"``) -> ()."""
    text = text.strip()
    percent = text.endswith("%")
    if percent:
        text = text[:-1].rstrip()
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    if not _NUMBER.fullmatch(text):
        return ()
    value = float(text)
    if not math.isfinite(value):
        return ()
    return (value / 100.0, value) if percent else (value,)


def _relaxed_match(prediction: str, reference: str, tolerance: float) -> bool:
    predicted, target = _numbers(prediction), _numbers(reference)
    if predicted and target:
        for t in target:
            for p in predicted:
                if t == 0.0:
                    if p == 0.0:
                        return True
                elif abs(p - t) / abs(t) <= tolerance:
                    return True
        return False
    return prediction.strip().lower() == reference.strip().lower()


def relaxed_accuracy(
    prediction: str, references: Sequence[str], *, tolerance: float = 0.05
) -> float:
    """ChartQA's relaxed accuracy: 1.0 if the answer is within 5 % of a numeric reference
    (``|p - r| / |r| <= 0.05``) or, for a non-numeric one, equal to it ignoring case and
    surrounding spaces; best over the references.

    Source: Masry et al., "ChartQA", Findings of ACL 2022, section 5 ("we use a relaxed
    accuracy measure for the numeric answers ... within 5% of the gold answer. For
    non-numeric answers, we still need an exact match"), as implemented by pix2struct's
    ``relaxed_correctness`` (google-research/pix2struct ``pix2struct/metrics.py``) and
    InternVL@2410d1d ``internvl_chat/eval/vqa/evaluate_vqa.py`` line 144: a trailing ``%``
    divides by 100, so ``"0.45"`` matches ``"45%"``.

    Departures, each so that a chat model's answer is read as a person would read it:
    a percentage also stands for its plain number (``"45%"`` matches ``"45"``); thousands
    separators are read (``"1,200"`` is 1200); a reference of 0 needs exactly 0 (the source
    falls back to comparing strings there, so ``"0.0"`` missed ``"0"``); ``"nan"``/``"inf"``
    are words, not numbers.
    """
    prediction = _check_prediction(prediction)
    references = check_references(references)
    if not tolerance >= 0.0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r} (ChartQA uses 0.05).")
    return 1.0 if any(_relaxed_match(prediction, r, tolerance) for r in references) else 0.0


# --------------------------------------------------------------------------------------------
# vqa_accuracy

# The answer normalisation of the VQA challenge's EvalAI evaluation (the table the VQA
# evaluation page describes: lower case, periods except decimals, number words to digits,
# articles dropped, missing apostrophes added to contractions, punctuation except the
# apostrophe and the colon replaced). The data below are facts of that definition.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}  # fmt: skip
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
_VQA_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
                    ">", "<", "@", "`", ",", "?", "!")  # fmt: skip
_PERIOD_STRIP = re.compile(r"\.(?!\d)")  # a period not followed by a digit
_COMMA_BETWEEN_DIGITS = re.compile(r"(?<=\d),+(?=\d)")


def normalize_vqa_answer(answer: str) -> str:
    """VQA's answer normalisation, step for step as the EvalAI evaluation of the VQA challenge
    (``EvalAIAnswerProcessor``; InternVL@2410d1d ``internvl_chat/eval/vqa/textvqa_eval.py``):
    ``"Two dogs."`` -> ``"2 dogs"``, ``"the cat"`` -> ``"cat"``, ``"dont"`` -> ``"don't"``,
    ``"100,978"`` -> ``"100978"``, ``"black-and-white"`` -> ``"black and white"``."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    # punctuation next to a space (or anywhere, once digits are separated by commas) goes;
    # elsewhere it becomes a space
    drop = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for p in _VQA_PUNCTUATION:
        if drop or p + " " in text or " " + p in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD_STRIP.sub("", out)
    words = [_NUMBER_WORDS.get(w, w) for w in out.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def vqa_accuracy(prediction: str, references: Sequence[str]) -> float:
    """VQA accuracy: ``min(#references equal to the answer / 3, 1)``, averaged over the
    subsets that leave out one reference each ("10 choose 9" for VQA's ten human answers), after
    :func:`normalize_vqa_answer` on the answer and on every reference.

    With ten references, an answer that k of them give scores 0, 0.3, 0.6, 0.9 for
    k = 0, 1, 2, 3 and 1 from k = 4. Other counts of references (two or more) use the same
    leave-one-out average; a single reference is refused (leaving it out leaves nothing to
    match: use ``exact_match``).

    Source: Antol et al., "VQA: Visual Question Answering", ICCV 2015, and Goyal et al.,
    CVPR 2017 (VQAv2); the evaluation code github.com/GT-Vision-Lab/VQA
    ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` (the leave-one-out average) and the
    EvalAI processor that InternVL@2410d1d uses for TextVQA and VQAv2
    (``internvl_chat/eval/vqa/textvqa_eval.py``, ``TextVQAAccuracyEvaluator``), whose
    normalisation this follows. Unlike ``vqaEval.py``, which normalises the references only
    when they disagree (VQA's released answers are normalised already), references are always
    normalised here, so that hand-written references such as ``"Two"`` match ``"2"``.
    """
    prediction = _check_prediction(prediction)
    references = check_references(references, minimum=2)
    answer = normalize_vqa_answer(prediction)
    matches = [normalize_vqa_answer(r) == answer for r in references]
    total = sum(matches)
    # leaving out reference i leaves total - matches[i] matching answers
    capped = sum(min(total - m, 3) for m in matches)
    return capped / (3 * len(references))


# --------------------------------------------------------------------------------------------
# mc_choice


def _options(choices: Sequence[str] | Mapping[str, str | None]) -> dict[str, str]:
    """Letter -> option text, from a list (lettered A, B, ...) or a mapping of letters."""
    if isinstance(choices, str | bytes):
        raise TypeError(
            f"choices must be a list of option texts or a mapping letter -> text, got the "
            f"string {choices!r}. Pass for example ['cat', 'dog'] or {{'A': 'cat', 'B': 'dog'}}."
        )
    if isinstance(choices, Mapping):
        options = {}
        for key, text in choices.items():
            if text is None or (isinstance(text, float) and math.isnan(text)):
                continue  # an option a table leaves empty (MMBench's E column)
            if not (isinstance(key, str) and len(key) == 1 and key.upper() in LETTERS):
                raise ValueError(
                    f"choices' keys must be option letters 'A'..'Z', got {key!r}. Pass a list of "
                    "option texts to have them lettered A, B, ... in order."
                )
            if not isinstance(text, str):
                raise TypeError(
                    f"choices[{key!r}] is {type(text).__name__} {text!r}; option texts must be str."
                )
            options[key.upper()] = text
        return options
    if not isinstance(choices, Iterable):
        raise TypeError(
            f"choices must be a list of option texts or a mapping letter -> text, got "
            f"{type(choices).__name__} {choices!r}."
        )
    items = list(choices)
    if len(items) > len(LETTERS):
        raise ValueError(f"at most {len(LETTERS)} choices can be lettered, got {len(items)}.")
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise TypeError(
                f"choices[{i}] is {type(text).__name__} {text!r}; option texts must be str."
            )
    return dict(zip(LETTERS, items, strict=False))


def render_choices(choices: Sequence[str] | Mapping[str, str | None]) -> str:
    """Lettered options, one a line, as InternVL's MMBench evaluation writes them under the
    question (InternVL@2410d1d ``internvl_chat/eval/mmbench/evaluate_mmbench.py`` line 118,
    ``f'\\n{key}. {item}'``): ``render_choices(["cat", "dog"])`` -> ``"A. cat\\nB. dog"``.
    ``choices`` is a list of option texts (lettered A, B, ... in order) or a mapping
    ``{"A": "cat", "B": "dog"}`` (``None`` values, empty options of a table, are left out)."""
    options = _options(choices)
    if not options:
        raise ValueError("choices is empty; a multiple-choice question needs at least one option.")
    return "\n".join(f"{letter}. {text}" for letter, text in options.items())


_WHOLE_LETTER = re.compile(r"^[(\[]?([A-Za-z])[)\]]?[.:]?$")
_LEADING_LETTER = re.compile(r"^[(\[]?([A-Z])(?:[)\]]|[.:](?!\w))")
_ANSWER_IS = re.compile(
    r"(?i:\b(?:answer|option|choice)\b)[^A-Za-z0-9]{0,3}(?i:is\b\s*)?(?i:(?:option|choice)\s*)?"
    r"[(\[]?([A-Z])\b(?!['’]\w)"
)
_LETTER_TOKEN = re.compile(r"(?<![\w'’])([A-Z])(?![\w'’])")


def _is_english_word(text: str, match: re.Match[str]) -> bool:
    """Whether the capital ``A`` or ``I`` just matched is the article or the pronoun: a
    lower-case word other than "or"/"and" follows it ("A cat", "I think"; not "A or B")."""
    following = text[match.end() :]
    return match.group(1) in "AI" and re.match(r"\s+(?!(?:or|and)\b)[a-z]", following) is not None


def _text_key(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", unicodedata.normalize("NFKC", text).casefold()).split())


def parse_choice(
    prediction: str, choices: Sequence[str] | Mapping[str, str | None] | None = None
) -> str | None:
    """The option letter an answer picks, or ``None`` if it picks none or is ambiguous.

    Tried in order, the first that applies wins:

    1. the whole answer is a letter: ``"B"``, ``"(B)"``, ``"B."``, ``"b"``;
    2. it starts with a letter and a delimiter: ``"B. dog"``, ``"(B) dog"``, ``"B: dog"``;
    3. it says so: ``"The answer is B"``, ``"Answer: (B)"``, ``"the correct option is B."``;
    4. exactly one option letter stands alone in it (``"I pick B here"``); the words
       ``"A"`` and ``"I"`` followed by a lower-case word are read as English, not letters;
    5. with ``choices``, exactly one option's text appears in it as whole words (case and
       punctuation ignored; an option contained in a longer matching one yields to it).

    Only letters of the given choices count (A-Z without ``choices``). This follows the
    order of the MMBench authors' answer matching (Liu et al., "MMBench", ECCV 2024;
    VLMEvalKit ``can_infer_option`` then ``can_infer_text``) and InternVL's ``post_process``
    (InternVL@2410d1d ``internvl_chat/eval/mmbench/evaluate_mmbench.py``), without a judge
    model.
    """
    prediction = _check_prediction(prediction)
    options = _options(choices) if choices is not None else None
    letters = set(options) if options is not None else set(LETTERS)
    text = prediction.strip()
    if not text:
        return None
    for pattern in (_WHOLE_LETTER, _LEADING_LETTER):
        match = pattern.match(text)
        if match and match.group(1).upper() in letters:
            return match.group(1).upper()
    for match in _ANSWER_IS.finditer(text):
        if match.group(1) in letters and not _is_english_word(text, match):
            return match.group(1)
    found = {
        match.group(1)
        for match in _LETTER_TOKEN.finditer(text)
        if match.group(1) in letters and not _is_english_word(text, match)
    }
    if len(found) == 1:
        return found.pop()
    if options:
        said = f" {_text_key(text)} "
        hits = {
            letter: key
            for letter, option in options.items()
            if (key := _text_key(option)) and f" {key} " in said
        }
        longest = {
            letter
            for letter, key in hits.items()
            if not any(key != other and f" {key} " in f" {other} " for other in hits.values())
        }
        if len(longest) == 1:
            return longest.pop()
    return None


def mc_choice(
    prediction: str,
    references: Sequence[str],
    *,
    choices: Sequence[str] | Mapping[str, str | None] | None = None,
) -> float:
    """Multiple choice: 1.0 if the option the answer picks (:func:`parse_choice`) is a correct
    one, else 0.0; an answer that picks no option, or several, scores 0.0.

    ``references`` name the correct option by letter (``["B"]``, ``["(B)"]``) or, when
    ``choices`` is given, by its text (``["dog"]``). ``choices`` is the sample's options, a
    list of texts lettered A, B, ... or a mapping ``{"A": "cat", "B": "dog"}``; it lets the
    answer name an option by its text, and restricts the letters to those options. When
    scoring a dataset, pass the sample's ``choices`` column (:func:`metric_columns` names it).

    Source: MMBench's circular evaluation counts an answer right when the extracted choice
    equals the ground-truth letter (Liu et al., "MMBench: Is Your Multi-modal Model an
    All-around Player?", ECCV 2024); extraction as in :func:`parse_choice`.
    """
    prediction = _check_prediction(prediction)
    references = check_references(references)
    options = _options(choices) if choices is not None else None
    by_text = {_text_key(t): letter for letter, t in (options or {}).items()}
    correct = set()
    for reference in references:
        match = _WHOLE_LETTER.match(reference.strip())
        if match and (options is None or match.group(1).upper() in options):
            correct.add(match.group(1).upper())
        elif _text_key(reference) in by_text:
            correct.add(by_text[_text_key(reference)])
        else:
            allowed = ", ".join(options) if options else "A-Z"
            raise ValueError(
                f"reference {reference!r} names no option: mc_choice's references are option "
                f"letters ({allowed})"
                + (" or an option's text" if options else "; pass choices= to use option texts")
                + "."
            )
    chosen = parse_choice(prediction, options)
    return 1.0 if chosen is not None and chosen in correct else 0.0


# --------------------------------------------------------------------------------------------
# Registry

METRICS: dict[str, Callable[..., float]] = {
    "exact_match": exact_match,
    "anls": anls,
    "relaxed_accuracy": relaxed_accuracy,
    "vqa_accuracy": vqa_accuracy,
    "mc_choice": mc_choice,
}


def get(metric: str | Callable[..., float]) -> Callable[..., float]:
    """The metric named ``metric`` (a key of :data:`METRICS`), or ``metric`` itself if it is a
    callable ``(prediction, references) -> float``."""
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(
                f"Unknown metric {metric!r}. Known metrics: {', '.join(METRICS)}; or pass any "
                "callable(prediction, references) -> float."
            )
        return METRICS[metric]
    if callable(metric):
        return metric
    raise TypeError(
        f"metric must be a name ({', '.join(METRICS)}) or a callable(prediction, references) "
        f"-> float, got {type(metric).__name__} {metric!r}."
    )


def metric_columns(metric: str | Callable[..., float]) -> tuple[str, ...]:
    """The sample columns a metric takes, to be passed by name when scoring a row:
    ``("choices",)`` for ``mc_choice``, ``()`` for the others.

    A metric declares a column as a keyword-only parameter with no default or a default of
    ``None`` (the sample may lack it): ``def my_metric(prediction, references, *, unit=None)``.
    Keyword-only parameters with other defaults are the metric's own knobs (``anls``'s
    ``threshold``, ``relaxed_accuracy``'s ``tolerance``), not columns.
    """
    fn = get(metric)
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return ()
    return tuple(
        p.name
        for p in parameters
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default in (inspect.Parameter.empty, None)
    )


def score(
    metric: str | Callable[..., float],
    prediction: str,
    references: Sequence[str],
    *,
    sample: Mapping[str, Any] | None = None,
) -> float:
    """``metric(prediction, references)`` for one row of a dataset, with the sample's columns
    that the metric takes (:func:`metric_columns`) passed by name; a column the sample lacks
    (or holds as ``None``/NaN) is left to the metric's default.

    The one place rows are scored. Called with an empty prediction (``score(m, "", refs,
    sample=row)``) it checks a sample's references before any model work: wrong shapes raise
    here, not after the run.
    """
    fn = get(metric)
    sample = {} if sample is None else sample
    kwargs = {}
    for name in metric_columns(fn):
        value = sample.get(name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            if _requires(fn, name):
                raise ValueError(
                    f"The metric {_name(fn)} needs the sample column {name!r}, which this "
                    f"sample lacks (it has: {', '.join(map(str, sample)) or 'no columns'}). Add "
                    "the column, or map it with columns={...}."
                )
            continue
        kwargs[name] = value
    result = fn(prediction, references, **kwargs)
    try:
        return float(result)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"The metric {_name(fn)} returned {type(result).__name__} {result!r}; a metric "
            "returns a number (a float in [0, 1] for the built-in ones)."
        ) from e


def _requires(fn: Callable[..., float], name: str) -> bool:
    return inspect.signature(fn).parameters[name].default is inspect.Parameter.empty


def _name(fn: Callable[..., float]) -> str:
    return getattr(fn, "__name__", repr(fn))


# --------------------------------------------------------------------------------------------
# Evaluation prompt presets

_EVAL_VQA = "InternVL@2410d1d internvl_chat/eval/vqa/evaluate_vqa.py"
_SHORT_ANSWER = "Answer the question using a single word or phrase."
_LETTER_ANSWER = "Answer with the option's letter from the given choices directly."


@dataclass(frozen=True)
class Preset:
    """An evaluation prompt: ``template`` (fills ``{question}``, and ``{choices}`` with
    :func:`render_choices`), the ``metric`` that scores its answers, the ``max_new_tokens`` the
    evaluation allowed, and the ``source`` it comes from."""

    name: str
    template: str
    metric: str
    max_new_tokens: int
    source: str

    def render(
        self,
        question: str,
        *,
        choices: Sequence[str] | Mapping[str, str | None] | None = None,
    ) -> str:
        """The prompt for one question (and its options, for a template with ``{choices}``)."""
        if "{choices}" in self.template:
            if choices is None:
                raise ValueError(
                    f"Preset {self.name!r} lists options: pass choices=[...] (option texts)."
                )
            return self.template.format(question=question, choices=render_choices(choices))
        return self.template.format(question=question)

    def __repr__(self) -> str:
        return f"Preset({self.name!r}, metric={self.metric!r}, template={self.template!r})"


def _vqa_preset(name: str, metric: str, tokens: int, where: str) -> Preset:
    return Preset(
        name=name,
        template="{question} " + _SHORT_ANSWER,
        metric=metric,
        max_new_tokens=tokens,
        source=f"{_EVAL_VQA}: {where}; the prompt follows the question after a space (line 264: "
        "question + ' ' + prompt), base_prompt at line 319",
    )


PRESETS: dict[str, Preset] = {
    "docvqa": _vqa_preset("docvqa", "anls", 100, "'docvqa_val' (metric 'anls')"),
    "infovqa": _vqa_preset(
        "infovqa", "anls", 100, "'infographicsvqa_val' (metric 'anls', infovqa_prompt)"
    ),
    "chartqa": _vqa_preset(
        "chartqa", "relaxed_accuracy", 100, "'chartqa_test_human' (metric 'relaxed_accuracy')"
    ),
    "textvqa": _vqa_preset("textvqa", "vqa_accuracy", 10, "'textvqa_val' (metric 'vqa_score')"),
    "vqav2": _vqa_preset("vqav2", "vqa_accuracy", 10, "'vqav2_val' (metric 'vqa_score')"),
    "mmbench": Preset(
        name="mmbench",
        template="{question}\n{choices}\n" + _LETTER_ANSWER,
        metric="mc_choice",
        max_new_tokens=100,
        source="InternVL@2410d1d internvl_chat/eval/mmbench/evaluate_mmbench.py: options "
        "appended as '\\n{key}. {item}' (line 118), then '\\n' and the English prompt "
        "(line 308); a hint, where MMBench has one, goes before the question",
    ),
}
