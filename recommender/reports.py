"""Aggregate queries behind the admin dashboards and ``recommender_status``.

Events can be millions of rows, so every helper is one or a few grouped queries
(``TruncDate`` + ``values`` + ``annotate``) that return small, chart-ready results;
nothing here iterates over events in Python. Days are calendar days in the current
time zone, and every range is half-open: ``start <= occurred_at < end``.
"""

from dataclasses import dataclass
from datetime import datetime, time, timedelta

from django.db.models import (
    Case,
    CharField,
    Count,
    IntegerField,
    OuterRef,
    Q,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Cast, Coalesce, Concat, TruncDate
from django.utils import timezone

from .conf import get_item_model
from .models import Event, ModelVersion, Recommendation


def day_range(days, *, today=None):
    """The last ``days`` calendar days up to and including today, as ``(start, end)`` times."""
    today = today or timezone.localdate()
    first = today - timedelta(days=days - 1)
    return start_of(first), start_of(today + timedelta(days=1))


def start_of(day):
    """Midnight at the start of ``day`` in the current time zone (a ``date`` or ``datetime``)."""
    if isinstance(day, datetime):
        return day if timezone.is_aware(day) else timezone.make_aware(day)
    return timezone.make_aware(datetime.combine(day, time.min))


def days_between(start, end):
    """Every calendar date from ``start``'s up to (not including) ``end``'s: the chart's x axis."""
    first = timezone.localtime(start).date()
    last = timezone.localtime(end - timedelta(microseconds=1)).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _local_day():
    return TruncDate("occurred_at", tzinfo=timezone.get_current_timezone())


# --------------------------------------------------------------------------- events


def events_per_kind_per_day(start, end):
    """``{kind: {date: count}}`` of events between ``start`` and ``end``."""
    rows = (
        Event.objects.filter(occurred_at__gte=start, occurred_at__lt=end)
        .order_by()
        .annotate(day=_local_day())
        .values("day", "kind")
        .annotate(n=Count("id"))
    )
    result = {}
    for row in rows:
        result.setdefault(row["kind"], {})[row["day"]] = row["n"]
    return result


@dataclass(frozen=True)
class ActiveShoppers:
    users: int
    sessions: int

    @property
    def total(self):
        return self.users + self.sessions


def active_shoppers(since, until=None):
    """Distinct logged-in users plus distinct anonymous sessions with an event in the range."""
    events = Event.objects.filter(occurred_at__gte=since).order_by()
    if until is not None:
        events = events.filter(occurred_at__lt=until)
    counts = events.aggregate(
        users=Count("user", distinct=True),
        sessions=Count("session_key", distinct=True, filter=Q(user__isnull=True)),
    )
    return ActiveShoppers(users=counts["users"], sessions=counts["sessions"])


def top_items(start, end, kind, limit=10):
    """``[(item, count)]`` of the items with the most ``kind`` events in the range.

    ``item`` is the store's item instance (for ``str(item)``), or its id when the item
    no longer exists.
    """
    rows = list(
        Event.objects.filter(occurred_at__gte=start, occurred_at__lt=end, kind=kind)
        .order_by()
        .values("item")
        .annotate(n=Count("id"))
        .order_by("-n", "item")[:limit]
    )
    items = get_item_model()._default_manager.in_bulk([row["item"] for row in rows])
    return [(items.get(row["item"], row["item"]), row["n"]) for row in rows]


def event_counts(since, until=None):
    """``{kind: count}`` of events in the range (the status command's last-24-hours line)."""
    events = Event.objects.filter(occurred_at__gte=since).order_by()
    if until is not None:
        events = events.filter(occurred_at__lt=until)
    return dict(events.values_list("kind").annotate(n=Count("id")).values_list("kind", "n"))


# --------------------------------------------------------------------------- carousels


def shopper_key():
    """One text per shopper of an Event (or Assignment) row: "u<user id>", else "s<session key>"."""
    text = CharField()
    return Case(
        When(user__isnull=False, then=Concat(Value("u"), Cast("user_id", text), output_field=text)),
        default=Concat(Value("s"), "session_key", output_field=text),
        output_field=text,
    )


def distinct_clicks():
    """Count each (shopper, list, item) click once: repeated clicks are not more interest.

    ``events.record_many`` already credits a list only once per shopper and item; this
    keeps the reports right for rows written otherwise (older rows, concurrent batches).
    """
    text = CharField()
    shopper = shopper_key()
    return Count(
        Concat(
            Cast("recommendation_id", text),
            Value("|"),
            Cast("item_id", text),
            Value("|"),
            shopper,
            output_field=text,
        ),
        distinct=True,
    )


def carousel_ctr_per_day(start, end):
    """``[(date, impressions, clicks, ctr)]`` of recommendation lists, one row per day.

    Impressions are counted on the day the list was made (the tracker adds them to its
    row), clicks on the day they happened; lists are seen and clicked within minutes, so
    the two days agree except around midnight. ``ctr`` is None on days without impressions.
    """
    tz = timezone.get_current_timezone()
    impressions = dict(
        Recommendation.objects.filter(created_at__gte=start, created_at__lt=end)
        .order_by()
        .annotate(day=TruncDate("created_at", tzinfo=tz))
        .values("day")
        .annotate(n=Sum("impressions"))
        .values_list("day", "n")
    )
    clicks = dict(
        Event.objects.filter(
            occurred_at__gte=start,
            occurred_at__lt=end,
            kind=Event.Kind.CLICK,
            recommendation_id__isnull=False,
        )
        .order_by()
        .annotate(day=_local_day())
        .values("day")
        .annotate(n=distinct_clicks())
        .values_list("day", "n")
    )
    rows = []
    for day in days_between(start, end):
        shown, clicked = impressions.get(day) or 0, clicks.get(day) or 0
        rows.append((day, shown, clicked, clicked / shown if shown else None))
    return rows


# --------------------------------------------------------------------------- model versions


def with_online_metrics(versions):
    """Annotate a ModelVersion queryset with ``impressions`` and ``clicks`` of its lists.

    Both are subqueries, so a changelist page costs one query however many versions it shows.
    """
    lists = Recommendation.objects.filter(version=OuterRef("pk")).order_by()
    impressions = lists.values("version").annotate(n=Sum("impressions")).values("n")
    version_lists = Recommendation.objects.filter(version=OuterRef(OuterRef("pk"))).values("id")
    clicks = (
        Event.objects.filter(kind=Event.Kind.CLICK, recommendation_id__in=version_lists)
        .order_by()
        .annotate(one=Value(1, output_field=IntegerField()))
        .values("one")
        .annotate(n=distinct_clicks())
        .values("n")
    )
    return versions.annotate(
        impressions=Coalesce(Subquery(impressions, output_field=IntegerField()), 0),
        clicks=Coalesce(Subquery(clicks, output_field=IntegerField()), 0),
    )


@dataclass(frozen=True)
class OnlineMetrics:
    placement: str
    lists: int
    impressions: int
    clicks: int

    @property
    def ctr(self):
        return self.clicks / self.impressions if self.impressions else None


def online_metrics_by_placement(version):
    """``[OnlineMetrics]`` per placement for one version, then an ``"all"`` total row."""
    lists = Recommendation.objects.filter(version=version).order_by()
    per_placement = lists.values("placement").annotate(
        n=Count("id"), shown=Coalesce(Sum("impressions"), 0)
    )
    clicks = dict(
        Event.objects.filter(kind=Event.Kind.CLICK, recommendation_id__in=lists.values("id"))
        .order_by()
        .annotate(
            list_placement=Subquery(
                Recommendation.objects.filter(pk=OuterRef("recommendation_id")).values("placement")[
                    :1
                ]
            )
        )
        .values("list_placement")
        .annotate(n=distinct_clicks())
        .values_list("list_placement", "n")
    )
    rows = [
        OnlineMetrics(
            row["placement"] or "api", row["n"], row["shown"], clicks.get(row["placement"], 0)
        )
        for row in per_placement.order_by("placement")
    ]
    if rows:
        rows.append(
            OnlineMetrics(
                "all",
                sum(r.lists for r in rows),
                sum(r.impressions for r in rows),
                sum(r.clicks for r in rows),
            )
        )
    return rows


def previous_active(version):
    """The version that served before ``version`` was activated (for side-by-side metrics).

    For the active version that is the most recently activated other version; for any
    other version, the currently active one.
    """
    others = ModelVersion.objects.exclude(pk=version.pk).filter(status=ModelVersion.Status.READY)
    if version.is_active:
        before = others.filter(activated_at__isnull=False)
        if version.activated_at:
            before = before.filter(activated_at__lte=version.activated_at)
        return before.order_by("-activated_at", "-pk").first()
    return others.filter(is_active=True).first()
