"""The report's plots (matplotlib to inline SVG): exact bar counts, titles, labelled axes and
ticks, read back from the SVG's text elements."""

from __future__ import annotations

import re

from mitune_ray.report.plots import lines, mi_by_round, mi_histogram


def texts(svg: str) -> list[str]:
    """The text elements of a plot, in order: tick labels, axis labels, title, legend."""
    return re.findall(r"<text[^>]*>([^<]*)</text>", svg)


def test_mi_histogram_bars_counts_and_labelled_axes():
    svg = mi_histogram([1.0, 2.0, 2.0, 3.0, 4.0, float("nan")], [4.0], title="MI <r1>", bins=3,
                       xlabel="MI (nats)")
    assert svg.startswith('<svg class="plot hist"')
    assert 'data-counts="1,2,2"' in svg and 'data-selected="0,0,1"' in svg
    assert "<title>MI &lt;r1&gt;</title>" in svg and "<r1>" not in svg
    words = texts(svg)
    assert {"MI (nats)", "candidates", "MI &lt;r1&gt;", "all candidates", "selected"} <= set(words)
    assert {"1.0", "2.0", "3.0", "4.0"} <= set(words)  # ticks along the axis, not only its ends
    flat = mi_histogram([5.0, 5.0], [], title="one value", bins=2)  # a single value: widened
    assert 'data-counts="0,2"' in flat


def test_line_plot_names_its_ticks_axes_and_draws_intervals():
    svg = lines({"a": [(0, 1.0), (1, 3.0)], "b": [(0, 2.0), (1, float("nan"))]}, title="t",
                xlabel="model", ylabel="BLIP-VQA", xticks={0: "base", 1: "round 1"},
                intervals={"a": [(0.5, 1.5), (2.0, 4.0)]})
    assert 'data-series="2"' in svg and svg.count('<g id="') == 0  # no ids repeated across plots
    words = texts(svg)
    assert words[:3] == ["base", "round 1", "model"] and words[-3:] == ["t", "a", "b"]
    assert "BLIP-VQA" in words and len([w for w in words if re.fullmatch(r"[\d.]+", w)]) >= 4
    assert svg.count("<path") > 10  # lines, markers, error bars, ticks
    steps = lines({"round 1": [(1, 0.5), (2, 0.4), (3, 0.3)]}, title="loss", xlabel="optimizer step",
                  ylabel="loss")
    assert 'data-series="1"' in steps and {"1", "2", "3"} <= set(texts(steps))  # whole steps


def test_candidate_mi_by_round_is_a_box_per_round_and_group():
    svg = mi_by_round({1: ([1.0, 2.0, 3.0, 4.0], [4.0]), 2: ([2.0, 3.0], [])}, ylabel="MI (nats)")
    assert svg.startswith('<svg class="plot boxes"') and 'data-rounds="1,2"' in svg
    words = texts(svg)
    assert words[:3] == ["round 1", "round 2", "round"] and "MI (nats)" in words
    assert "Candidate MI by round" in words and {"all candidates", "selected"} <= set(words)
