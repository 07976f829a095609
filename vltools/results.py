"""An experiment's results: the scored table, its summary, paired comparisons, a plot, a browser.

Statistics follow the usual recipes, with fixed seeds so that a table is the same every time:

- :func:`bootstrap_ci`: the percentile bootstrap of the mean (Efron & Tibshirani 1993, ch. 13),
  2,000 resamples, seed 0.
- :func:`mcnemar_exact`: McNemar's test in its exact form, a two-sided binomial test of the
  discordant pairs against p = 1/2 (McNemar 1947; Fagerland et al. 2013 recommend the exact
  test for small counts), computed with integer binomial coefficients (no scipy).
- :meth:`ExperimentResult.compare`: the paired difference of two prompts (or two settings) on
  the same samples, its bootstrap interval, and the exact McNemar p when scores are 0/1.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vltools._optional import require
from vltools.store import ROW_COLUMNS

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = [
    "ExperimentResult",
    "Comparison",
    "RESULT_COLUMNS",
    "bootstrap_ci",
    "mcnemar_exact",
    "disagreements",
    "disagreement_html",
    "disagreement_browser",
]

# The stored row's columns with the score (computed when results are read) after the references.
_AT = ROW_COLUMNS.index("references") + 1
RESULT_COLUMNS: tuple[str, ...] = (*ROW_COLUMNS[:_AT], "score", *ROW_COLUMNS[_AT:])
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def bootstrap_ci(
    values: Sequence[float],
    *,
    level: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of ``values`` (NaN, NaN when empty)."""
    np = require("numpy", purpose="Bootstrap intervals")
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)  # [resamples]
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return (float(low), float(high))


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p for ``b`` pairs where only A is right and ``c`` only B.

    ``p = min(1, 2 * P[X <= min(b, c)])`` with ``X ~ Binomial(b + c, 1/2)``; 1.0 when there are
    no discordant pairs.
    """
    if b < 0 or c < 0:
        raise ValueError(f"b={b}, c={c}; expected counts >= 0.")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of ``a`` and ``b`` (two prompts or two settings) on the same cells.

    Attributes:
        a, b: the names compared; ``axis``: ``"prompt"`` or ``"setting"``.
        n: paired cells (same sample, same other-axis value, both scored).
        mean_a, mean_b: their mean scores; ``difference = mean_a - mean_b``.
        ci: 95% bootstrap interval of the paired difference.
        a_only, b_only: pairs where only a (only b) scored 1 (0/1 scores).
        p_mcnemar: exact McNemar p for 0/1 scores, else None.
    """

    a: str
    b: str
    axis: str
    n: int
    mean_a: float
    mean_b: float
    difference: float
    ci: tuple[float, float]
    a_only: int | None
    b_only: int | None
    p_mcnemar: float | None

    def __repr__(self) -> str:
        p = "" if self.p_mcnemar is None else f", McNemar p={self.p_mcnemar:.3g}"
        counts = (
            ""
            if self.a_only is None
            else f" ({self.a_only} only {self.a}, {self.b_only} only {self.b})"
        )
        return (
            f"Comparison({self.axis} {self.a!r} - {self.b!r} on {self.n} pairs: "
            f"{self.mean_a:.3f} - {self.mean_b:.3f} = {self.difference:+.3f}, 95% CI "
            f"[{self.ci[0]:+.3f}, {self.ci[1]:+.3f}]{p}{counts})"
        )


def _score(
    metric: Callable | None,
    row: Mapping[str, Any],
    references: list[str],
    error: str,
    fields: Mapping[str, Any] | None,
) -> float:
    """One row's score by :func:`vltools.metrics.score` (the sample's columns the metric takes
    passed by name): NaN without a metric or references, 0 for a failed cell."""
    if metric is None or not references:
        return math.nan
    if error:
        return 0.0  # a failed cell is a wrong answer
    from vltools.metrics import score

    answer = row.get("answer") or ""
    try:
        return score(metric, answer, list(references), sample=fields)
    except Exception as e:
        name = getattr(metric, "__name__", repr(metric))
        raise ValueError(
            f"The metric {name} fails on the answer {answer[:80]!r} of cell {row.get('id')} "
            f"({row.get('sample')}, {row.get('prompt')}, {row.get('setting')}; references "
            f"{references}): {type(e).__name__}: {e}. The rows are stored; fix the metric and "
            "rescore with vltools.Experiment.load(output, metric=fixed).result()."
        ) from e


@dataclass(frozen=True, eq=False)
class ExperimentResult:
    """The scored rows of an experiment.

    Attributes:
        results: a DataFrame with :data:`RESULT_COLUMNS` (``references`` a list, ``score`` NaN
            without a metric, 0 for a failed cell).
        metric_name: the metric's name, or None.
        visuals: sample name -> (images, video), for :meth:`browse`.
    """

    results: pd.DataFrame
    metric_name: str | None = None
    visuals: Mapping[str, tuple[Any, Any]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_rows(
        cls,
        rows: Sequence[Mapping[str, Any]],
        *,
        metric: Callable | None = None,
        metric_name: str | None = None,
        visuals: Mapping[str, tuple[Any, Any]] | None = None,
        fields: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> ExperimentResult:
        """Score ``rows`` (stored rows) with ``metric``; ``fields``: sample name -> the sample's
        columns, for metrics that read one (``mc_choice`` reads ``choices``)."""
        pd = require("pandas", purpose="Experiment results")
        records = []
        for r in rows:
            refs = r.get("references") or "[]"
            refs = json.loads(refs) if isinstance(refs, str) else list(refs)
            error = r.get("error") or ""
            record = {c: r.get(c) for c in RESULT_COLUMNS}
            record.update(
                references=refs,
                error=error,
                score=_score(metric, r, refs, error, (fields or {}).get(r.get("sample"))),
            )
            records.append(record)
        frame = pd.DataFrame(records, columns=list(RESULT_COLUMNS))
        return cls(frame, metric_name, dict(visuals or {}))

    def __len__(self) -> int:
        return len(self.results)

    def __repr__(self) -> str:
        df = self.results
        errors = int((df["error"] != "").sum()) if len(df) else 0
        return (
            f"ExperimentResult({len(df)} rows, {df['prompt'].nunique()} prompts x "
            f"{df['setting'].nunique()} settings, {errors} errors, metric={self.metric_name})"
        )

    def summary(self) -> pd.DataFrame:
        """Per prompt x setting: n, mean score, its 95% bootstrap interval, errors, mean answer
        tokens and seconds per cell."""
        pd = require("pandas", purpose="Experiment results")
        out = []
        for (prompt, setting), g in self.results.groupby(["prompt", "setting"], sort=False):
            scores = g["score"].dropna()
            low, high = bootstrap_ci(scores.to_numpy())
            out.append(
                {
                    "prompt": prompt,
                    "setting": setting,
                    "n": len(g),
                    "mean": float(scores.mean()) if len(scores) else math.nan,
                    "ci_low": low,
                    "ci_high": high,
                    "errors": int((g["error"] != "").sum()),
                    "tokens": float(pd.to_numeric(g["tokens"]).mean()),
                    "seconds": float(pd.to_numeric(g["seconds"]).mean()),
                }
            )
        return pd.DataFrame(out)

    def _axis(self, a: str, b: str) -> str:
        for axis in ("prompt", "setting"):
            names = set(self.results[axis])
            if a in names and b in names:
                return axis
        raise ValueError(
            f"compare({a!r}, {b!r}): both must be prompts {sorted(set(self.results['prompt']))} "
            f"or both settings {sorted(set(self.results['setting']))}."
        )

    def pairs(self, a: str, b: str) -> pd.DataFrame:
        """Cells of ``a`` and ``b`` side by side: one row per sample (and other-axis value)."""
        axis = self._axis(a, b)
        other = "setting" if axis == "prompt" else "prompt"
        df = self.results
        keys = ["sample", other]
        left = df[df[axis] == a].drop(columns=[axis])
        right = df[df[axis] == b].drop(columns=[axis])
        return left.merge(right, on=keys, how="inner", suffixes=("_a", "_b"))

    def compare(self, a: str, b: str) -> Comparison:
        """The paired difference ``a - b`` (prompts or settings) on the same samples."""
        np = require("numpy", purpose="Comparisons")
        axis = self._axis(a, b)
        pairs = self.pairs(a, b).dropna(subset=["score_a", "score_b"])
        if pairs.empty:
            raise ValueError(
                f"compare({a!r}, {b!r}): no scored pairs; the experiment needs a metric and "
                "both to have run on the same samples."
            )
        sa = pairs["score_a"].to_numpy(dtype=float)
        sb = pairs["score_b"].to_numpy(dtype=float)
        binary = bool(np.isin(sa, (0.0, 1.0)).all() and np.isin(sb, (0.0, 1.0)).all())
        a_only = int(((sa == 1) & (sb == 0)).sum()) if binary else None
        b_only = int(((sa == 0) & (sb == 1)).sum()) if binary else None
        return Comparison(
            a=a,
            b=b,
            axis=axis,
            n=len(pairs),
            mean_a=float(sa.mean()),
            mean_b=float(sb.mean()),
            difference=float((sa - sb).mean()),
            ci=bootstrap_ci(sa - sb),
            a_only=a_only,
            b_only=b_only,
            p_mcnemar=mcnemar_exact(a_only, b_only) if binary else None,
        )

    def plot(self) -> Figure:
        """Mean score with its 95% interval per prompt, one group of bars per setting (a figure
        that shows itself in a notebook, as every vltools figure does)."""
        from vltools.viz import new_figure

        table = self.summary()
        prompts = list(dict.fromkeys(table["prompt"]))
        settings = list(dict.fromkeys(table["setting"]))
        fig = new_figure(1.6 + 1.4 * len(settings), 3.2)
        ax = fig.add_subplot()
        width = 0.8 / max(len(prompts), 1)
        for i, prompt in enumerate(prompts):
            rows = table[table["prompt"] == prompt].set_index("setting").reindex(settings)
            xs = [j + (i - (len(prompts) - 1) / 2) * width for j in range(len(settings))]
            means = rows["mean"].to_numpy(dtype=float)
            err = [means - rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float) - means]
            bars = ax.bar(xs, means, width, yerr=err, capsize=3, label=prompt)
            ax.bar_label(bars, fmt="%.2f", fontsize="small", padding=2)  # zero bars show too
        ax.set_xticks(range(len(settings)), settings)
        ax.set_xlabel("setting")
        ax.set_ylabel(f"mean {self.metric_name or 'score'} (95% CI)")
        ax.set_ylim(0, 1.05 if (table["ci_high"].fillna(0) <= 1).all() else None)
        ax.legend(title="prompt", fontsize="small")
        return fig

    def disagreements(self, a: str, b: str, *, by: str = "score") -> list[dict[str, Any]]:
        """See :func:`disagreements`."""
        return disagreements(self, a, b, by=by)

    def browse(self, a: str | None = None, b: str | None = None, *, by: str = "score") -> Any:
        """A widget paging through the cells where ``a`` and ``b`` disagree (default: the
        first two prompts, or the first two settings when there is one prompt); ``by="score"``
        (one right, the other wrong) or ``by="answer"`` (different answers)."""
        if a is None or b is None:
            prompts = list(dict.fromkeys(self.results["prompt"]))
            names = prompts if len(prompts) > 1 else list(dict.fromkeys(self.results["setting"]))
            if len(names) < 2:
                raise ValueError("browse() needs two prompts or two settings to compare.")
            a, b = names[0], names[1]
        return disagreement_browser(self.disagreements(a, b, by=by), a=a, b=b)


def disagreements(
    result: ExperimentResult, a: str, b: str, *, by: str = "score"
) -> list[dict[str, Any]]:
    """The paired cells where ``a`` and ``b`` differ: in score (``by="score"``; in answer where
    there are no scores) or in answer (``by="answer"``). Each: sample, other-axis value, the
    questions, answers, scores, references, images, video."""
    if by not in ("score", "answer"):
        raise ValueError(f"by={by!r}; expected 'score' or 'answer'.")
    pairs = result.pairs(a, b)
    axis = result._axis(a, b)
    other = "setting" if axis == "prompt" else "prompt"
    out = []
    for r in pairs.to_dict(orient="records"):
        sa, sb = r["score_a"], r["score_b"]
        scored = not (math.isnan(sa) or math.isnan(sb))
        differ = (sa != sb) if scored and by == "score" else (r["answer_a"] != r["answer_b"])
        if not differ:
            continue
        images, video = result.visuals.get(r["sample"], ((), None))
        out.append(
            {
                "sample": r["sample"],
                other: r[other],
                "question_a": r["question_a"],
                "question_b": r["question_b"],
                "answer_a": r["answer_a"] or r["error_a"],
                "answer_b": r["answer_b"] or r["error_b"],
                "score_a": sa,
                "score_b": sb,
                "references": list(r["references_a"]),
                "images": tuple(images),
                "video": video,
            }
        )
    return out


def disagreement_html(item: Mapping[str, Any], *, a: str, b: str) -> str:
    """One disagreement as HTML: the question(s), both answers with scores, the references."""
    e = html.escape
    q = (
        e(item["question_a"])
        if item["question_a"] == item["question_b"]
        else (f"<b>{e(a)}:</b> {e(item['question_a'])}<br><b>{e(b)}:</b> {e(item['question_b'])}")
    )
    refs = ", ".join(e(str(r)) for r in item["references"]) or "(none)"
    return (
        f"<div><b>{e(item['sample'])}</b><br>{q}<br>"
        f"<b>{e(a)}</b> ({item['score_a']:.2g}): {e(str(item['answer_a']))}<br>"
        f"<b>{e(b)}</b> ({item['score_b']:.2g}): {e(str(item['answer_b']))}<br>"
        f"<b>references:</b> {refs}</div>"
    )


def _picture(item: Mapping[str, Any], *, longest: int = 360) -> bytes | None:
    """PNG bytes of the item's first image (or None), at most ``longest`` pixels wide/high."""
    import io

    from PIL import Image

    images = item.get("images") or ()
    if not images:
        return None
    first = images[0]
    try:
        if isinstance(first, Image.Image):
            pil = first.copy()
        elif getattr(first, "image", None) is not None:
            pil = first.image.copy()
        elif isinstance(first, (bytes, bytearray)):
            pil = Image.open(io.BytesIO(first))
        else:
            pil = Image.open(first)
        pil = pil.convert("RGB")
        pil.thumbnail((longest, longest))
    except Exception:  # a tensor or an unreadable file: no picture
        return None
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return buffer.getvalue()


def disagreement_browser(items: Sequence[Mapping[str, Any]], *, a: str, b: str) -> Any:
    """An ipywidgets view of :func:`disagreements`: an ``index`` slider (its state), the image,
    the question, both answers and the references; ``browser.index.value = k`` pages."""
    widgets = require("ipywidgets", purpose="The disagreement browser")
    index = widgets.IntSlider(
        value=0, min=0, max=max(len(items) - 1, 0), description="disagreement",
        disabled=not items, continuous_update=False,
    )  # fmt: skip
    picture = widgets.Image(format="png")
    text = widgets.HTML()
    errors = widgets.Output()

    def show(change: Any = None) -> None:
        with errors:
            if not items:
                picture.value = b""
                text.value = f"<i>{html.escape(a)} and {html.escape(b)} agree on every cell.</i>"
                return
            item = items[index.value]
            picture.value = _picture(item) or b""
            text.value = f"<p>{index.value + 1} of {len(items)}</p>" + disagreement_html(
                item, a=a, b=b
            )

    index.observe(show, names=["value"])
    show()
    box = widgets.VBox([index, widgets.HBox([picture, text]), errors])
    box.index, box.text, box.picture, box.items = index, text, picture, list(items)
    return box
