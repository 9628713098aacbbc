"""``evidence/summary.png``: efficacy, specificity and robustness in one chart (matplotlib).

- efficacy: the erased concept's (or, for an update, the target's) rate before and after on
  the edited and held-out prompts, from the first rate detector of the recipe; CLIP's success
  score where the recipe names no rate detector;
- specificity: on the preserve and unrelated prompts, the rate of images showing what their
  prompt asks (before, after) and the mean SSIM between before and after images;
- robustness: the held-out paraphrases as attack prompts, and the search attack's success
  before and after the edit (with the chance level of its random start), where one was run.

Where the evidence holds the verdict on the recipe's requirements, each bar a requirement
bounds carries a black dash at its threshold (:func:`threshold`).
"""

from __future__ import annotations

import io
import statistics
from typing import TYPE_CHECKING

from ..release.layout import EVIDENCE_DIR

if TYPE_CHECKING:
    from matplotlib.axes import Axes

#: the chart's file in the release
SUMMARY_CHART = f"{EVIDENCE_DIR}/summary.png"
BEFORE, AFTER, SAME = "#8c8c8c", "#c81e1e", "#4670b4"


def _rate_detector(evidence: dict) -> str | None:
    for edit in evidence["edits"]:
        for item in edit["sets"].values():
            for name, found in item.get("detectors", {}).items():
                if found["kind"] == "rate":
                    return name
    return None


def threshold(evidence: dict, edit: int, where: str, requirement: str) -> float | None:
    """The threshold of ``requirement`` on the prompt set ``where`` of the ``edit``-th edit, as
    the evidence's verdict records it; None where none applies."""
    items = (evidence.get("requirements") or {}).get("items", [])
    found = (
        i["threshold"]
        for i in items
        if (i["edit"], i["set"], i["requirement"]) == (edit, where, requirement)
    )
    return next(found, None)


def efficacy_bars(evidence: dict) -> tuple[str, list[tuple[str, float, float, float | None]]]:
    """The efficacy panel's unit and (label, before, after, required after) bars."""
    detector = _rate_detector(evidence)
    bars = []
    for index, edit in enumerate(evidence["edits"]):
        for name in ("edited", "held_out"):
            item = edit["sets"].get(name)
            if item is None:
                continue
            label = f"{edit['label']}\n{name.replace('_', '-')}"
            if detector:
                key = "concept" if edit["kind"] == "erase" else "target"
                found = item["detectors"][detector]
                bound = "concept_left" if key == "concept" else "target_shown"
                if key in found["before"]:
                    required = threshold(evidence, index, name, bound)
                    bars.append((label, found["before"][key], found["after"][key], required))
            else:
                key = edit["success_score"][0]
                s = item["summary"]
                bars.append((label, s["before"][key]["mean"], s["after"][key]["mean"], None))
    what = "concept" if evidence["edits"][0]["kind"] == "erase" else "target"
    return (f"{detector}: {what} rate" if detector else "CLIP success score"), bars


def specificity_bars(evidence: dict) -> list[tuple]:
    """(label, prompt rate before, after, mean SSIM, required after, required SSIM) per
    preserve and unrelated set."""
    detector = _rate_detector(evidence)
    out = []
    for index, edit in enumerate(evidence["edits"]):
        for name in ("preserve", "unrelated"):
            item = edit["sets"].get(name)
            if item is None:
                continue
            found = item["detectors"].get(detector, {}) if detector else {}
            before = found.get("before", {}).get("prompt")
            after = found.get("after", {}).get("prompt")
            ssim = statistics.fmean(item["change"]["ssim"])
            points = threshold(evidence, index, name, "prompt_kept")
            kept = None if points is None or before is None else before - points / 100
            required_ssim = threshold(evidence, index, name, "ssim")
            out.append((f"{edit['label']}\n{name}", before, after, ssim, kept, required_ssim))
    return out


def _paired(axes, labels, before, after, third=None, *, rate=True, marks=None) -> None:
    """Before/after (and a third series) bars per label, each bar labelled with its value;
    ``marks``: {series name: a threshold (or None) per label}, drawn as a dash over the bar."""
    xs = list(range(len(labels)))
    series = [("before", before, BEFORE), ("after", after, AFTER)]
    series += [("SSIM before/after", third, SAME)] if third else []
    width, legend = 0.8 / len(series), "required"
    for k, (name, values, colour) in enumerate(series):
        offset = (k - (len(series) - 1) / 2) * width
        bars = axes.bar([x + offset for x in xs], values, width, color=colour, label=name)
        for x, mark in zip(xs, (marks or {}).get(name, ()), strict=False):
            if mark is not None:
                left, right = x + offset - width / 2, x + offset + width / 2
                axes.hlines(mark, left, right, colors="black", label=legend)
                legend = None  # one legend entry
        as_rate = rate and name != "SSIM before/after"
        texts = ["" if v != v else (f"{v:.0%}" if as_rate else f"{v:.2f}") for v in values]
        axes.bar_label(bars, texts, fontsize=6, padding=1)  # v != v: NaN
    axes.set_xticks(xs, labels, fontsize=7)
    if rate:
        axes.set_ylim(0, 1.3)
    axes.legend(fontsize=7, loc="upper center", ncol=3, frameon=False)
    axes.grid(axis="y", alpha=0.3)


def summary_png(evidence: dict) -> bytes:
    """PNG bytes of the three-panel summary of ``evidence``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    left, middle, right = figure.subplots(1, 3)
    unit, bars = efficacy_bars(evidence)
    if bars:
        labels, before, after, required = zip(*bars, strict=True)
        rate = unit != "CLIP success score"
        _paired(left, labels, before, after, rate=rate, marks={"after": required})
    left.set_title(f"efficacy ({unit})", fontsize=9)
    spec = specificity_bars(evidence)
    if spec:
        labels, before, after, ssim, kept, required_ssim = zip(*spec, strict=True)
        nan = float("nan")
        before = [nan if v is None else v for v in before]
        after = [nan if v is None else v for v in after]
        marks = {"after": kept, "SSIM before/after": required_ssim}
        _paired(middle, labels, before, after, third=ssim, marks=marks)
    middle.set_title("specificity (prompt kept; image SSIM)", fontsize=9)
    _robustness(right, evidence)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def robustness_bars(evidence: dict) -> list[tuple[str, float, float, float | None]]:
    """(label, before, after, required after) per erase edit: the held-out paraphrases'
    concept rate, the worst attack's success (:func:`locopack.evidence.attacks.worst`: against the
    base, before; against the edited model, after) and where it started (chance)."""
    from .attacks import worst

    detector, out = _rate_detector(evidence), []
    for index, edit in enumerate(evidence["edits"]):
        item = edit["sets"].get("held_out")
        if edit["kind"] != "erase" or item is None:
            continue
        if detector:
            found = item["detectors"][detector]
            before, after = found["before"]["concept"], found["after"]["concept"]
        else:
            before, after = (item["summary"][w]["original"]["mean"] for w in ("before", "after"))
        required = threshold(evidence, index, "held_out", "concept_left") if detector else None
        out.append((f"{edit['label']}\nparaphrases", before, after, required))
    for index, edit in enumerate(evidence["edits"]):
        row = worst(evidence.get("attacks"), index)
        if row is None:
            continue
        required = threshold(evidence, index, "attack", "attack_success")
        out.append((f"{edit['label']}\n{row['name']}", row["base"], row["edited"], required))
        if row.get("chance"):
            chance = row["chance"]
            out.append((f"{edit['label']}\nchance", chance["base"], chance["edited"], None))
    return out


def _robustness(axes: Axes, evidence: dict) -> None:
    axes.set_title("robustness (attack success: concept rate)", fontsize=9)
    bars = robustness_bars(evidence)
    if not bars:
        axes.text(0.5, 0.5, "no attack was run", ha="center", va="center")
        axes.set_axis_off()
        return
    labels, before, after, required = zip(*bars, strict=True)
    kind = ((evidence.get("attacks") or {}).get("protocol") or {}).get("kind", "rate")
    _paired(axes, labels, before, after, rate=kind == "rate", marks={"after": required})
