"""Small server-rendered SVG charts for the admin: no JavaScript, no CDN, work offline.

Each function returns a ``SafeString`` holding one ``<svg>`` element. Every piece of
text is escaped here, so callers can pass item names or placements straight in. Charts
are accessible: ``role="img"`` with a ``<title>`` and ``<desc>``, and every data point
carries its own ``<title>`` (a tooltip, and what a screen reader reads).

Colours use ``currentColor`` for ink, so charts follow the admin's light and dark themes;
series colours come from the Okabe-Ito palette, which colour-blind readers can tell apart.
"""

import itertools
import math

from django.utils.html import escape
from django.utils.safestring import mark_safe

PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]

_ids = itertools.count(1)


def nice_ticks(low, high, count=5):
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering [low, high]."""
    if low is None or high is None or not math.isfinite(low) or not math.isfinite(high):
        low, high = 0.0, 1.0
    if high < low:
        low, high = high, low
    if high == low:
        high = low + (abs(low) or 1.0)
    raw_step = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw_step))
    for factor in (1, 2, 2.5, 5, 10):
        step = factor * magnitude
        if step >= raw_step:
            break
    first = math.floor(low / step + 1e-9) * step
    ticks = [round(first, 12)]
    while ticks[-1] < high - 1e-12 and len(ticks) < 50:
        ticks.append(round(first + len(ticks) * step, 12))
    return ticks


def format_number(value):
    """Short, readable tick and tooltip labels: 0.0412, 1.5k, 12."""
    if value is None:
        return "—"
    magnitude = abs(value)
    if magnitude >= 1_000_000:
        return f"{value / 1_000_000:.3g}M"
    if magnitude >= 10_000:
        return f"{value / 1000:.3g}k"
    if magnitude >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    if magnitude >= 1:
        return f"{value:.3g}"
    return f"{value:.3g}" if magnitude >= 0.001 or value == 0 else f"{value:.2e}"


class _Frame:
    """Plot geometry shared by line and bar charts: margins, scales, axes, legend."""

    def __init__(self, width, height, n_slots, y_ticks, legend_rows):
        self.width, self.height = width, height
        self.left, self.right = 58, 16
        self.top = 34 + 18 * legend_rows
        self.bottom = 46
        self.n_slots = max(n_slots, 1)
        self.y_ticks = y_ticks
        self.y_low, self.y_high = y_ticks[0], y_ticks[-1]

    @property
    def plot_width(self):
        return self.width - self.left - self.right

    @property
    def plot_height(self):
        return self.height - self.top - self.bottom

    def slot_width(self):
        return self.plot_width / self.n_slots

    def x_center(self, index):
        return self.left + (index + 0.5) * self.slot_width()

    def y(self, value):
        span = (self.y_high - self.y_low) or 1.0
        return self.top + self.plot_height * (1 - (value - self.y_low) / span)


def _legend(names, width, y, colors=None):
    """Legend entries laid out left to right, wrapping onto more rows as needed."""
    parts, x, row = [], 58, 0
    for index, name in enumerate(names):
        label_width = 26 + 7 * len(name)
        if x + label_width > width - 10 and x > 58:
            x, row = 58, row + 1
        top = y + row * 18
        color = colors[index] if colors else PALETTE[index % len(PALETTE)]
        parts.append(
            f'<g class="legend-entry"><rect x="{x}" y="{top - 9}" width="12" height="12" rx="2" fill="{color}"/>'
            f'<text x="{x + 17}" y="{top + 1}" font-size="12">{escape(name)}</text></g>'
        )
        x += label_width
    return "".join(parts)


def _legend_rows(names, width):
    x, rows = 58, 1
    for name in names:
        label_width = 26 + 7 * len(name)
        if x + label_width > width - 10 and x > 58:
            x, rows = 58, rows + 1
        x += label_width
    return rows if names else 0


def _axes(frame, labels, x_title, y_title, y_format):
    parts = []
    for tick in frame.y_ticks:
        y = frame.y(tick)
        parts.append(
            f'<line class="grid" x1="{frame.left}" x2="{frame.width - frame.right}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="currentColor" stroke-opacity="0.15"/>'
            f'<text class="y-tick" x="{frame.left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">'
            f"{escape(y_format(tick))}</text>"
        )
    bottom = frame.height - frame.bottom
    parts.append(
        f'<line class="axis x-axis" x1="{frame.left}" x2="{frame.width - frame.right}" y1="{bottom}" y2="{bottom}" '
        f'stroke="currentColor" stroke-opacity="0.6"/>'
        f'<line class="axis y-axis" x1="{frame.left}" x2="{frame.left}" y1="{frame.top}" y2="{bottom}" '
        f'stroke="currentColor" stroke-opacity="0.6"/>'
    )
    # Label at most ~12 slots so long date ranges stay legible; always the last one.
    every = max(1, math.ceil(len(labels) / 12))
    last = len(labels) - 1
    for index, label in enumerate(labels):
        if index % every and index != last:
            continue
        if index != last and 0 < last - index < every / 2 + 0.5 and last % every:
            continue  # too close to the last label, which is always shown
        x = frame.x_center(index)
        parts.append(
            f'<text class="x-tick" x="{x:.1f}" y="{bottom + 15}" text-anchor="middle" font-size="11">'
            f"{escape(label)}</text>"
        )
    if x_title:
        parts.append(
            f'<text class="x-title" x="{frame.left + frame.plot_width / 2:.1f}" y="{frame.height - 8}" '
            f'text-anchor="middle" font-size="12">{escape(x_title)}</text>'
        )
    if y_title:
        cy = frame.top + frame.plot_height / 2
        parts.append(
            f'<text class="y-title" x="14" y="{cy:.1f}" text-anchor="middle" font-size="12" '
            f'transform="rotate(-90 14 {cy:.1f})">{escape(y_title)}</text>'
        )
    return "".join(parts)


def _svg(kind, title, description, width, height, body, css_class):
    chart_id = f"rec-chart-{next(_ids)}"
    return mark_safe(
        f'<svg xmlns="http://www.w3.org/2000/svg" class="rec-chart rec-chart-{kind} {escape(css_class)}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-labelledby="{chart_id}-title {chart_id}-desc" '
        f'fill="currentColor" style="max-width:100%;height:auto;font-family:system-ui,sans-serif;overflow:visible">'
        f'<title id="{chart_id}-title">{escape(title)}</title>'
        f'<desc id="{chart_id}-desc">{escape(description)}</desc>'
        f'<text class="chart-title" x="{width / 2:.1f}" y="18" text-anchor="middle" font-size="14" '
        f'font-weight="600">{escape(title)}</text>'
        f"{body}</svg>"
    )


def _empty(kind, title, width, height, css_class, message):
    body = (
        f'<text class="empty" x="{width / 2:.1f}" y="{height / 2:.1f}" text-anchor="middle" '
        f'font-size="13" fill-opacity="0.7">{escape(message)}</text>'
    )
    return _svg(
        kind, title, message, width, height, f'<g fill="currentColor">{body}</g>', css_class
    )


def _values_range(values, zero_based):
    present = [v for v in values if v is not None and math.isfinite(v)]
    if not present:
        return None
    low, high = min(present), max(present)
    if zero_based:
        low, high = min(low, 0.0), max(high, 0.0)
    return low, high


def line_chart(
    labels,
    series,
    *,
    title,
    x_title="",
    y_title="",
    width=560,
    height=280,
    y_format=format_number,
    zero_based=False,
    css_class="",
    empty_message="No data yet.",
    bands=None,
    reference=None,
    y_range=None,
    colors=None,
):
    """Lines over categorical x positions (epochs, days).

    ``series`` is a list of ``(name, values)`` with one value per label; ``None`` leaves
    a gap. Each point is a circle with a ``<title>`` naming series, label and value.
    ``bands`` maps a series name to ``(lows, highs)``, its interval at each label, drawn
    as a shaded band behind the line (and named in the points' titles); ``reference``
    draws a dashed horizontal line at that value (zero lift, say). ``y_range`` fixes the
    axis to ``(low, high)`` (rounded out to ticks): points beyond it are left out and
    bands are cut at its edges, so that a few wild early values do not flatten the rest.
    ``colors`` gives each series its colour (default: the palette in order), so a series
    keeps its colour from chart to chart.
    """
    labels = [str(label) for label in labels]
    series = [(str(name), list(values)) for name, values in series]
    bands = {str(name): (list(lows), list(highs)) for name, (lows, highs) in (bands or {}).items()}
    band_values = [v for lows, highs in bands.values() for v in lows + highs]
    extra = band_values + ([reference] if reference is not None else [])
    value_range = _values_range([v for _, values in series for v in values], zero_based)
    if not labels or value_range is None:
        return _empty("line", title, width, height, css_class, empty_message)
    value_range = _values_range([*value_range, *extra], zero_based)
    if y_range is not None:
        value_range = _values_range(
            [*y_range, *([reference] if reference is not None else [])], zero_based
        )
        series = [
            (name, [v if _present(v) and y_range[0] <= v <= y_range[1] else None for v in values])
            for name, values in series
        ]
    names = [name for name, _ in series]
    legend_rows = _legend_rows(names, width) if len(series) > 1 else 0
    frame = _Frame(width, height, len(labels), nice_ticks(*value_range), legend_rows)
    parts = [
        f'<g class="axes" fill="currentColor">{_axes(frame, labels, x_title, y_title, y_format)}</g>'
    ]
    if reference is not None:
        y = frame.y(reference)
        parts.append(
            f'<line class="reference" x1="{frame.left}" x2="{frame.width - frame.right}" '
            f'y1="{y:.1f}" y2="{y:.1f}" stroke="currentColor" stroke-opacity="0.7" '
            f'stroke-dasharray="5 4"/>'
        )
    given = list(colors or [])
    colors = [given[i] if i < len(given) else PALETTE[i % len(PALETTE)] for i in range(len(series))]
    for index, (name, _) in enumerate(series):
        if name in bands:
            parts.append(_band(frame, name, *bands[name], colors[index]))
    for index, (name, values) in enumerate(series):
        color = colors[index]
        lows, highs = bands.get(name, ([], []))
        points = [
            (frame.x_center(i), frame.y(v), i, v)
            for i, v in enumerate(values[: len(labels)])
            if v is not None and math.isfinite(v)
        ]
        # Break the line at gaps: consecutive runs of present values become one path each.
        runs, run, previous = [], [], None
        for i, v in enumerate(values[: len(labels)]):
            present = v is not None and math.isfinite(v)
            if present and previous is not None and i == previous + 1:
                run.append((frame.x_center(i), frame.y(v)))
            elif present:
                if run:
                    runs.append(run)
                run = [(frame.x_center(i), frame.y(v))]
            previous = i if present else previous
        if run:
            runs.append(run)
        paths = "".join(
            f'<path d="M{" L".join(f"{x:.1f},{y:.1f}" for x, y in run)}" fill="none" stroke="{color}" '
            f'stroke-width="2.2" stroke-linejoin="round" stroke-linecap="round"/>'
            for run in runs
            if len(run) > 1
        )
        radius = 3.5 if len(labels) <= 40 else 2
        dots = "".join(
            f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="{radius}" fill="{color}" data-value="{v!r}">'
            f"<title>{escape(name)}, {escape(labels[i])}: {escape(y_format(v))}"
            f"{escape(_interval_text(lows, highs, i, y_format))}</title></circle>"
            for x, y, i, v in points
        )
        parts.append(f'<g class="series" data-series="{escape(name)}">{paths}{dots}</g>')
    if legend_rows:
        parts.append(
            f'<g class="legend" fill="currentColor">{_legend(names, width, 38, colors)}</g>'
        )
    description = f"{title}: " + "; ".join(
        f"{name} from {y_format(_first(values))} to {y_format(_last(values))}"
        for name, values in series
    )
    return _svg("line", title, description, width, height, "".join(parts), css_class)


def bar_chart(
    labels,
    series,
    *,
    title,
    x_title="",
    y_title="",
    width=560,
    height=280,
    stacked=False,
    y_format=format_number,
    css_class="",
    empty_message="No data yet.",
):
    """Grouped (side by side) or stacked bars over categorical x positions.

    ``series`` is a list of ``(name, values)`` with one value per label (``None`` = no bar).
    Stacked bars suit counts that add up (events per kind per day); grouped bars suit
    comparisons (a version's metrics beside the baselines').
    """
    labels = [str(label) for label in labels]
    series = [
        (str(name), [None if v is None else float(v) for v in values]) for name, values in series
    ]
    if stacked:
        totals = [
            sum(values[i] or 0 for _, values in series if i < len(values))
            for i in range(len(labels))
        ]
        value_range = _values_range(totals, True)
    else:
        value_range = _values_range([v for _, values in series for v in values], True)
    if not labels or not series or value_range is None:
        return _empty("bar", title, width, height, css_class, empty_message)
    names = [name for name, _ in series]
    legend_rows = _legend_rows(names, width) if len(series) > 1 else 0
    frame = _Frame(width, height, len(labels), nice_ticks(*value_range), legend_rows)
    parts = [
        f'<g class="axes" fill="currentColor">{_axes(frame, labels, x_title, y_title, y_format)}</g>'
    ]
    slot = frame.slot_width()
    group_width = slot * 0.78
    bar_width = group_width if stacked else group_width / len(series)
    baseline = frame.y(max(frame.y_low, 0.0))
    stack_tops = [0.0] * len(labels)
    for index, (name, values) in enumerate(series):
        color = PALETTE[index % len(PALETTE)]
        bars = []
        for i, value in enumerate(values[: len(labels)]):
            if value is None:
                continue
            if stacked:
                low, high = stack_tops[i], stack_tops[i] + value
                stack_tops[i] = high
                x = frame.x_center(i) - group_width / 2
            else:
                low, high = 0.0, value
                x = frame.x_center(i) - group_width / 2 + index * bar_width
            y_top, y_bottom = frame.y(max(low, high)), frame.y(min(low, high))
            if not stacked:
                y_bottom = baseline if value >= 0 else frame.y(value)
                y_top = frame.y(value) if value >= 0 else baseline
            bars.append(
                f'<rect class="bar" x="{x:.1f}" y="{y_top:.1f}" width="{max(bar_width - 1, 1):.1f}" '
                f'height="{max(y_bottom - y_top, 0):.1f}" fill="{color}" data-value="{value!r}">'
                f"<title>{escape(name)}, {escape(labels[i])}: {escape(y_format(value))}</title></rect>"
            )
        parts.append(f'<g class="series" data-series="{escape(name)}">{"".join(bars)}</g>')
    if legend_rows:
        parts.append(f'<g class="legend" fill="currentColor">{_legend(names, width, 38)}</g>')
    description = f"{title}: " + "; ".join(
        f"{label}: "
        + ", ".join(
            f"{name} {y_format(values[i])}"
            for name, values in series
            if i < len(values) and values[i] is not None
        )
        for i, label in enumerate(labels[:40])
    )
    return _svg("bar", title, description, width, height, "".join(parts), css_class)


def _present(value):
    return value is not None and math.isfinite(value)


def _band(frame, name, lows, highs, color):
    """A series' interval as a shaded band, one polygon per run of days that have both ends.

    A run of one day is drawn as an error bar, since a polygon of one point shows nothing.
    """
    runs, run = [], []
    for i in range(frame.n_slots):
        low = lows[i] if i < len(lows) else None
        high = highs[i] if i < len(highs) else None
        if _present(low) and _present(high) and low <= frame.y_high and high >= frame.y_low:
            low, high = max(low, frame.y_low), min(high, frame.y_high)  # cut at the axis
            run.append((frame.x_center(i), frame.y(low), frame.y(high)))
        elif run:
            runs.append(run)
            run = []
    if run:
        runs.append(run)
    shapes = []
    for run in runs:
        if len(run) == 1:
            x, y_low, y_high = run[0]
            shapes.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y_low:.1f}" y2="{y_high:.1f}" '
                f'stroke="{color}" stroke-width="6" stroke-opacity="0.3"/>'
            )
            continue
        upper = " L".join(f"{x:.1f},{y_high:.1f}" for x, _, y_high in run)
        lower = " L".join(f"{x:.1f},{y_low:.1f}" for x, y_low, _ in reversed(run))
        shapes.append(f'<path d="M{upper} L{lower} Z" fill="{color}" fill-opacity="0.16"/>')
    return f'<g class="band" data-series="{escape(name)}">{"".join(shapes)}</g>'


def _interval_text(lows, highs, index, y_format):
    low = lows[index] if index < len(lows) else None
    high = highs[index] if index < len(highs) else None
    if not (_present(low) and _present(high)):
        return ""
    return f" [{y_format(low)}, {y_format(high)}]"


def _first(values):
    return next((v for v in values if v is not None), None)


def _last(values):
    return next((v for v in reversed(values) if v is not None), None)
