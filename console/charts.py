"""Server-side SVG charts: no JavaScript library, nothing fetched, readable without scripts.

Colours come from CSS classes (`series-N`), never from inline styles, so the strict
Content-Security-Policy holds. Every label is escaped; every chart has a title and a text
description, and the pages show the same numbers in a table for screen readers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup
from markupsafe import escape as _html_escape

from schoolgate.console.text import printable

SERIES_CLASSES = 8


def escape(text: str) -> Markup:
    return _html_escape(printable(text))


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[int]


def _nice_max(value: int) -> int:
    """Round the axis maximum up to 1, 2 or 5 times a power of ten."""
    if value <= 0:
        return 1
    magnitude = 1
    while magnitude * 10 <= value:
        magnitude *= 10
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _fmt(value: int) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M".replace(".0M", "M")
    if value >= 10_000:
        return f"{value // 1000}k"
    return str(value)


def stacked_columns(
    title: str, labels: Sequence[str], series: Sequence[Series], *, width: int = 520, height: int = 240
) -> Markup:
    """Columns over time (one per label), each stacked by series."""
    left, right, top, bottom = 44, 8, 10, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    count = max(len(labels), 1)
    totals = [sum(s.values[i] for s in series if i < len(s.values)) for i in range(len(labels))]
    axis_max = _nice_max(max(totals, default=0))
    slot = plot_w / count
    bar_w = max(1.0, slot * 0.72)
    cid = _chart_id(title)
    parts: list[str] = [
        f'<svg viewBox="0 0 {width} {height}" role="img" aria-labelledby="{cid}-t" '
        f'xmlns="http://www.w3.org/2000/svg"><title id="{cid}-t">{escape(title)}</title>'
    ]
    for tick in range(5):
        value = axis_max * tick // 4
        y = top + plot_h - plot_h * tick / 4
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{_fmt(value)}</text>')
    label_every = max(1, count // 12)
    for index, label in enumerate(labels):
        x = left + slot * index + (slot - bar_w) / 2
        y = top + plot_h
        for number, item in enumerate(series):
            value = item.values[index] if index < len(item.values) else 0
            if value <= 0:
                continue
            h = plot_h * value / axis_max
            y -= h
            parts.append(
                f'<rect class="series-{number % SERIES_CLASSES}" x="{x:.1f}" y="{y:.1f}" '
                f'width="{bar_w:.1f}" height="{h:.1f}">'
                f"<title>{escape(label)}: {escape(item.name)} {value}</title></rect>"
            )
        if index % label_every == 0:
            cx = left + slot * index + slot / 2
            parts.append(f'<text x="{cx:.1f}" y="{height - bottom + 16}" text-anchor="middle">{escape(label)}</text>')
    parts.append(
        f'<line class="axis" x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}"/></svg>'
    )
    return Markup("".join(parts))  # noqa: S704 - every text part escaped above


def horizontal_bars(title: str, items: Sequence[tuple[str, int]], *, width: int = 420) -> Markup:
    """One bar per item, largest first as given; for 'by service' and 'by role' totals."""
    row_h, left, right, top = 26, 130, 44, 6
    height = top * 2 + row_h * max(len(items), 1)
    axis_max = max((v for _, v in items), default=0) or 1
    plot_w = width - left - right
    cid = _chart_id(title)
    parts = [
        f'<svg viewBox="0 0 {width} {height}" role="img" aria-labelledby="{cid}-t" '
        f'xmlns="http://www.w3.org/2000/svg"><title id="{cid}-t">{escape(title)}</title>'
    ]
    for index, (label, value) in enumerate(items):
        y = top + row_h * index
        w = plot_w * value / axis_max
        short = label if len(label) <= 18 else label[:17] + "…"
        parts.append(f'<text class="bar-label" x="{left - 6}" y="{y + 17}" text-anchor="end">{escape(short)}</text>')
        parts.append(
            f'<rect class="series-{index % SERIES_CLASSES}" x="{left}" y="{y + 4}" width="{max(w, 1):.1f}" '
            f'height="{row_h - 8}"><title>{escape(label)}: {value}</title></rect>'
        )
        parts.append(f'<text x="{left + w + 6:.1f}" y="{y + 17}">{_fmt(value)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text part escaped above


def _chart_id(title: str) -> str:
    return "c" + "".join(c for c in title.lower() if c.isalnum())[:24]
