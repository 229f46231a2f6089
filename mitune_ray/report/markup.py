"""HTML and SVG pieces of the run report (pure: no I/O, no third-party imports).

Every value that reaches the page goes through `esc` unless it is an `Html` (markup this module
or report/page.py built), so prompt text can never become markup.

Example:
    >>> histogram([0.0, 0.4, 1.0, float("nan")], 0.0, 1.0, 2)
    [2, 1]
    >>> table(["a"], [["<b>"]])
    '<table><thead><tr><th>a</th></tr></thead><tbody><tr><td>&lt;b&gt;</td></tr></tbody></table>'
"""

from __future__ import annotations

import html
import math

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
PLOT_W, PLOT_H, MARGIN = 380, 220, 44  # px: small multiples, four to a wide screen
HIST_BINS = 20  # enough to show the shape of ~50 candidates per prompt over many prompts

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222;background:#fff}
h1{font-size:24px}h2{margin-top:32px;border-bottom:2px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f0f3f7}.metrics td{text-align:right}.metrics td:first-child{text-align:left}
.delta.up{color:#15803d}.delta.down{color:#b91c1c}
.status.committed{color:#15803d}.status.not-run{color:#999}
.missing{color:#92400e;background:#fef3c7;padding:4px 8px}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plot{border:1px solid #ddd;background:#fcfcfc}
.strip{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0;padding:3px;border:3px solid transparent}
figure.selected{border-color:#16a34a}figcaption{font-size:12px;max-width:160px}
.prompt{font-weight:600;margin:14px 0 4px}pre{background:#f6f8fa;padding:8px;overflow:auto}
"""

# Marks, after load, how many images decoded: a check in a headless browser, a hint for readers.
JS = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++;
  document.body.dataset.images = imgs.length;
  document.body.dataset.imagesLoaded = ok;
});
"""


class Html(str):
    """Markup that is already safe (built here); everything else is escaped."""


def esc(value) -> str:
    return value if isinstance(value, Html) else html.escape(str(value), quote=True)


def fmt(value) -> str:
    """A cell's text: 4 significant digits for floats, a dash for nothing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def signed(value: float) -> str:
    return f"{value:+.4g}"


def missing(text: str) -> str:
    return f'<p class="missing">Missing: {esc(text)}</p>'


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head><body>{body}<script>{JS}</script></body></html>\n")


def table(header: list[str] | None, rows: list[list], *, cls: str = "") -> str:
    """Rows of cells (text is formatted and escaped; `Html` cells go in as they are)."""
    attr = f' class="{esc(cls)}"' if cls else ""
    head = ("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>"
            if header else "")
    body = "".join("<tr>" + "".join(f"<td>{esc(c if isinstance(c, Html) else fmt(c))}</td>" for c in row)
                   + "</tr>" for row in rows)
    return f"<table{attr}>{head}<tbody>{body}</tbody></table>"


def histogram(values: list[float], lo: float, hi: float, bins: int) -> list[int]:
    """Counts of finite values in `bins` equal bins over [lo, hi] (hi falls in the last bin)."""
    counts = [0] * bins
    for v in values:
        if v is None or not math.isfinite(v) or v < lo or v > hi:
            continue
        counts[min(int((v - lo) / (hi - lo) * bins), bins - 1)] += 1
    return counts


def _range(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    return (lo - 0.5, hi + 0.5) if lo == hi else (lo, hi)


def _text(x: float, y: float, text: str, anchor: str = "middle", size: int = 11) -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'fill="#333">{esc(text)}</text>')


def _frame(kind: str, title: str, inner: str, extra: str = "") -> Html:
    return Html(f'<svg class="plot {kind}" xmlns="http://www.w3.org/2000/svg" width="{PLOT_W}" '
                f'height="{PLOT_H}" viewBox="0 0 {PLOT_W} {PLOT_H}"{extra}><title>{esc(title)}</title>'
                + _text(PLOT_W / 2, 16, title, size=12) + inner
                + f'<line x1="{MARGIN}" y1="{PLOT_H - MARGIN / 2 - 8}" x2="{PLOT_W - 10}" '
                f'y2="{PLOT_H - MARGIN / 2 - 8}" stroke="#888"/></svg>')


def svg_histogram(values: list[float], selected: list[float], *, title: str,
                  bins: int = HIST_BINS) -> Html:
    """MI of every candidate (grey bars) with the selected ones overlaid (green), same bins."""
    lo, hi = _range(values + selected)
    all_counts, sel_counts = histogram(values, lo, hi, bins), histogram(selected, lo, hi, bins)
    top = max(all_counts + sel_counts + [1])
    x0, y0 = MARGIN, PLOT_H - MARGIN / 2 - 8
    width, height = (PLOT_W - 10 - x0) / bins, y0 - 30
    bars = []
    for i, (a, s) in enumerate(zip(all_counts, sel_counts)):
        for count, cls, fill in ((a, "bar-all", "#9ca3af"), (s, "bar-sel", "#16a34a")):
            if count:
                h = count / top * height
                bars.append(f'<rect class="{cls}" x="{x0 + i * width + 1:.1f}" y="{y0 - h:.1f}" '
                            f'width="{max(width - 2, 1):.1f}" height="{h:.1f}" fill="{fill}">'
                            f"<title>{count} in [{lo + i * (hi - lo) / bins:.4g}, "
                            f"{lo + (i + 1) * (hi - lo) / bins:.4g})</title></rect>")
    labels = (_text(x0, y0 + 14, f"{lo:.4g}", "start") + _text(PLOT_W - 10, y0 + 14, f"{hi:.4g}", "end")
              + _text(x0 - 4, 34, str(top), "end") + _text(x0 - 4, y0, "0", "end")
              + _text(PLOT_W - 10, 30, "all", "end").replace('fill="#333"', 'fill="#6b7280"')
              + _text(PLOT_W - 10, 42, "selected", "end").replace('fill="#333"', 'fill="#16a34a"'))
    data = (f' data-counts="{",".join(map(str, all_counts))}"'
            f' data-selected="{",".join(map(str, sel_counts))}"')
    return _frame("hist", title, "".join(bars) + labels, data)


def svg_lines(series: dict[str, list[tuple[float, float]]], *, title: str,
              x_labels: dict[float, str] | None = None) -> Html:
    """One line per series over shared axes; `x_labels` names the ticks (else the x range ends)."""
    points = [(x, y) for pts in series.values() for x, y in pts if y is not None and math.isfinite(y)]
    xlo, xhi = _range([x for x, _ in points])
    ylo, yhi = _range([y for _, y in points])
    legend = len(series) > 1
    x0, y0, x1, y1 = MARGIN + 8, PLOT_H - MARGIN / 2 - 8, PLOT_W - (90 if legend else 36), 30

    def sx(x):
        return x0 + (x - xlo) / (xhi - xlo) * (x1 - x0)

    def sy(y):
        return y0 - (y - ylo) / (yhi - ylo) * (y0 - y1)

    parts = [_text(x0 - 6, y1 + 4, f"{yhi:.4g}", "end"), _text(x0 - 6, y0, f"{ylo:.4g}", "end")]
    ticks = x_labels or {xlo: f"{xlo:.4g}", xhi: f"{xhi:.4g}"}
    parts += [_text(sx(x), y0 + 14, label) for x, label in ticks.items()]
    for i, (name, pts) in enumerate(series.items()):
        pts = [(x, y) for x, y in pts if y is not None and math.isfinite(y)]
        colour = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline class="series" fill="none" stroke="{colour}" stroke-width="2" '
                     f'points="{coords}"><title>{esc(name)}</title></polyline>')
        parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}">'
                  f"<title>{esc(name)}: {y:.4g}</title></circle>" for x, y in pts if len(pts) < 60]
        if legend:
            parts.append(_text(x1 + 12, y1 + 12 * i, name, "start", 10)
                         .replace('fill="#333"', f'fill="{colour}"'))
    return _frame("lines", title, "".join(parts), f' data-series="{len(series)}"')
