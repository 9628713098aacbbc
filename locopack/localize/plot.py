"""``localization.png``: every window's score, drawn with matplotlib.

One point per window (its mean over probes and seeds) with its spread (± one standard
deviation), the window's sites named on the x axis, the baseline (no site altered), all-sites
(and, for joint-attention transformers, pooled-only) reference lines, and the chosen window
marked in red; with ``select: editable`` the windows whose sites are edited are shaded.
Points rather than bars: the scores are CLIP scores far from zero, and a bar
axis that starts at the lowest score gives that window no height at all.

Figures are drawn on matplotlib's object API with the Agg canvas: no pyplot, no global state,
no display needed.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from .views import PlottedResult

#: long module-path words and the short names the axis uses
_SHORT = {
    "down_blocks": "down",
    "up_blocks": "up",
    "mid_block": "mid",
    "attentions": "a",
    "transformer_blocks": "t",
    "single_transformer_blocks": "s",
}
_DROP = {"unet", "transformer", "attn2", "attn", "add_k_proj", "add_v_proj"}


def short_site(path: str) -> str:
    """A site's module path in a few characters: ``down_blocks.1.attentions.0...attn2`` ->
    ``down1.a0.t0``."""
    words = [w for w in path.split(".") if w not in _DROP]
    out: list[str] = []
    for word in words:
        if word.isdigit() and out:
            out[-1] += word
        else:
            out.append(_SHORT.get(word, word))
    return ".".join(out)


#: up to this many windows, the axis names every site of every window (else first–last)
EVERY_SITE_UP_TO = 20


def window_labels(windows: list[list[str]]) -> list[str]:
    """One axis label per window: every site, one per line (first–last when there are more
    than :data:`EVERY_SITE_UP_TO` windows), shortened; the trailing parts that every site
    shares (such as ``.t0``) are left out."""
    names = {site: short_site(site) for window in windows for site in window}
    parts = [n.split(".") for n in names.values()]
    while parts and all(len(p) > 1 for p in parts) and len({p[-1] for p in parts}) == 1:
        parts = [p[:-1] for p in parts]
    names = dict(zip(names, (".".join(p) for p in parts), strict=True))
    if len(windows) <= EVERY_SITE_UP_TO:
        return ["\n".join(names[site] for site in w) for w in windows]
    return [names[w[0]] if len(w) == 1 else f"{names[w[0]]}–{names[w[-1]]}" for w in windows]


def localization_png(result: PlottedResult, width: float = 8.0, height: float = 4.2) -> bytes:
    """PNG bytes of a :class:`~locopack.localize.result.LocalizationResult`'s plot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    candidates = result.candidates
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    xs = list(range(len(candidates)))
    colours = [
        "#c81e1e" if i == result.chosen else ("#4670b4" if i in result.finalists else "#9a9a9a")
        for i in xs
    ]
    for x, cand, colour in zip(xs, candidates, colours, strict=True):
        axes.errorbar(
            x,
            cand.mean,
            yerr=cand.std,
            fmt="o",
            color=colour,
            capsize=3,
            markersize=9 if x == result.chosen else 6,
        )
    chosen = candidates[result.chosen]
    axes.annotate(
        "chosen",
        (result.chosen, chosen.mean),
        xytext=(0, -22),
        textcoords="offset points",
        ha="center",
        color="#c81e1e",
        fontweight="bold",
    )
    lines = [
        (result.baseline, "#1f8c1f", "baseline (no site)"),
        (result.all_sites, "#9b1f9b", "all sites"),
    ]
    if result.pooled_only is not None:
        lines.append((result.pooled_only, "#c87800", "pooled only"))
    for cand, colour, name in lines:
        axes.axhline(cand.mean, color=colour, linestyle="--", linewidth=1.2, label=name)
    _mark_selected(axes, result)
    every = len(candidates) <= EVERY_SITE_UP_TO
    axes.set_xticks(
        xs,
        window_labels([c.window for c in candidates]),
        rotation=0 if every else 60,
        ha="center" if every else "right",
        fontsize=7 if every else 8,
    )
    axes.set_xlabel(
        f"window of {result.window} consecutive sites ({'its sites' if every else 'first–last'})"
    )
    axes.set_ylabel("CLIP score (100·cos), mean ± std")
    finalists = "finalists blue, " if result.mode == "fast" else ""
    edited = (
        f"; edited: {len(result.selected)} of {len(result.site_paths)} sites, shaded"
        if result.selected
        else ""
    )
    axes.set_title(
        f"LocoGen: {len(candidates)} windows ({result.mode} mode; {finalists}chosen red){edited}",
        fontsize=10,
    )
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _mark_selected(axes: Axes, result: PlottedResult) -> None:
    """Shade the windows that ``select: editable`` edits (every site of them selected), and
    say in the legend how many sets its trail tried."""
    if not result.selected:
        return
    selected = set(result.selected)
    inside = [i for i, c in enumerate(result.candidates) if set(c.window) <= selected]
    for n, x in enumerate(inside):
        label = f"edited (editable; {len(result.trail or [])} sets tried)" if n == 0 else None
        axes.axvspan(x - 0.5, x + 0.5, color="#f0a030", alpha=0.25, linewidth=0, label=label)
