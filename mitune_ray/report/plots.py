"""The report's plots: matplotlib figures as inline SVG (no file, no script, text kept as text).

Every plot has a title, labelled axes and ticks. Each function returns an `Html` `<svg>` element
with class `plot <kind>`, a `<title>` and, where a test or a reader wants the exact numbers,
`data-*` attributes; the page places it as it is, so the report stays offline.

Example:
    >>> svg = lines({"round 1": [(1, 0.5), (2, 0.25)]}, title="Loss", xlabel="step", ylabel="loss")
    >>> svg.startswith('<svg class="plot lines"') and "<title>Loss</title>" in svg
    True
"""

from __future__ import annotations

import io
import math
import re

import matplotlib
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from mitune_ray.report.markup import Html, esc, histogram

SIZE = (5.2, 3.2)  # inches: two plots side by side on a wide screen
ALL, SELECTED = "#9ca3af", "#16a34a"  # every candidate (grey), the kept ones (green)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
HIST_BINS = 20  # enough to show the shape of ~50 candidates per prompt over many prompts
WHISKERS = (5, 95)  # box plots: whiskers at these percentiles, no outlier points
GROUP_ID = re.compile(r'<g id="[A-Za-z0-9.]+_\d+">')


def _figure() -> tuple[Figure, object]:
    fig = Figure(figsize=SIZE, layout="constrained")
    ax = fig.add_subplot()
    ax.grid(True, color="#e5e7eb", linewidth=0.6)
    ax.set_axisbelow(True)
    return fig, ax


def _svg(fig: Figure, kind: str, title: str, data: dict[str, str] | None = None) -> Html:
    """The figure as an `<svg>` element. The hash salt makes its ids (clip paths, markers)
    deterministic and distinct from the other plots' on the page."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"{kind}:{title}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", text[text.index("<svg"):].strip(),
                 count=1, flags=re.S)
    svg = GROUP_ID.sub("<g>", svg)  # "figure_1", "axes_1": the same in every plot, never referenced
    attrs = f' class="plot {kind}" role="img" aria-label="{esc(title)}"' + "".join(
        f' data-{k}="{esc(v)}"' for k, v in (data or {}).items())
    head, rest = svg.split(">", 1)
    return Html(f"<svg{attrs}{head[len('<svg'):]}><title>{esc(title)}</title>{rest}")


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def mi_by_round(rounds: dict[int, tuple[list[float], list[float]]], *, ylabel: str = "MI") -> Html:
    """Box plots, per round, of every candidate's MI (grey) beside the selected ones' (green):
    median, quartiles, whiskers at the 5th and 95th percentiles."""
    title = "Candidate MI by round"
    fig, ax = _figure()
    positions, labels = [], []
    for i, (r, (every, chosen)) in enumerate(sorted(rounds.items())):
        for values, offset, colour in ((every, -0.2, ALL), (chosen, 0.2, SELECTED)):
            values = _finite(values)
            if values:
                ax.boxplot([values], positions=[i + offset], widths=0.34, whis=WHISKERS,
                           showfliers=False, patch_artist=True,
                           boxprops={"facecolor": colour, "edgecolor": "#374151"},
                           medianprops={"color": "#111827"})
        positions.append(i)
        labels.append(f"round {r}")
    ax.set_xticks(positions, labels)
    ax.set_xlim(-0.7, len(positions) - 0.3)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(handles=[Patch(facecolor=ALL, label="all candidates"),
                       Patch(facecolor=SELECTED, label="selected")],
              fontsize=8, loc="best")
    return _svg(fig, "boxes", title, {"rounds": ",".join(str(r) for r in sorted(rounds))})


def mi_histogram(values: list[float], selected: list[float], *, title: str,
                 xlabel: str = "MI", bins: int = HIST_BINS) -> Html:
    """Every candidate's MI (grey bars) with the selected ones' overlaid (green), same bins.
    `data-counts` / `data-selected` hold the bar heights (`markup.histogram`'s bins)."""
    every, chosen = _finite(values), _finite(selected)
    lo, hi = (min(every + chosen), max(every + chosen)) if every + chosen else (0.0, 1.0)
    lo, hi = (lo - 0.5, hi + 0.5) if lo == hi else (lo, hi)
    counts, sel = histogram(every, lo, hi, bins), histogram(chosen, lo, hi, bins)
    width = (hi - lo) / bins
    lefts = [lo + i * width for i in range(bins)]
    fig, ax = _figure()
    edges = {"width": width, "align": "edge", "edgecolor": "white", "linewidth": 0.5}
    ax.bar(lefts, counts, color=ALL, label="all candidates", **edges)
    ax.bar(lefts, sel, color=SELECTED, label="selected", **edges)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("candidates")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    return _svg(fig, "hist", title, {"counts": ",".join(map(str, counts)),
                                     "selected": ",".join(map(str, sel))})


def lines(series: dict[str, list[tuple[float, float]]], *, title: str, xlabel: str, ylabel: str,
          xticks: dict[float, str] | None = None,
          intervals: dict[str, list[tuple[float, float]]] | None = None) -> Html:
    """One line per series over shared axes; `xticks` names the ticks (else matplotlib's),
    `intervals` draws each point's (low, high) as an error bar (series side by side, a little
    apart, so that their bars do not hide each other)."""
    fig, ax = _figure()
    drawn = 0
    for i, (name, pts) in enumerate(series.items()):
        dodge = (i - (len(series) - 1) / 2) * 0.04 if intervals else 0.0
        keep = [(x, y, lh) for (x, y), lh in zip(pts, (intervals or {}).get(name) or [None] * len(pts))
                if y is not None and math.isfinite(y)]
        if not keep:
            continue
        drawn += 1
        xs, ys = [p[0] + dodge for p in keep], [p[1] for p in keep]
        colour = PALETTE[i % len(PALETTE)]
        marker = "o" if len(keep) <= 40 else None
        ax.plot(xs, ys, color=colour, marker=marker, markersize=4, linewidth=1.6, label=name)
        bars = [(x, y, lh) for x, y, lh in keep if lh and all(map(math.isfinite, lh))]
        if bars:
            ax.errorbar([b[0] + dodge for b in bars], [b[1] for b in bars], fmt="none", ecolor=colour,
                        capsize=4, yerr=[[b[1] - b[2][0] for b in bars], [b[2][1] - b[1] for b in bars]])
    if xticks:
        ax.set_xticks(list(xticks), list(xticks.values()))
    elif all(float(x).is_integer() for pts in series.values() for x, _ in pts):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps, rounds
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useOffset=False)  # lr: 1e-4
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if drawn > 1:
        ax.legend(fontsize=8, loc="best")
    return _svg(fig, "lines", title, {"series": str(drawn)})
