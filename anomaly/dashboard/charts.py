"""Small inline SVG charts drawn on the server: no JavaScript, nothing fetched from a CDN."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

import numpy as np
from markupsafe import Markup


def _svg(width: int, height: int, body: str, label: str) -> Markup:
    return Markup(
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(label)}">{body}</svg>'
    )


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def contribution_bars(contributions: Sequence[dict]) -> Markup:
    """Horizontal bars of per-feature contributions (nats); negative ones point left."""
    items = [c for c in contributions if isinstance(c.get("contribution"), int | float)]
    if not items:
        return Markup("")
    width, row, left, right = 560, 26, 150, 70
    top = max(abs(float(c["contribution"])) for c in items) or 1.0
    has_negative = any(float(c["contribution"]) < 0 for c in items)
    span = width - left - right
    zero = left + (span / 2 if has_negative else 0)
    scale = (span / 2 if has_negative else span) / top
    parts = []
    for i, c in enumerate(items):
        value = float(c["contribution"])
        y = i * row + 4
        length = abs(value) * scale
        x = zero if value >= 0 else zero - length
        parts.append(
            f'<text x="{left - 8}" y="{y + 14}" text-anchor="end">{escape(str(c["feature"]))}'
            f"</text>"
            f'<rect class="bar{" neg" if value < 0 else ""}" x="{x:.1f}" y="{y}" '
            f'width="{max(length, 1):.1f}" height="{row - 10}"><title>{escape(str(c["feature"]))}'
            f": {_fmt(value)} nats</title></rect>"
            f'<text x="{width - right + 6}" y="{y + 14}">{_fmt(value)}</text>'
        )
    parts.append(
        f'<line class="axis" x1="{zero}" y1="0" x2="{zero}" y2="{len(items) * row}"></line>'
    )
    return _svg(width, len(items) * row + 4, "".join(parts), "feature contributions in nats")


def score_histogram(calibration: np.ndarray, score: float, threshold: float) -> Markup:
    """Histogram of the calibration scores (−log-likelihood of held-out normal rows), with the
    flag threshold and this record's score marked; a score beyond the range is drawn at the
    right edge with its value."""
    width, height, pad, bins = 560, 150, 24, 40
    cal = np.asarray(calibration, dtype=float)
    low, high = float(cal.min()), float(max(cal.max(), threshold))
    if high <= low:
        high = low + 1.0
    counts, _ = np.histogram(cal, bins=bins, range=(low, high))
    plot_w, plot_h = width - 2 * pad, height - 2 * pad
    peak = counts.max() or 1

    def x_of(v: float) -> float:
        return pad + (min(max(v, low), high) - low) / (high - low) * plot_w

    bar_w = plot_w / bins
    parts = [
        f'<rect class="hist" x="{pad + i * bar_w:.1f}" y="{pad + plot_h - c / peak * plot_h:.1f}"'
        f' width="{max(bar_w - 1, 1):.1f}" height="{c / peak * plot_h:.1f}"></rect>'
        for i, c in enumerate(counts)
    ]
    tx = x_of(threshold)
    parts.append(
        f'<line class="threshold" x1="{tx:.1f}" y1="{pad - 6}" x2="{tx:.1f}" '
        f'y2="{pad + plot_h}"></line><text x="{tx - 4:.1f}" y="{pad - 10}" text-anchor="end">'
        f"threshold {_fmt(threshold)}</text>"
    )
    sx = x_of(score)
    beyond = " →" if score > high else ""
    parts.append(
        f'<line class="marker" x1="{sx:.1f}" y1="{pad - 6}" x2="{sx:.1f}" y2="{pad + plot_h}">'
        f'</line><text class="marker-label" x="{sx:.1f}" y="{height - 4}" text-anchor="end">'
        f"this record {_fmt(score)}{beyond}</text>"
        f'<text x="{pad}" y="{height - 4}">{_fmt(low)}</text>'
    )
    label = f"calibration score distribution, record score {_fmt(score)}"
    return _svg(width, height, "".join(parts), label)


def range_bar(value: object, quantiles: dict[str, float]) -> Markup:
    """A value against its training quantiles: 1–99 % (light), 5–95 % (dark), the median,
    and the value as a dot (red outside 1–99 %, clipped at the ends)."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return Markup("")
    if not math.isfinite(v):
        return Markup("")
    q01, q05, q50, q95, q99 = (quantiles[k] for k in ("q01", "q05", "q50", "q95", "q99"))
    low, high = min(q01, v), max(q99, v)
    margin = (high - low) * 0.05 or 1.0
    low, high = low - margin, high + margin
    width, height = 220, 18

    def x_of(u: float) -> float:
        return (u - low) / (high - low) * width

    outside = v < q01 or v > q99
    body = (
        f'<rect class="range-wide" x="{x_of(q01):.1f}" y="6" width="{x_of(q99) - x_of(q01):.1f}"'
        f' height="6"></rect><rect class="range-mid" x="{x_of(q05):.1f}" y="5" '
        f'width="{x_of(q95) - x_of(q05):.1f}" height="8"></rect>'
        f'<line class="median" x1="{x_of(q50):.1f}" y1="2" x2="{x_of(q50):.1f}" y2="16"></line>'
        f'<circle class="value{" outside" if outside else ""}" cx="{x_of(v):.1f}" cy="9" r="5">'
        "</circle>"
    )
    return _svg(width, height, body, "value against the training range")


def flag_rate_chart(points: Sequence[tuple[str, float, float, bool]]) -> Markup:
    """Flag rate per batch in time order, against each batch's expected rate α; batches with
    a shift alarm are red. ``points``: (batch id, flag rate, expected rate, alarm)."""
    if not points:
        return Markup("")
    width, height, pad = 720, 200, 36
    top = max(max(p[1] for p in points), max(p[2] for p in points)) * 1.15 or 1.0
    plot_w, plot_h = width - 2 * pad, height - 2 * pad
    step = plot_w / max(len(points), 1)

    def y_of(rate: float) -> float:
        return pad + plot_h - rate / top * plot_h

    parts = []
    for i, (batch, rate, expected, alarm) in enumerate(points):
        x = pad + i * step
        parts.append(
            f'<rect class="bar{" alarm" if alarm else ""}" x="{x + step * 0.15:.1f}" '
            f'y="{y_of(rate):.1f}" width="{max(step * 0.7, 1):.1f}" '
            f'height="{pad + plot_h - y_of(rate):.1f}"><title>{escape(batch)}: flag rate '
            f"{rate:.4f} (α {expected:.4f}){' — shift alarm' if alarm else ''}</title></rect>"
            f'<line class="alpha" x1="{x:.1f}" y1="{y_of(expected):.1f}" x2="{x + step:.1f}" '
            f'y2="{y_of(expected):.1f}"></line>'
        )
    parts.append(
        f'<text x="{pad}" y="{pad - 10}">flag rate (max {top / 1.15:.4f}); dashed: expected α'
        f'</text><line class="axis" x1="{pad}" y1="{pad + plot_h}" x2="{width - pad}" '
        f'y2="{pad + plot_h}"></line>'
    )
    return _svg(width, height, "".join(parts), "flag rate per batch against alpha")
