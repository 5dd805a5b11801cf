"""Charts over days, drawn on the server as SVG with real axes: values on the y axis, dates on
the x axis, the model version in force as background bands, each point's numbers in a hover
``<title>``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 860, 190
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 26, 34


@dataclass(frozen=True)
class Series:
    """Values per day (None: nothing that day); ``tips`` are the hover texts, ``alarms`` days
    drawn in red; ``counts`` puts whole numbers on the value axis."""

    name: str
    values: Sequence[float | None]
    tips: Sequence[str]
    kind: str = "line"  # or "bar"
    fmt: Callable[[float], str] = lambda v: f"{v:,.0f}"
    counts: bool = True
    reference: Sequence[float | None] | None = None  # e.g. the expected flag rate α, dashed
    alarms: Sequence[bool] | None = None


def nice_ticks(top: float, count: int = 4, whole: bool = False) -> list[float]:
    """Round tick values from 0 to at least ``top`` (``whole``: whole numbers only).

    >>> nice_ticks(0.034)
    [0.0, 0.01, 0.02, 0.03, 0.04]
    >>> nice_ticks(2, whole=True)
    [0.0, 1.0, 2.0]
    """
    if top <= 0 or not math.isfinite(top):
        return [0.0, 1.0]
    raw = max(top / count, 1.0) if whole else top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    n = math.ceil(top / step - 1e-9)
    return [round(float(i * step), 12) for i in range(n + 1)]


def bands(versions: Sequence[Sequence[str]]) -> list[tuple[int, int, str]]:
    """Runs of days scored by the same model version(s): (first index, last index, label)."""
    out: list[tuple[int, int, str]] = []
    for i, v in enumerate(versions):
        label = "v" + "+v".join(v) if v else "?"
        if out and out[-1][2] == label:
            out[-1] = (out[-1][0], i, label)
        else:
            out.append((i, i, label))
    return out


def day_chart(days: Sequence[date], series: Series, versions: Sequence[Sequence[str]]) -> Markup:
    """One series over days with its axes and the model-version bands."""
    if not days:
        return Markup("")
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    n = len(days)
    step = plot_w / n
    present = [v for v in series.values if v is not None]
    reference = [v for v in series.reference or [] if v is not None]
    top_value = max([*present, *reference], default=0.0)
    ticks = nice_ticks(top_value, whole=series.counts)
    y_max = ticks[-1]

    def x_of(i: float) -> float:
        return LEFT + (i + 0.5) * step

    def y_of(v: float) -> float:
        return TOP + plot_h - v / y_max * plot_h

    parts = []
    for k, (start, end, label) in enumerate(bands(versions)):
        x0 = LEFT + start * step
        parts.append(
            f'<rect class="band band-{k % 2}" x="{x0:.1f}" y="{TOP}" '
            f'width="{(end - start + 1) * step:.1f}" height="{plot_h}"><title>model {escape(label)}'
            f" in force {days[start]} – {days[end]}</title></rect>"
            f'<text class="band-label" x="{x0 + 3:.1f}" y="{TOP + 11}">{escape(label)}</text>'
        )
    for t in ticks:  # y axis: grid lines and values
        y = y_of(t)
        parts.append(
            f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}"></line>'
            f'<text class="y-tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(series.fmt(t))}</text>"
        )
    every = max(1, math.ceil(n / 8))  # x axis: at most ~8 dates
    for i in range(0, n, every):
        parts.append(
            f'<line class="axis" x1="{x_of(i):.1f}" y1="{TOP + plot_h}" x2="{x_of(i):.1f}" '
            f'y2="{TOP + plot_h + 4}"></line><text class="x-tick" x="{x_of(i):.1f}" '
            f'y="{TOP + plot_h + 16}" text-anchor="middle">{days[i].isoformat()}</text>'
        )

    def lines(values: Sequence[float | None], css: str) -> None:
        """One polyline per run of days with values (a step per day for the reference)."""
        runs: list[list[str]] = [[]]
        for i, v in enumerate(values):
            if v is None:
                runs.append([])
            elif css == "reference":  # α holds over the whole day
                runs[-1] += [
                    f"{x_of(i - 0.5):.1f},{y_of(v):.1f}",
                    f"{x_of(i + 0.5):.1f},{y_of(v):.1f}",
                ]
            else:
                runs[-1].append(f"{x_of(i):.1f},{y_of(v):.1f}")
        for run in runs:
            if len(run) > 1:
                parts.append(f'<polyline class="{css}" points="{" ".join(run)}"></polyline>')

    if series.reference is not None:
        lines(series.reference, "reference")
    if series.kind == "line":
        lines(series.values, "series")
    for i, v in enumerate(series.values):
        if v is None:
            continue
        alarm = bool(series.alarms and series.alarms[i])
        tip = f"<title>{escape(series.tips[i])}</title>"
        if series.kind == "bar":
            parts.append(
                f'<rect class="point bar{" alarm" if alarm else ""}" '
                f'x="{x_of(i) - step * 0.35:.1f}" y="{y_of(v):.1f}" '
                f'width="{max(step * 0.7, 1):.1f}" '
                f'height="{TOP + plot_h - y_of(v):.1f}">{tip}</rect>'
            )
        else:
            parts.append(
                f'<circle class="point{" alarm" if alarm else ""}" cx="{x_of(i):.1f}" '
                f'cy="{y_of(v):.1f}" r="{4 if alarm else 3}">{tip}</circle>'
            )
    parts.append(
        f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}"></line>'
        f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" '
        f'y2="{TOP + plot_h}"></line>'
        f'<text class="chart-title" x="{LEFT}" y="{TOP - 10}">{escape(series.name)}</text>'
        f'<text class="axis-title" x="{WIDTH - RIGHT}" y="{HEIGHT - 2}" text-anchor="end">'
        "day (UTC)</text>"
    )
    return Markup(
        f'<svg class="chart day-chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
        f'height="{HEIGHT}" role="img" aria-label="{escape(series.name)} per day">'
        f"{''.join(parts)}</svg>"
    )
