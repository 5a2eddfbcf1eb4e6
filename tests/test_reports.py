"""Dashboard queries: grouped per day and kind, distinct shoppers, top items, CTR."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from recommender import reports
from recommender.models import Event, ModelVersion, Recommendation

pytestmark = pytest.mark.django_db


def add(item, kind, *, days_ago=0, user=None, session="", recommendation=None, at=None):
    return Event.objects.create(
        item=item,
        kind=kind,
        user=user,
        session_key=session if not user else "",
        occurred_at=at or timezone.now() - timedelta(days=days_ago),
        recommendation_id=recommendation.pk if recommendation else None,
    )


def test_day_range_covers_whole_local_days():
    today = timezone.localdate()
    start, end = reports.day_range(30)
    days = reports.days_between(start, end)
    assert len(days) == 30 and days[-1] == today and days[0] == today - timedelta(days=29)
    assert timezone.localtime(start).hour == 0 and end - start == timedelta(days=30)


def test_events_per_kind_per_day_counts_each_kind_on_its_day(catalog):
    for _ in range(3):
        add(catalog[0], "view", days_ago=1, session="s1")
    add(catalog[1], "purchase", days_ago=1, session="s1")
    add(catalog[1], "view", days_ago=0, session="s2")
    add(catalog[1], "view", days_ago=40, session="s2")  # outside the window
    start, end = reports.day_range(30)
    result = reports.events_per_kind_per_day(start, end)
    yesterday = timezone.localdate() - timedelta(days=1)
    assert result == {
        "view": {yesterday: 3, timezone.localdate(): 1},
        "purchase": {yesterday: 1},
    }


def test_active_shoppers_counts_distinct_users_and_anonymous_sessions(catalog):
    ann, bob = (get_user_model().objects.create_user(name) for name in ("ann", "bob"))
    add(catalog[0], "view", user=ann)
    add(catalog[1], "view", user=ann)
    add(catalog[0], "view", user=bob, days_ago=5)
    add(catalog[0], "view", session="anon-1")
    add(catalog[2], "view", session="anon-1")
    add(catalog[0], "view", session="anon-2", days_ago=20)
    now = timezone.now()
    day = reports.active_shoppers(now - timedelta(days=1))
    week = reports.active_shoppers(now - timedelta(days=7))
    month = reports.active_shoppers(now - timedelta(days=30))
    assert (day.users, day.sessions, day.total) == (1, 1, 2)
    assert (week.users, week.sessions) == (2, 1)
    assert (month.users, month.sessions, month.total) == (2, 2, 4)


def test_top_items_are_ranked_by_count_with_their_names(catalog):
    for item, n in ((catalog[2], 4), (catalog[0], 2), (catalog[5], 3)):
        for _ in range(n):
            add(item, "view", session="s")
    add(catalog[1], "purchase", session="s")
    add(catalog[0], "view", session="s", days_ago=10)  # too old
    now = timezone.now()
    top = reports.top_items(now - timedelta(days=7), now + timedelta(seconds=1), "view", limit=2)
    assert [(str(item), n) for item, n in top] == [("Product 2", 4), ("Product 5", 3)]
    bought = reports.top_items(now - timedelta(days=7), now + timedelta(seconds=1), "purchase")
    assert [(str(item), n) for item, n in bought] == [("Product 1", 1)]


def test_carousel_ctr_per_day_divides_clicks_by_impressions(catalog):
    now = timezone.now()
    yesterday = now - timedelta(days=1)
    shown = Recommendation.objects.create(
        placement="home", source="model", items=[1], impressions=8, created_at=yesterday
    )
    Recommendation.objects.create(
        placement="cart", source="model", items=[1], impressions=2, created_at=yesterday
    )
    add(catalog[0], "click", session="s", recommendation=shown, at=yesterday)
    add(catalog[0], "click", session="t", recommendation=shown, at=yesterday)
    add(catalog[0], "click", session="t", recommendation=shown, at=yesterday)  # counted once
    add(catalog[0], "click", session="s", at=yesterday)  # not from a carousel
    start, end = reports.day_range(3)
    rows = {
        day: (shown_n, clicks, ctr)
        for day, shown_n, clicks, ctr in reports.carousel_ctr_per_day(start, end)
    }
    assert len(rows) == 3
    assert rows[timezone.localtime(yesterday).date()] == (10, 2, pytest.approx(0.2))
    assert rows[timezone.localdate()] == (0, 0, None)


def test_online_metrics_per_version_and_placement(catalog):
    """Each (shopper, list, item) click counts once, however often it was sent."""
    version = ModelVersion.objects.create(status="ready")
    other = ModelVersion.objects.create(status="ready")
    home = Recommendation.objects.create(
        version=version, placement="home", source="model", impressions=10
    )
    Recommendation.objects.create(version=version, placement="home", source="model", impressions=10)
    cart = Recommendation.objects.create(
        version=version, placement="cart", source="model", impressions=5
    )
    theirs = Recommendation.objects.create(
        version=other, placement="home", source="model", impressions=100
    )
    for session, rec in (("s", home), ("t", home), ("s", cart), ("s", theirs), ("s", cart)):
        add(catalog[0], "click", session=session, recommendation=rec)  # s's 2nd cart click: once
    add(catalog[0], "view", session="s", recommendation=home)  # views are not clicks

    annotated = {v.pk: v for v in reports.with_online_metrics(ModelVersion.objects.all())}
    assert (annotated[version.pk].impressions, annotated[version.pk].clicks) == (25, 3)
    assert (annotated[other.pk].impressions, annotated[other.pk].clicks) == (100, 1)
    assert Recommendation.objects.filter(version=version).clicks().count() == 4  # rows, repeats too

    rows = {row.placement: row for row in reports.online_metrics_by_placement(version)}
    assert (rows["home"].lists, rows["home"].impressions, rows["home"].clicks) == (2, 20, 2)
    assert rows["cart"].ctr == pytest.approx(0.2)
    assert (rows["all"].impressions, rows["all"].clicks) == (25, 3)
    unused = ModelVersion.objects.create(status="ready")
    assert reports.online_metrics_by_placement(unused) == []
    assert (
        reports.with_online_metrics(ModelVersion.objects.filter(pk=unused.pk)).get().impressions
        == 0
    )


def test_previous_active_is_what_served_before(db):
    now = timezone.now()
    old = ModelVersion.objects.create(status="ready", activated_at=now - timedelta(days=2))
    current = ModelVersion.objects.create(status="ready")
    current.activate()
    candidate = ModelVersion.objects.create(status="ready")
    assert reports.previous_active(current) == old
    assert reports.previous_active(candidate) == current


def test_event_counts_per_kind(catalog):
    add(catalog[0], "view", session="s")
    add(catalog[0], "view", session="s")
    add(catalog[0], "purchase", session="s", days_ago=2)
    assert reports.event_counts(timezone.now() - timedelta(days=1)) == {"view": 2}
