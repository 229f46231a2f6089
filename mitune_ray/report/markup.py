"""HTML pieces of the run report (pure: no I/O, no third-party imports); the plots are
report/plots.py's.

Every value that reaches the page goes through `esc` unless it is an `Html` (markup this module,
report/plots.py or report/page.py built), so prompt text can never become markup.

Example:
    >>> histogram([0.0, 0.4, 1.0, float("nan")], 0.0, 1.0, 2)
    [2, 1]
    >>> table(["a"], [["<b>"]])
    '<table><thead><tr><th>a</th></tr></thead><tbody><tr><td>&lt;b&gt;</td></tr></tbody></table>'
"""

from __future__ import annotations

import html
import math

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222;background:#fff}
h1{font-size:24px}h2{margin-top:32px;border-bottom:2px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f0f3f7}.metrics td{text-align:right}.metrics td:first-child{text-align:left}
.delta.up{color:#15803d}.delta.down{color:#b91c1c}.ci{color:#6b7280;font-size:12px}
.status.committed{color:#15803d}.status.not-run{color:#999}
.missing{color:#92400e;background:#fef3c7;padding:4px 8px}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plot{border:1px solid #ddd;background:#fff;max-width:100%;height:auto}
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
