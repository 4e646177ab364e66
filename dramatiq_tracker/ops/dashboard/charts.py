"""Charts drawn on the server, as SVG: no script, no library, nothing but the page's stylesheet."""

from __future__ import annotations

import time
from collections.abc import Sequence

from markupsafe import Markup, escape

from ..views import Timeline

#: The chart's drawing size, in SVG units (it scales to the page's width).
WIDTH, HEIGHT = 1000, 170
_LEFT, _RIGHT, _TOP, _BOTTOM = 34, 8, 10, 22


def nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... that is at least ``value`` (at least 1)."""
    if value <= 1:
        return 1
    magnitude = 1
    while magnitude * 10 <= value:
        magnitude *= 10
    for factor in (1, 2, 5):
        if factor * magnitude >= value:
            return factor * magnitude
    return 10 * magnitude


def _clock(ms: int) -> str:
    return time.strftime("%H:%M", time.gmtime(ms / 1000))


def _ago(ms: int) -> str:
    minutes = ms // 60_000
    if minutes >= 120 and minutes % 60 == 0:
        return "%d h ago" % (minutes // 60)
    return "%d min ago" % minutes if minutes else "%d s ago" % (ms // 1000)


def timeline_chart(timeline: Timeline, series: Sequence[tuple[str, str]], *, title: str) -> Markup:
    """A stacked bar chart of a timeline, one bar per bucket, oldest on the left.

    Parameters:
      timeline(Timeline)
      series(list[tuple[str, str]]): (event kind, label) of each stacked series, bottom first; each
        bar segment has the CSS class ``series-<kind>``.
      title(str): What the chart shows, for screen readers.
    """
    buckets = timeline.buckets
    totals = [sum(timeline.counts.get(kind, [0] * buckets)[index] for kind, _ in series) for index in range(buckets)]
    top = nice_ceiling(max(totals, default=0))
    plot_width, plot_height = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    bar = plot_width / max(1, buckets)
    parts = [
        '<svg class="chart" viewBox="0 0 %d %d" role="img" aria-label="%s" xmlns="http://www.w3.org/2000/svg">'
        % (WIDTH, HEIGHT, escape(title)),
        "<title>%s</title>" % escape(title),
    ]
    for fraction in (0, 0.5, 1):
        y = _TOP + plot_height * (1 - fraction)
        parts.append('<line class="grid" x1="%d" x2="%d" y1="%.1f" y2="%.1f"/>' % (_LEFT, WIDTH - _RIGHT, y, y))
        label = top * fraction
        if fraction == 0 or label == int(label):
            parts.append('<text class="axis" x="%d" y="%.1f" text-anchor="end">%d</text>' % (_LEFT - 4, y + 4, label))
    for index in range(buckets):
        x = _LEFT + index * bar
        y = _TOP + plot_height
        begin = timeline.start + index * timeline.step
        described = ", ".join(
            "%d %s" % (timeline.counts.get(kind, [0] * buckets)[index], label) for kind, label in series
        )
        parts.append('<g class="bucket"><title>%s</title>' % escape("%s\u2013%s UTC: %s" % (
            _clock(begin), _clock(begin + timeline.step), described)))  # fmt: skip
        # A transparent full-height bar, so that every bucket has a tooltip.
        parts.append('<rect class="hover" x="%.1f" y="%d" width="%.1f" height="%d"/>' % (x, _TOP, bar, plot_height))
        for kind, _ in series:
            count = timeline.counts.get(kind, [0] * buckets)[index]
            if not count:
                continue
            height = plot_height * count / top
            y -= height
            parts.append(
                '<rect class="series-%s" x="%.1f" y="%.1f" width="%.1f" height="%.1f"/>'
                % (escape(kind), x + bar * 0.1, y, bar * 0.8, height)
            )
        parts.append("</g>")
    window = timeline.step * buckets
    base = HEIGHT - 6
    parts.append('<text class="axis" x="%d" y="%d" text-anchor="start">%s</text>' % (_LEFT, base, _ago(window)))
    parts.append(
        '<text class="axis" x="%.1f" y="%d" text-anchor="middle">%s</text>'
        % (_LEFT + plot_width / 2, base, _ago(window // 2))
    )
    parts.append('<text class="axis" x="%d" y="%d" text-anchor="end">now</text>' % (WIDTH - _RIGHT, base))
    parts.append("</svg>")
    return Markup("".join(parts))
