"""events_recorded drops the shopper's cached recommendations, and only theirs."""

from recommender import cachekeys, events, serving
from recommender.apps import connect_signals
from recommender.models import Event
from recommender.signals import events_recorded

from .serving_fixtures import install_version


def cached(session_key):
    return serving._cache().get(cachekeys.generation(session_key=session_key))


def test_the_signal_drops_that_shoppers_cache_only(catalog):
    serving.recommend(session_key="s1", limit=3)
    serving.recommend(session_key="s2", limit=3)
    assert cached("s1") is not None and cached("s2") is not None

    events_recorded.send(sender=Event, user=None, session_key="s1")

    assert cached("s1") is None
    assert cached("s2") is not None


def test_recording_an_event_sends_it_so_the_next_list_is_computed_afresh(catalog):
    install_version(catalog)
    events.record("view", catalog[1], session_key="s1")
    first = serving.recommend(session_key="s1", limit=3)
    assert first.source == "model"
    assert serving.recommend(session_key="s1", limit=3).recommendation_id == first.recommendation_id

    events.record("view", catalog[0], session_key="s1")

    assert cached("s1") is None
    assert serving.recommend(session_key="s1", limit=3).recommendation_id != first.recommendation_id


def test_a_duplicate_event_stores_nothing_and_keeps_the_cache(catalog):
    events.record(
        "view", catalog[0], session_key="s1", event_id="6b1d2f3e-0000-4000-8000-000000000001"
    )
    serving.recommend(session_key="s1", limit=3)
    events.record(
        "view", catalog[0], session_key="s1", event_id="6b1d2f3e-0000-4000-8000-000000000001"
    )
    assert cached("s1") is not None


def test_receivers_are_connected_once_however_often_ready_runs(catalog):
    connect_signals()
    connect_signals()
    serving.recommend(session_key="s1", limit=3)
    calls = []
    events_recorded.connect(lambda **kwargs: calls.append(kwargs), weak=False, dispatch_uid="t")
    try:
        events.record("view", catalog[0], session_key="s1")
    finally:
        events_recorded.disconnect(dispatch_uid="t")
    assert len(calls) == 1 and calls[0]["session_key"] == "s1"
    live = [r for r in events_recorded.receivers if "invalidate_shopper" in str(r[0])]
    assert len(live) == 1
