"""The one write path: validation, idempotency, all-or-nothing batches."""

import uuid
from datetime import timedelta

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


def test_latest_for_shopper_reads_newest_first(catalog):
    now = timezone.now()
    for minutes, product in enumerate(catalog[:4]):
        events.record(
            "view", product, session_key="s1", occurred_at=now - timedelta(minutes=10 - minutes)
        )
    events.record("view", catalog[5], session_key="other")
    latest = Event.objects.latest_for_shopper(3, session_key="s1")
    assert [e.item_id for e in latest] == [catalog[3].pk, catalog[2].pk, catalog[1].pk]


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
