"""An experiment's results per arm, day by day, and its verdict in words.

Only genuine, attributable events count:

* exposed shoppers: the arm's ``Assignment`` rows (shoppers served from it), the
  denominator of every per-shopper metric, whether they did anything or not;
* impressions: the tracker's impressions of the arm's lists (``Recommendation.arm``);
* clicks: click events attributed to one of the arm's lists (``events.record`` keeps a
  ``recommendation_id`` only if the list holds the item and is the shopper's own or a
  shared one) *by a shopper assigned to that arm*, so a shared list's id replayed by
  anyone else counts for nothing; each (shopper, list, item) once a day;
* add-to-carts and purchases: events of an item that the same shopper clicked in one of
  the arm's lists (a click as above) at most ``attribution_hours`` before; purchase value
  is the sum of those purchase events' ``value``, whatever the store records there (the
  demo records the quantity, so there it is units bought, not money).

Each family is one grouped query over the events; the per-shopper sums of squares that
the intervals need are computed in the database too, by a window over each shopper's
days (``_shopper_sums``), so nothing here loops over shoppers or events in Python. The
statistics are ``sequential``'s: always-valid intervals, and its test for the verdict.
"""

import math
from dataclasses import dataclass, field
from datetime import date, timedelta

from django.db import connections, transaction
from django.db.models import (
    BooleanField,
    Case,
    CharField,
    Count,
    Exists,
    F,
    FloatField,
    IntegerField,
    OuterRef,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Cast, Coalesce, Concat, TruncDate
from django.utils import timezone

from . import reports, sequential
from .models import Assignment, Event, Experiment, Recommendation


@dataclass(frozen=True)
class Metric:
    key: str
    label: str  # as the verdict says it: "B beats A on <label>"
    meaning: str
    unit: str  # what the minimum sample counts: "shoppers" or "impressions"
    success: str  # a unit with a non-zero value, for "no <success> yet"
    percent: bool = False


METRICS = {
    metric.key: metric
    for metric in (
        Metric(
            "ctr",
            "click-through rate",
            "clicks on the arm's lists per impression of them",
            "impressions",
            "clicks",
            percent=True,
        ),
        Metric(
            "clicks_per_shopper",
            "clicks per shopper",
            "clicks on the arm's lists per exposed shopper",
            "shoppers",
            "shoppers who clicked",
        ),
        Metric(
            "cart_rate",
            "add-to-carts per shopper",
            "add-to-carts of a clicked item, within the window, per exposed shopper",
            "shoppers",
            "shoppers who added to cart",
        ),
        Metric(
            "purchases_per_shopper",
            "purchases per shopper",
            "purchase events of a clicked item, within the window, per exposed shopper",
            "shoppers",
            "shoppers who purchased",
        ),
        Metric(
            "revenue_per_shopper",
            "purchase value per shopper",
            "the value of those purchase events (what the store records: quantity in the demo) "
            "per exposed shopper",
            "shoppers",
            "shoppers who purchased",
        ),
    )
}
PRIMARY_METRIC_CHOICES = [(key, metric.label) for key, metric in METRICS.items()]
# The per-shopper families and the columns each one sums per shopper.
PER_SHOPPER = {
    "clicks_per_shopper": ("clicks", "clicks"),
    "cart_rate": ("carts", "carts"),
    "purchases_per_shopper": ("purchases", "purchases"),
    "revenue_per_shopper": ("purchases", "value"),
}


# --------------------------------------------------------------------------- querysets


def experiment_period(experiment, now=None):
    """``(start, clicks_end, events_end)``: clicks count while it ran; carts and purchases
    that follow them up to one attribution window after it stopped (and never after now)."""
    now = now or timezone.now()
    start = experiment.started_at or now
    if experiment.status == Experiment.Status.RUNNING or experiment.stopped_at is None:
        return start, now, now
    window = timedelta(hours=experiment.attribution_hours)
    return start, experiment.stopped_at, min(now, experiment.stopped_at + window)


def genuine_clicks(experiment, start, end):
    """Clicks on the experiment's lists, by shoppers assigned to the arm of the list.

    Annotated with ``exp_arm``, the arm the clicked list was served from.
    """
    arm_lists = Recommendation.objects.filter(arm__experiment=experiment).order_by()
    # Correlated on the clicked list's arm and the shopper: one index probe per click.
    assigned = Assignment.objects.filter(experiment=experiment, arm=OuterRef("exp_arm"))
    return (
        Event.objects.filter(
            kind=Event.Kind.CLICK,
            recommendation_id__in=arm_lists.values("pk"),
            occurred_at__gte=start,
            occurred_at__lt=end,
        )
        .order_by()
        .annotate(
            exp_arm=Subquery(arm_lists.filter(pk=OuterRef("recommendation_id")).values("arm")[:1]),
            assigned=Case(
                When(user__isnull=False, then=Exists(assigned.filter(user=OuterRef("user")))),
                default=Exists(
                    assigned.filter(user__isnull=True, session_key=OuterRef("session_key"))
                ),
                output_field=BooleanField(),
            ),
        )
        .filter(assigned=True)
    )


def attributed_events(experiment, kind, start, clicks_end, end):
    """``kind`` events (add-to-cart, purchase) that follow a genuine click on the same item.

    The click must be the same shopper's and at most ``attribution_hours`` earlier; the
    event is annotated with the clicked list's arm (``exp_arm``). A shopper is in one arm
    of an experiment, so any such click names the same arm.
    """
    clicks = genuine_clicks(experiment, start, clicks_end)
    window = timedelta(hours=experiment.attribution_hours)

    def clicked_arm(**shopper):
        return Subquery(
            clicks.filter(
                **shopper,
                item=OuterRef("item"),
                occurred_at__lte=OuterRef("occurred_at"),
                occurred_at__gt=OuterRef("occurred_at") - window,
            ).values("exp_arm")[:1]
        )

    return (
        Event.objects.filter(kind=kind, occurred_at__gte=start, occurred_at__lt=end)
        .order_by()
        .annotate(
            exp_arm=Case(
                When(user__isnull=False, then=clicked_arm(user=OuterRef("user"))),
                default=clicked_arm(user__isnull=True, session_key=OuterRef("session_key")),
            )
        )
        .filter(exp_arm__isnull=False)
    )


def _local_day(field_name):
    return TruncDate(field_name, tzinfo=timezone.get_current_timezone())


def _as_date(value):
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def _shopper_sums(per_shopper_day, columns):
    """``{(arm, day): {column: (sum, sum of squares of shopper totals, new non-zero shoppers)}}``.

    ``per_shopper_day`` is a values queryset with one row per (``exp_arm``, ``shopper``,
    ``day``) and a value per column. The sum of squares a day adds to the running total
    of each shopper ``c`` with the day's ``x`` is ``(c + x)**2 - c**2 = x**2 + 2*c*x``,
    with ``c`` from a window over the shopper's earlier days: summing those per day and
    cumulating over days gives, for every day, the sum of squares of every shopper's
    total up to then, in one query.
    """
    connection = connections[per_shopper_day.db]
    quote = connection.ops.quote_name
    inner, params = per_shopper_day.query.sql_with_params()
    arm, shopper, day = quote("exp_arm"), quote("shopper"), quote("day")
    windows, sums = [], []
    for name in columns:
        column, before = quote(name), quote(f"{name}_before")
        windows.append(
            f"{column}, COALESCE(SUM({column}) OVER (PARTITION BY {arm}, {shopper} "
            f"ORDER BY {day} ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS {before}"
        )
        sums.append(
            f"SUM({column}), SUM({column} * {column} + 2 * {column} * {before}), "
            f"SUM(CASE WHEN {before} = 0 AND {column} <> 0 THEN 1 ELSE 0 END)"
        )
    sql = (
        f"SELECT {arm}, {day}, {', '.join(sums)} FROM ("
        f"SELECT {arm}, {shopper}, {day}, {', '.join(windows)} FROM ({inner}) per_shopper_day"
        f") per_shopper_running GROUP BY {arm}, {day}"
    )
    rows = _fetch(connection, sql, params)
    result = {}
    for row in rows:
        values = row[2:]
        result[(row[0], _as_date(row[1]))] = {
            name: tuple(float(v or 0) for v in values[3 * i : 3 * i + 3])
            for i, name in enumerate(columns)
        }
    return result


def _fetch(connection, sql, params):
    """Run one of the results' queries, on PostgreSQL without JIT compilation.

    Their per-event subqueries are cheap index probes, but the planner's cost estimate for
    them crosses ``jit_above_cost``, and compiling then takes longer (a second or more)
    than running the query; ``SET LOCAL`` keeps the change to this transaction.
    """
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL jit = off")
        cursor.execute(sql, params)
        return cursor.fetchall()


def _per_shopper_day(queryset, **columns):
    return (
        queryset.annotate(shopper=reports.shopper_key(), day=_local_day("occurred_at"))
        .values("exp_arm", "shopper", "day")
        .annotate(**columns)
        .order_by()
    )


def collect(experiment, now=None):
    """Everything the results need, per (arm, day): one query per family of metrics.

    Returns ``{"exposed", "lists", "clicks", "carts", "purchases"}``, each a dict keyed by
    ``(arm id, date)``.
    """
    start, clicks_end, events_end = experiment_period(experiment, now)
    text = CharField()
    exposed = {
        (row["arm"], _as_date(row["day"])): row["n"]
        for row in Assignment.objects.filter(experiment=experiment, assigned_at__lt=events_end)
        .order_by()
        .annotate(day=_local_day("assigned_at"))
        .values("arm", "day")
        .annotate(n=Count("pk"))
    }
    clicks = genuine_clicks(experiment, start, clicks_end)
    per_list = (
        clicks.filter(recommendation_id=OuterRef("pk"))
        .annotate(one=Value(1, output_field=IntegerField()))
        .values("one")
        .annotate(n=reports.distinct_clicks())
        .values("n")
    )
    list_rows = (
        Recommendation.objects.filter(
            arm__experiment=experiment, created_at__gte=start, created_at__lt=clicks_end
        )
        .order_by()
        .annotate(
            exp_arm=F("arm"),
            day=_local_day("created_at"),
            shown=Cast("impressions", FloatField()),
            clicked=Cast(
                Coalesce(Subquery(per_list, output_field=IntegerField()), 0), FloatField()
            ),
        )
        .values("exp_arm", "day", "shown", "clicked")
    )
    lists = _list_sums(list_rows)
    click_key = Concat(
        Cast("recommendation_id", text), Value("|"), Cast("item_id", text), output_field=text
    )
    return {
        "exposed": exposed,
        "lists": lists,
        "clicks": _shopper_sums(
            _per_shopper_day(clicks, clicks=Count(click_key, distinct=True)), ["clicks"]
        ),
        "carts": _shopper_sums(
            _per_shopper_day(
                attributed_events(
                    experiment, Event.Kind.ADD_TO_CART, start, clicks_end, events_end
                ),
                carts=Count("pk"),
            ),
            ["carts"],
        ),
        "purchases": _shopper_sums(
            _per_shopper_day(
                attributed_events(experiment, Event.Kind.PURCHASE, start, clicks_end, events_end),
                purchases=Count("pk"),
                value=Coalesce(Sum("value"), 0.0, output_field=FloatField()),
            ),
            ["purchases", "value"],
        ),
    }


def _list_sums(list_rows):
    """``{(arm, day): (lists, impressions, clicks, sum c*c, sum c*n, sum n*n)}`` of the lists made
    that day: the sums the click-through rate's interval needs, with each list a cluster."""
    connection = connections[list_rows.db]
    quote = connection.ops.quote_name
    inner, params = list_rows.query.sql_with_params()
    shown, clicked = quote("shown"), quote("clicked")
    arm, day = quote("exp_arm"), quote("day")
    sql = (
        f"SELECT {arm}, {day}, COUNT(*), SUM({shown}), SUM({clicked}), "
        f"SUM({clicked} * {clicked}), SUM({clicked} * {shown}), SUM({shown} * {shown}) "
        f"FROM ({inner}) per_list GROUP BY {arm}, {day}"
    )
    rows = _fetch(connection, sql, params)
    return {(row[0], _as_date(row[1])): tuple(float(v or 0) for v in row[2:]) for row in rows}


# --------------------------------------------------------------------------- results


@dataclass
class ArmResult:
    """One arm's totals, its metrics today (with intervals) and day by day (cumulative)."""

    arm: object
    shoppers: int = 0
    impressions: int = 0
    clicks: int = 0
    carts: int = 0
    purchases: int = 0
    value: float = 0.0
    estimates: dict = field(default_factory=dict)  # metric -> sequential.Estimate
    intervals: dict = field(default_factory=dict)  # metric -> (low, high) or None
    daily: dict = field(default_factory=dict)  # metric -> [Estimate per day]
    daily_intervals: dict = field(default_factory=dict)  # metric -> [(low, high) or None]

    def per_impression(self, count):
        return count / self.impressions if self.impressions else None


@dataclass
class Results:
    experiment: object
    days: list
    arms: list  # ArmResult, the control (first arm) first
    metric: Metric  # the primary metric
    confidence: float
    comparison_alpha: float
    decisions: list  # (treatment ArmResult, sequential.Decision) on the primary metric
    comparisons: dict  # metric -> [(treatment ArmResult, Comparison or None)] today
    daily_lift: list  # (treatment ArmResult, [Comparison or None per day]) on the primary metric
    verdict: list  # sentences
    detectable: int | None = None  # units per arm to detect a 10 % lift (planning)

    @property
    def control(self):
        return self.arms[0]

    @property
    def winner(self):
        """The arm the verdict says wins everything it was compared on, or None."""
        winners = set()
        for treatment, decision in self.decisions:
            if decision.state != "winner":
                return None
            winners.add(treatment.arm.pk if decision.comparison.lift > 0 else self.control.arm.pk)
        if len(winners) == 1:
            return next(a for a in self.arms if a.arm.pk in winners)
        return None


def results(experiment, now=None):
    """The experiment's results: per arm, per day, and the verdict on its primary metric."""
    arms = list(experiment.arms.select_related("version").order_by("pk"))
    metric = METRICS.get(experiment.primary_metric, METRICS["purchases_per_shopper"])
    confidence = experiment.confidence
    alpha = 1 - confidence
    each_alpha = sequential.comparison_alpha(alpha, len(arms))
    if experiment.started_at is None or len(arms) < 2:
        nothing = sequential.Estimate(0.0, 0.0, 0, 0)
        empty = [
            ArmResult(
                arm, estimates=dict.fromkeys(METRICS, nothing), intervals=dict.fromkeys(METRICS)
            )
            for arm in arms
        ]
        return Results(
            experiment, [], empty, metric, confidence, each_alpha, [], {}, [],
            [_not_started(experiment, arms)],
        )  # fmt: skip
    start, _, end = experiment_period(experiment, now)
    days = reports.days_between(start, max(end, start + timedelta(seconds=1)))
    data = collect(experiment, now)
    arm_results = [_arm_result(arm, days, data, alpha) for arm in arms]
    control, treatments = arm_results[0], arm_results[1:]
    decisions = [
        (t, sequential.decide(control.estimates[metric.key], t.estimates[metric.key], each_alpha))
        for t in treatments
    ]
    comparisons = {
        key: [
            (t, sequential.compare(control.estimates[key], t.estimates[key], each_alpha))
            for t in treatments
        ]
        for key in METRICS
    }
    daily_lift = [
        (
            t,
            [
                sequential.compare(a, b, each_alpha)
                for a, b in zip(control.daily[metric.key], t.daily[metric.key], strict=True)
            ],
        )
        for t in treatments
    ]
    result = Results(
        experiment, days, arm_results, metric, confidence, each_alpha, decisions, comparisons,
        daily_lift, [],
    )  # fmt: skip
    result.detectable = _detectable(result)
    result.verdict = verdict(result)
    return result


def _arm_result(arm, days, data, alpha):
    result = ArmResult(arm)
    running = {
        "shoppers": 0.0,
        "lists": [0.0] * 6,
        **{family: {} for family in ("clicks", "carts", "purchases")},
    }
    for metric in METRICS:
        result.daily[metric], result.daily_intervals[metric] = [], []
    for day in days:
        running["shoppers"] += data["exposed"].get((arm.pk, day), 0)
        running["lists"] = [
            a + b
            for a, b in zip(
                running["lists"], data["lists"].get((arm.pk, day), [0] * 6), strict=True
            )
        ]
        for family in ("clicks", "carts", "purchases"):
            for column, sums in data[family].get((arm.pk, day), {}).items():
                before = running[family].get(column, (0.0, 0.0, 0.0))
                running[family][column] = tuple(a + b for a, b in zip(before, sums, strict=True))
        shoppers = int(running["shoppers"])
        _, shown, clicked, clicked_sq, clicked_shown, shown_sq = running["lists"]
        estimates = {
            "ctr": sequential.ratio_estimate(
                shown, clicked, shown, (clicked_sq, clicked_shown, shown_sq), clicked
            )
        }
        for metric, (family, column) in PER_SHOPPER.items():
            total, squares, nonzero = running[family].get(column, (0.0, 0.0, 0.0))
            estimates[metric] = sequential.mean_estimate(shoppers, total, squares, int(nonzero))
        for metric, estimate in estimates.items():
            result.daily[metric].append(estimate)
            result.daily_intervals[metric].append(sequential.interval(estimate, alpha))
    for metric in METRICS:
        result.estimates[metric] = (
            result.daily[metric][-1] if days else sequential.Estimate(0.0, 0.0, 0, 0)
        )
        result.intervals[metric] = result.daily_intervals[metric][-1] if days else None
    result.shoppers = int(running["shoppers"])
    result.impressions = int(running["lists"][1])
    result.clicks = int(running["lists"][2])
    result.carts = int(running["carts"].get("carts", (0, 0, 0))[0])
    result.purchases = int(running["purchases"].get("purchases", (0, 0, 0))[0])
    result.value = running["purchases"].get("value", (0.0, 0, 0))[0]
    return result


def _detectable(result, lift=0.10):
    """Units per arm at which a 10 % lift on the primary metric would be declared (planning)."""
    estimates = [a.estimates[result.metric.key] for a in result.arms]
    units = sum(e.units for e in estimates)
    mean = sum(e.value * e.units for e in estimates) / units if units else 0
    if mean <= 0:
        return None
    relative = sum(e.variance * e.units * e.units for e in estimates) / units / mean**2
    return sequential.units_to_detect(relative, lift, result.comparison_alpha)


# --------------------------------------------------------------------------- verdict


def format_lift(value):
    """A relative change as the verdict prints it: "+12 %", "−3.5 %" (one decimal under 10 %)."""
    percent = value * 100
    digits = 1 if abs(percent) < 9.95 else 0
    text = f"{percent:+.{digits}f} %"
    return text.replace("-", "\u2212")


def _lift_and_interval(comparison, *, inverse=False):
    lift, low, high = comparison.lift, comparison.low, comparison.high
    if inverse:  # the control over the treatment: 1/(1+x) - 1, ends swapped
        lift, low, high = 1 / (1 + lift) - 1, 1 / (1 + high) - 1, 1 / (1 + low) - 1
    return f"{format_lift(lift)} [{format_lift(low)}, {format_lift(high)}]"


def _not_started(experiment, arms):
    if len(arms) < 2:
        return "Not started: an experiment needs at least two arms."
    return "Not started: no verdict before it runs."


def verdict(result):
    """The verdict in words, one sentence per treatment compared with the control."""
    metric, control = result.metric, result.control
    confidence = f"{result.confidence * 100:.4g} %"
    running = result.experiment.status == Experiment.Status.RUNNING
    yet = " yet" if running else ""
    sentences = []
    for treatment, decision in result.decisions:
        a, b = control.arm.name, treatment.arm.name
        have = min(control.estimates[metric.key].units, treatment.estimates[metric.key].units)
        if decision.state == "waiting":
            if decision.needed is None:
                without = " or ".join(
                    arm.arm.name
                    for arm in (control, treatment)
                    if arm.estimates[metric.key].successes <= 0
                )
                sentences.append(
                    f"No winner{yet}: no {metric.success} in {without}{yet}; the test needs "
                    f"{sequential.MIN_SUCCESSES} per arm, and at least {sequential.MIN_UNITS} "
                    f"{metric.unit} per arm, before it declares anything."
                )
            else:
                sentences.append(
                    f"No winner{yet}: {have:,} of the {decision.needed:,} {metric.unit} per arm "
                    f"needed before the test declares anything ({a} against {b} on {metric.label})."
                )
        elif decision.state == "winner":
            comparison = decision.comparison
            if comparison.lift > 0:
                text = f"{b} beats {a} on {metric.label}, {_lift_and_interval(comparison)}"
            else:
                text = (
                    f"{a} beats {b} on {metric.label}, "
                    f"{_lift_and_interval(comparison, inverse=True)}"
                )
            sentences.append(f"{text}, {confidence}.")
        elif decision.comparison is None:
            sentences.append(f"No winner{yet}: {b} and {a} cannot be compared on {metric.label}.")
        else:
            comparison = decision.comparison
            sentences.append(
                f"No winner{yet}: {b} is within {format_lift(comparison.low)} and "
                f"{format_lift(comparison.high)} of {a} on {metric.label} ({confidence}), "
                f"{have:,} {metric.unit} per arm."
            )
    return sentences


def short_verdict(experiment):
    """One line for the experiment list: a running one's verdict, else what was decided.

    Only running experiments are measured here (at most one per placement): the list
    would otherwise run every past experiment's queries on each load. A stopped one shows
    the words stored when it stopped or promoted; its page still measures it in full.
    """
    if experiment.status == Experiment.Status.DRAFT:
        return "Not started"
    if experiment.status == Experiment.Status.STOPPED:
        return experiment.decision or "Stopped"
    return " ".join(results(experiment).verdict)


def format_value(metric, value):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if METRICS[metric].percent:
        return f"{value * 100:.2f} %"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:,.2f}"
