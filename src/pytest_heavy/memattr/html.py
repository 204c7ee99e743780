"""``--heavy-report-html PATH``: one self-contained HTML file to look at the memory of a run.

Per module, an inline SVG timeline of the tree's RSS and GPU memory (the samples each test's
measuring took), the test boundaries as vertical lines, failed tests shaded red; then the per-test
figures, the heavy table and, with ``--heavy-find-leaks``, what each module kept. No script, no
stylesheet or font from elsewhere: it opens from a CI artifact with no network, and hovering shows
each test's name and figures through SVG ``<title>`` elements.
"""

from __future__ import annotations

import datetime
import html
import math
from collections.abc import Callable, Iterable
from typing import Any

from ..report import HeavyRecord
from ..state import Run

WIDTH, HEIGHT = 960, 240  # the plot's outer size in px
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 40  # margins: axis labels left and below
RSS_COLOR, GPU_COLOR, FAIL_COLOR = "#1f5fbf", "#2a9d4b", "#d62728"
BAD = {"failed", "error", "xpassed"}

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #ddd; text-align: left; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.bad td { color: #d62728; }
.legend span { margin-right: 16px; } .swatch { display: inline-block; width: 12px; height: 12px;
  vertical-align: middle; margin-right: 4px; }
svg text { font: 11px system-ui, sans-serif; fill: #444; }
.muted { color: #777; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} MiB"


def by_module(tests: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Tests grouped by module, tests by start time; the modules that ran in children (the heavy
    ones, the reason to open this file) first, each part in the order the modules ran."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for test in tests:
        groups.setdefault(test["module"], []).append(test)
    order = sorted(groups, key=lambda m: (all(t["process"] == "parent" for t in groups[m]),
                                          min(t["start"] for t in groups[m])))
    return {module: sorted(groups[module], key=lambda t: t["start"]) for module in order}


def _nice_step(span: float, ticks: int = 5) -> float:
    """A round axis step (1, 2, 2.5 or 5 times a power of ten) giving about ``ticks`` ticks."""
    raw = max(span / ticks, 1e-9)
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def timeline_svg(module: str, tests: list[dict[str, Any]],
                 outside: list[tuple[float, float, float | None]] | None = None) -> str:
    """The SVG of one module: RSS and GPU lines over time, test boundaries, failures in red.

    ``outside``: the parent's samples of the module's child tree (absolute times), drawn instead of the
    tests' own samples, which a C call holding the child's GIL can leave far apart.
    """
    t0 = min([tests[0]["start"], *(s[0] for s in outside or [])])
    t1 = max([*(t["stop"] for t in tests), *(s[0] for s in outside or [])])
    if outside:
        points = [(s[0] - t0, s[1], s[2]) for s in outside]
    else:
        points = sorted((t["start"] + s[0] - t0, s[1], s[2]) for t in tests for s in t["samples"])
    has_gpu = any(p[2] is not None for p in points)
    peaks = [t["rss_mib"]["peak"] or 0.0 for t in tests]
    top = max([p[1] for p in points] + [p[2] or 0.0 for p in points] + peaks + [1.0])
    step_y = _nice_step(top)
    top = step_y * (int(top / step_y) + 1)
    span = max(t1 - t0, 1e-3)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(t: float) -> float:
        return LEFT + plot_w * min(max(t, 0.0), span) / span

    def y(mib: float) -> float:
        return TOP + plot_h * (1 - mib / top)

    out = [f'<svg class="timeline" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
           f'role="img" aria-label="memory timeline of {_e(module)}">']
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" '
               'stroke="#ccc"/>')
    out += _test_spans(tests, t0, x, y, plot_h)
    out += _axes(top, step_y, span, x, y, plot_h)
    for index, color, name in ((1, RSS_COLOR, "rss"), (2, GPU_COLOR, "gpu")):
        if index == 2 and not has_gpu:
            continue
        coords = " ".join(f"{x(p[0]):.1f},{y(p[index] or 0.0):.1f}" for p in points)
        out.append(f'<polyline class="{name}" points="{coords}" fill="none" stroke="{color}" '
                   'stroke-width="2"/>')
    out.append("</svg>")
    return "\n".join(out)


def _test_spans(tests: list[dict[str, Any]], t0: float, x: Callable[[float], float],
                y: Callable[[float], float], plot_h: float) -> list[str]:
    """Each test's span (failures shaded red, a tooltip on each), its peak and, where it fits, its name."""
    out = []
    for test in tests:
        a, b = x(test["start"] - t0), x(test["stop"] - t0)
        bad = test["outcome"] in BAD
        fill = FAIL_COLOR if bad else "#000"
        opacity = "0.18" if bad else "0"
        out.append(f'<rect class="test{" failed" if bad else ""}" x="{a:.1f}" y="{TOP}" '
                   f'width="{max(b - a, 0.5):.1f}" height="{plot_h}" fill="{fill}" fill-opacity="{opacity}">'
                   f'<title>{_e(tooltip(test))}</title></rect>')
        out.append(f'<line class="boundary" x1="{a:.1f}" x2="{a:.1f}" y1="{TOP}" y2="{TOP + plot_h}" '
                   f'stroke="#999" stroke-dasharray="3,3"/>')
        peak = test["rss_mib"]["peak"]  # may fall between samples (the kernel's high-water mark)
        if peak is not None:
            out.append(f'<line class="peak" x1="{a:.1f}" x2="{max(b, a + 2):.1f}" y1="{y(peak):.1f}" '
                       f'y2="{y(peak):.1f}" stroke="{RSS_COLOR}" stroke-dasharray="2,2"/>')
        name = test["nodeid"].split("::", 1)[-1]
        if b - a > 7 * len(name):
            out.append(f'<text x="{a + 3:.1f}" y="{TOP + plot_h + 30}">{_e(name)}</text>')
    return out


def _axes(top: float, step_y: float, span: float, x: Callable[[float], float], y: Callable[[float], float],
          plot_h: float) -> list[str]:
    """MiB ticks on the left, seconds below."""
    out = []
    value = 0.0
    while value <= top + 1e-9:
        out.append(f'<line x1="{LEFT - 4}" x2="{LEFT}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
                   'stroke="#666"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value:,.0f}</text>')
        value += step_y
    step_x = _nice_step(span)
    value = 0.0
    while value <= span + 1e-9:
        out.append(f'<text x="{x(value):.1f}" y="{TOP + plot_h + 14}" text-anchor="middle">{value:g}s</text>')
        value += step_x
    out.append(f'<text x="{LEFT - 6}" y="{TOP - 4}" text-anchor="end">MiB</text>')
    return out


def tooltip(test: dict[str, Any]) -> str:
    rss = test["rss_mib"]
    text = (f"{test['nodeid']} ({test['outcome']}): RSS {_mib(rss['setup_start'])} at setup start, "
            f"{_mib(rss['teardown_end'])} after teardown, peak {_mib(rss['peak'])}")
    if test.get("gpu_mib"):
        peak = sum(d["peak"] or 0.0 for d in test["gpu_mib"].values())
        text += f"; GPU peak {_mib(peak)}"
    return text


def tests_table(tests: list[dict[str, Any]]) -> str:
    rows = ["<table class=\"tests\"><tr><th>test</th><th>outcome</th><th>RSS at setup start</th>"
            "<th>after call</th><th>after teardown</th><th>peak RSS</th><th>peak GPU</th>"
            "<th>process</th></tr>"]
    for t in tests:
        rss = t["rss_mib"]
        gpu = None if not t.get("gpu_mib") else sum(d["peak"] or 0.0 for d in t["gpu_mib"].values())
        cls = ' class="bad"' if t["outcome"] in BAD else ""
        values = (rss["setup_start"], rss["call_end"], rss["teardown_end"], rss["peak"], gpu)
        rows.append(f"<tr{cls}><td>{_e(t['nodeid'].split('::', 1)[-1])}</td><td>{_e(t['outcome'])}</td>"
                    + "".join(f'<td class="num">{_mib(v)}</td>' for v in values)
                    + f"<td>{_e(t['process'])}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def heavy_table(records: list[HeavyRecord]) -> str:
    if not records:
        return '<p class="muted">No module ran in a child process.</p>'
    rows = ["<table class=\"heavy\"><tr><th>module</th><th>tests</th><th>outcomes</th><th>wall</th>"
            "<th>start</th>"
            "<th>peak RSS</th><th>peak GPU</th><th>GPU released</th><th>exit</th></tr>"]
    for r in records:
        outcomes = " ".join(f"{n} {k}" for k, n in sorted(r.outcomes.items())) or "-"
        cls = ' class="bad"' if any(k in BAD for k in r.outcomes) else ""
        rows.append(f"<tr{cls}><td>{_e(r.unit)}</td><td class=\"num\">{r.tests}</td><td>{_e(outcomes)}</td>"
                    f"<td class=\"num\">{r.wall_s:.1f}s</td><td>{_e(r.start_method)}</td>"
                    f"<td class=\"num\">{_mib(r.peak_rss_mib)}</td>"
                    f"<td class=\"num\">{_mib(r.peak_gpu_mib)}</td>"
                    f"<td>{_e(r.released)}</td><td>{_e(r.exit)}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def document(tests: list[dict[str, Any]], run: Run, leaks: list[str]) -> str:
    groups = by_module(tests)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>pytest-heavy memory report</title>", f"<style>{STYLE}</style></head><body>",
             "<h1>pytest-heavy memory report</h1>",
             f'<p class="muted">{_e(run.hardware.summary())} &middot; '
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC &middot; {len(tests)} tests "
             f"measured in {len(groups)} modules</p>",
             '<p class="legend">'
             f'<span><i class="swatch" style="background:{RSS_COLOR}"></i>RSS of the process tree</span>'
             f'<span><i class="swatch" style="background:{GPU_COLOR}"></i>GPU memory of the tree</span>'
             f'<span><i class="swatch" style="background:{FAIL_COLOR};opacity:.3"></i>failed test</span>'
             "<span>grey dashes: test boundaries; blue dots: each test's peak RSS</span></p>",
             "<h2>Heavy modules</h2>", heavy_table(run.records)]
    if leaks:
        parts.append("<h2>Memory kept after teardown (--heavy-find-leaks)</h2><ul class=\"leaks\">")
        parts.extend(f"<li>{_e(line)}</li>" for line in leaks)
        parts.append("</ul>")
    outside = {r.unit: r.samples for r in run.records if r.kind == "module" and r.samples}
    for module, group in groups.items():
        parts.append(f'<section class="module"><h2>{_e(module)}</h2>')
        parts.append(timeline_svg(module, group, outside.get(module)))
        parts.append(tests_table(group))
        parts.append("</section>")
    if not groups:
        parts.append('<p class="muted">No test was measured.</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write(path: str, tests: list[dict[str, Any]], run: Run, leaks: list[str] | None = None) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(document(tests, run, leaks or []))
