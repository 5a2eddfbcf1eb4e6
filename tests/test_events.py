"""The one write path: validation, idempotency, all-or-nothing batches."""

import uuid
from datetime import timedelta
from datetime import timezone as dt_timezone

import pytest
from django.contrib.auth import get_user_model
from django.test import override_settings
from django.utils import timezone

from recommender import events
from recommender.models import Event

pytestmark = pytest.mark.django_db


def test_record_stores_an_event_for_an_anonymous_session(catalog):
    result = events.record("view", catalog[0], session_key="abc", placement="home", page="/")
    assert result == events.RecordResult(stored=1, duplicates=0)
    event = Event.objects.get()
    assert (event.session_key, event.user, event.item, event.kind) == (
        "abc",
        None,
        catalog[0],
        "view",
    )
    assert (event.placement, event.page) == ("home", "/")


def test_record_accepts_an_item_primary_key_as_string(catalog):
    events.record("add_to_cart", str(catalog[1].pk), session_key="abc", value=2)
    assert Event.objects.get().value == 2.0


def test_record_for_a_user(catalog):
    user = get_user_model().objects.create_user("ann")
    events.record("purchase", catalog[0], user=user, value=3)
    assert Event.objects.get().user == user


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"kind": "teleport"}, "kind", "unknown kind"),
        ({"kind": None}, "kind", "unknown kind"),
        ({"item": 10**9}, "item", "unknown or unavailable item"),
        ({"item": "not-a-number"}, "item", "not a valid item id"),
        ({"item": None}, "item", "required"),
        ({"value": "lots"}, "value", "must be a number"),
        ({"value": float("nan")}, "value", "finite"),
        ({"value": 1e12}, "value", "finite number between"),
        ({"value": True}, "value", "must be a number"),
        ({"occurred_at": "yesterday"}, "occurred_at", "ISO 8601"),
        ({"occurred_at": "2026-01-01T00:00:00"}, "occurred_at", "time zone"),
        ({"occurred_at": timezone.now() + timedelta(days=1)}, "occurred_at", "future"),
        ({"occurred_at": timezone.now() - timedelta(days=4000)}, "occurred_at", "days old"),
        ({"event_id": "123"}, "event_id", "UUID"),
        ({"placement": "x" * 65}, "placement", "at most 64"),
        ({"page": 5}, "page", "must be a string"),
        ({"colour": "red"}, "event", "unknown field"),
    ],
)
def test_bad_events_are_rejected_with_a_reason(catalog, fields, field, reason):
    event = {"kind": "view", "item": catalog[0].pk, **fields}
    with pytest.raises(events.EventValidationError) as raised:
        events.record_many([event], session_key="abc")
    assert reason in raised.value.errors[0][field]
    assert Event.objects.count() == 0


def test_inactive_items_are_not_recordable_in_the_demo(catalog):
    inactive = catalog[7]
    with pytest.raises(events.EventValidationError, match="unknown or unavailable"):
        events.record("view", inactive, session_key="abc")


def test_a_batch_with_one_bad_event_stores_nothing(catalog):
    batch = [{"kind": "view", "item": p.pk} for p in catalog[:5]] + [
        {"kind": "nope", "item": catalog[0].pk}
    ]
    with pytest.raises(events.EventValidationError) as raised:
        events.record_many(batch, session_key="abc")
    assert list(raised.value.errors) == [5]
    assert Event.objects.count() == 0


def test_an_event_needs_a_shopper(catalog):
    with pytest.raises(events.EventValidationError, match="user or an anonymous session"):
        events.record("view", catalog[0])


@override_settings(RECOMMENDER={"MAX_BATCH_SIZE": 3})
def test_batch_size_is_bounded(catalog):
    with pytest.raises(events.EventValidationError, match="At most 3"):
        events.record_many([{"kind": "view", "item": catalog[0].pk}] * 4, session_key="abc")
    with pytest.raises(events.EventValidationError, match="empty"):
        events.record_many([], session_key="abc")


def test_a_replayed_event_id_is_stored_once(catalog):
    event_id = str(uuid.uuid4())
    batch = [
        {"kind": "view", "item": catalog[0].pk, "event_id": event_id},
        {"kind": "view", "item": catalog[1].pk},
    ]
    first = events.record_many(batch, session_key="abc")
    second = events.record_many(batch[:1], session_key="abc")
    assert (first.stored, first.duplicates) == (2, 0)
    assert (second.stored, second.duplicates) == (0, 1)
    assert Event.objects.filter(event_id=event_id).count() == 1


def test_a_repeated_event_id_within_one_batch_is_stored_once(catalog):
    event = {"kind": "view", "item": catalog[0].pk, "event_id": str(uuid.uuid4())}
    result = events.record_many([event, event], session_key="abc")
    assert (result.stored, result.duplicates) == (1, 1)


@override_settings(RECOMMENDER={"EVENT_KINDS": ["view", "wishlist"]})
def test_stores_extend_the_event_kinds(catalog):
    events.record("wishlist", catalog[0], session_key="abc")
    with pytest.raises(events.EventValidationError):
        events.record("purchase", catalog[0], session_key="abc")


def test_client_times_are_kept_and_epoch_milliseconds_accepted(catalog):
    when = timezone.now() - timedelta(hours=3)
    events.record("view", catalog[0], session_key="abc", occurred_at=when.isoformat())
    events.record("view", catalog[1], session_key="abc", occurred_at=int(when.timestamp() * 1000))
    stored = list(Event.objects.values_list("occurred_at", flat=True))
    assert all(abs((t - when).total_seconds()) < 0.01 for t in stored)


def test_for_shopper_and_servings_sql_pick_the_same_events(catalog, django_user_model):
    """One rule (models.shopper_q): a user's events, else the key's events with no user."""
    from recommender import serving

    ann = django_user_model.objects.create_user("ann")
    events.record("view", catalog[0], user=ann, session_key="k1")
    events.record("view", catalog[1], session_key="k1")
    events.record("purchase", catalog[2], session_key="k1")
    events.record("view", catalog[3], session_key="k2")
    for shopper in ({"user": ann}, {"session_key": "k1"}, {"session_key": "k2"}):
        orm = Event.objects.for_shopper(**shopper).order_by("occurred_at", "id")
        history, bought = serving.shopper_activity(**shopper)
        assert history == [(e.item_id, e.kind) for e in orm]
        assert bought == {e.item_id for e in orm if e.kind == "purchase"}
    assert serving.shopper_activity(session_key="k1")[0] == [
        (catalog[1].pk, "view"),
        (catalog[2].pk, "purchase"),
    ]


def test_recording_signals_the_shopper_changed(catalog):
    from recommender.signals import events_recorded

    seen = []

    def receiver(sender, **kwargs):
        seen.append(kwargs["session_key"])

    events_recorded.connect(receiver)
    try:
        events.record("view", catalog[0], session_key="abc")
    finally:
        events_recorded.disconnect(receiver)
    assert seen == ["abc"]


# --------------------------------------------------------------------------- time zones, numbers


@pytest.mark.parametrize("offset_minutes", [16 * 60, -16 * 60, 23 * 60 + 59, -(23 * 60 + 59)])
@pytest.mark.parametrize("storage", ["postgresql", "orm"])
def test_any_offset_python_accepts_is_stored_as_utc(catalog, monkeypatch, offset_minutes, storage):
    """PostgreSQL refuses offsets past ±15:59 (it was a 500 that lost the batch)."""
    if storage == "orm":
        monkeypatch.setattr(events, "_store_postgresql", events._store_orm)
    when = (timezone.now() - timedelta(hours=5)).replace(microsecond=0)
    zone = dt_timezone(timedelta(minutes=offset_minutes))
    batch = [
        {"kind": "view", "item": catalog[0].pk, "occurred_at": when.astimezone(zone).isoformat()},
        {"kind": "view", "item": catalog[1].pk, "occurred_at": when.astimezone(zone)},
    ]
    assert events.record_many(batch, session_key="abc").stored == 2
    assert list(Event.objects.values_list("occurred_at", flat=True)) == [when, when]


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_time_that_leaves_the_calendar_in_utc_is_out_of_range(catalog, text):
    with pytest.raises(events.EventValidationError) as raised:
        events.record("view", catalog[0], session_key="abc", occurred_at=text)
    assert raised.value.errors[0]["occurred_at"] == "is out of range."


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        ("occurred_at", "out of range"),
        ("value", "must be a number"),
        ("item", "unknown or unavailable item"),
        ("kind", "unknown kind"),
        ("event_id", "UUID"),
        ("recommendation_id", "UUID"),
        ("placement", "must be a string"),
        ("page", "must be a string"),
    ],
)
@pytest.mark.parametrize(
    "huge", [10**309, -(10**309), 10**5000], ids=["1e309", "-1e309", "5001-digits"]
)
def test_integers_too_large_for_a_float_are_a_reason_not_a_crash(catalog, field, reason, huge):
    event = {"kind": "view", "item": catalog[0].pk, field: huge}
    with pytest.raises(events.EventValidationError) as raised:
        events.record_many([event], session_key="abc")
    assert reason in raised.value.errors[0][field]
    assert not Event.objects.exists()


# --------------------------------------------------------------------------- partial recording


def test_partial_recording_stores_the_valid_events_and_lists_the_rest(catalog):
    inactive = catalog[7]
    batch = [
        {"kind": "purchase", "item": catalog[0].pk, "value": 2},
        {"kind": "purchase", "item": inactive.pk, "value": 1},
        {"kind": "purchase", "item": catalog[1].pk, "value": "lots"},
        {"kind": "purchase", "item": catalog[2].pk, "value": 1},
    ]
    result = events.record_many(batch, session_key="abc", partial=True)
    assert (result.stored, result.duplicates) == (2, 0)
    assert list(result.rejected) == [1, 2]
    assert "unknown or unavailable" in result.rejected[1]["item"]
    assert "must be a number" in result.rejected[2]["value"]
    stored = set(Event.objects.values_list("item_id", flat=True))
    assert stored == {catalog[0].pk, catalog[2].pk}
    # The same batch again: the stored ones are duplicates, the bad ones still listed.
    again = events.record_many(batch, session_key="abc", partial=True)
    assert (again.stored, list(again.rejected)) == (2, [1, 2])  # no event ids: new events


def test_partial_recording_survives_an_item_withdrawn_after_the_check(catalog, monkeypatch):
    """The item check and the insert are apart: an item withdrawn between them rejects only its event."""
    withdrawn = catalog[1]
    real_check = events._check_items
    calls = []

    def check_then_withdraw(rows):
        result = real_check(rows)
        if not calls:
            type(withdrawn).objects.filter(pk=withdrawn.pk).update(is_active=False)
        calls.append(1)
        return result

    monkeypatch.setattr(events, "_check_items", check_then_withdraw)
    batch = [{"kind": "purchase", "item": p.pk} for p in catalog[:3]]
    result = events.record_many(batch, user=get_user_model().objects.create_user("x"), partial=True)
    assert (result.stored, list(result.rejected)) == (2, [1])
    assert withdrawn.pk not in set(Event.objects.values_list("item_id", flat=True))


def test_without_partial_one_bad_event_still_rejects_the_batch(catalog):
    batch = [
        {"kind": "purchase", "item": catalog[0].pk},
        {"kind": "purchase", "item": catalog[7].pk},
    ]
    with pytest.raises(events.EventValidationError):
        events.record_many(batch, session_key="abc")
    assert not Event.objects.exists()


# --------------------------------------------------------------------------- event ids per shopper


def test_event_ids_are_unique_per_shopper_not_across_shoppers(catalog):
    """An attacker who sends another shopper's (guessed) event id first suppresses nothing."""
    event_id = str(uuid.uuid4())
    victim = get_user_model().objects.create_user("victim")
    attacker = events.record("view", catalog[0], session_key="attacker", event_id=event_id)
    purchase = events.record("purchase", catalog[1], user=victim, value=1, event_id=event_id)
    also_anonymous = events.record("view", catalog[2], session_key="someone", event_id=event_id)
    assert attacker.stored == purchase.stored == also_anonymous.stored == 1
    # Nobody learns that the id exists elsewhere: no shopper is told "duplicate".
    assert purchase.duplicates == also_anonymous.duplicates == 0
    assert Event.objects.get(user=victim).kind == "purchase"
    # Each shopper's own retry is still stored once.
    assert events.record("purchase", catalog[1], user=victim, event_id=event_id).duplicates == 1
    assert events.record("view", catalog[0], session_key="attacker", event_id=event_id).stored == 0
    assert Event.objects.count() == 3


@pytest.mark.parametrize("storage", ["postgresql", "orm"])
def test_per_shopper_ids_hold_on_both_storage_paths(catalog, monkeypatch, storage):
    if storage == "orm":
        monkeypatch.setattr(events, "_store_postgresql", events._store_orm)
    event_id = str(uuid.uuid4())
    batch = [{"kind": "view", "item": catalog[0].pk, "event_id": event_id}]
    assert events.record_many(batch, session_key="one").stored == 1
    assert events.record_many(batch, session_key="two").stored == 1
    assert events.record_many(batch, session_key="two").duplicates == 1


def test_login_moves_anonymous_events_even_when_the_user_has_their_ids(catalog):
    """The same event sent before and after login (a tracker retry) must not break the login."""
    from django.test import RequestFactory

    from recommender.shoppers import SESSION_FIELD, attach_session_events

    user = get_user_model().objects.create_user("ann")
    shared_id, own_id = str(uuid.uuid4()), str(uuid.uuid4())
    events.record("view", catalog[0], user=user, event_id=shared_id)
    events.record("view", catalog[0], session_key="anon", event_id=shared_id)
    events.record("view", catalog[1], session_key="anon", event_id=own_id)
    request = RequestFactory().get("/")
    request.session = {SESSION_FIELD: "anon"}
    attach_session_events(sender=None, request=request, user=user)
    assert sorted(map(str, Event.objects.filter(user=user).values_list("event_id", flat=True))) == (
        sorted([shared_id, own_id])
    )
    assert not Event.objects.filter(user__isnull=True).exists()


# --------------------------------------------------------------------------- click attribution


def shown_list(items, owner=""):
    from recommender.models import Recommendation

    return Recommendation.objects.create(
        source="model" if owner else "popular", items=[p.pk for p in items], owner=owner
    )


def clicked(item, rec, **shopper):
    events.record("click", item, recommendation_id=str(rec.pk), **shopper)
    return Event.objects.filter(kind="click").latest("id").recommendation_id


def test_a_click_is_credited_to_a_personal_list_only_by_its_shopper(catalog):
    from recommender.pseudonyms import list_owner

    ann = get_user_model().objects.create_user("ann")
    annes_list = shown_list(catalog[:3], owner=list_owner(user=ann))
    anonymous_list = shown_list(catalog[:3], owner=list_owner(session_key="anon"))
    assert clicked(catalog[0], annes_list, session_key="mallory") is None
    assert clicked(catalog[0], annes_list, user=ann) == annes_list.pk
    # A list made while anonymous is still the shopper's after login (same session key).
    assert clicked(catalog[0], anonymous_list, user=ann, session_key="anon") == anonymous_list.pk
    assert clicked(catalog[1], anonymous_list, session_key="other") is None


def test_a_click_is_credited_once_per_shopper_list_and_item(catalog):
    popular = shown_list(catalog[:3])
    batch = [{"kind": "click", "item": catalog[0].pk, "recommendation_id": str(popular.pk)}] * 50
    events.record_many(batch, session_key="s1")
    events.record_many(batch, session_key="s1")
    events.record("click", catalog[1], session_key="s1", recommendation_id=str(popular.pk))
    events.record("click", catalog[0], session_key="s2", recommendation_id=str(popular.pk))
    credited = Event.objects.filter(recommendation_id=popular.pk)
    assert sorted(credited.values_list("session_key", "item_id")) == [
        ("s1", catalog[0].pk),
        ("s1", catalog[1].pk),
        ("s2", catalog[0].pk),
    ]
    assert Event.objects.filter(kind="click").count() == 102  # every click is still stored


def test_a_click_on_an_item_not_in_the_list_or_an_unknown_list_is_not_credited(catalog):
    popular = shown_list(catalog[:3])
    assert clicked(catalog[4], popular, session_key="s1") is None
    events.record("click", catalog[0], session_key="s1", recommendation_id=str(uuid.uuid4()))
    assert not Event.objects.filter(recommendation_id__isnull=False).exists()


def test_the_postgresql_insert_names_the_table_and_columns_as_the_model_does(db):
    from django.db import connection

    target = events._insert_target(connection.alias)
    quote = connection.ops.quote_name
    assert target.startswith(quote(Event._meta.db_table) + " (")
    assert quote(Event._meta.get_field("user").column) in target  # user_id, quoted
    assert target.count(",") == len(events.INSERT_FIELDS) - 1
