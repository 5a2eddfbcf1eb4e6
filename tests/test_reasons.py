"""Reasons on personal recommendations: computed with the list, cached with it, only ever
an item of the shopper's own latest events that shoppers may still look at."""

import json
from collections import Counter

import pytest
from django.test import override_settings

from recommender import events, itemkeys, serving
from recommender.conf import recommender_settings
from recommender.ml import baselines, data, hybrid, nets
from recommender.ml.inference import Predictor
from recommender.models import Event

from .serving_fixtures import install_version, save_version, views

pytestmark = pytest.mark.django_db
API = "/api/recommender"


def latest_pks(session):
    """The item keys of the shopper's latest events: all a reason may name."""
    model = serving.active_model.get()
    history, _ = serving.shopper_activity(session_key=session, length=model.history_length)
    return {pk for pk, _ in history}


def named(recs):
    return [reason.item.pk if reason else None for reason in recs.reasons]


def test_reasons_run_parallel_to_the_items_and_name_the_shoppers_own_items(shelf):
    install_version(shelf)
    views("s1", shelf[:5])
    recs = serving.recommend(session_key="s1", limit=12)
    assert recs.source == "model" and len(recs.reasons) == len(recs.items) == 12
    assert all(isinstance(r, serving.Reason) for r in recs.reasons if r is not None)
    assert sum(r is not None for r in recs.reasons) >= 6
    assert set(named(recs)) - {None} <= {p.pk for p in shelf[:5]} == latest_pks("s1")
    assert {r.kind for r in recs.reasons if r} == {"view"}
    # Lists of a page's item and popular lists carry none.
    assert serving.similar(shelf[0], limit=5).reasons == [None] * 5
    assert serving.popular(limit=5).reasons == [None] * 5
    assert serving.recommend(session_key="nobody", limit=5).reasons == [None] * 5


def test_a_cache_hit_reuses_the_reasons_without_the_model(shelf, monkeypatch):
    install_version(shelf)
    views("s1", shelf[:5])
    first = serving.recommend(session_key="s1", limit=10)
    assert any(named(first))

    def fail(*args, **kwargs):
        raise AssertionError("reasons computed again on a cache hit")

    monkeypatch.setattr(Predictor, "reasons", fail)
    again = serving.recommend(session_key="s1", limit=10)
    assert again.recommendation_id == first.recommendation_id
    assert named(again) == named(first)


def test_reasons_are_computed_only_when_read_then_cached(shelf, monkeypatch):
    """A list shown without reasons never pays for them; read on a later cache hit, they are
    computed once from the shopper's own latest events and kept with the candidates."""
    install_version(shelf)
    views("s1", shelf[:5])
    calls = []
    computed = Predictor.reasons

    def counted(self, *args, **kwargs):
        calls.append(args)
        return computed(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, "reasons", counted)
    first = serving.recommend(session_key="s1", limit=10)
    assert first.source == "model" and calls == []  # not read: not computed
    hit = serving.recommend(session_key="s1", limit=10)
    assert hit.recommendation_id == first.recommendation_id
    assert any(named(hit)) and len(calls) == 1
    assert set(named(hit)) - {None} <= latest_pks("s1")
    again = serving.recommend(session_key="s1", limit=6)
    assert named(again) == named(hit)[:6] and len(calls) == 1


def test_popular_fill_ins_have_no_reason(shelf):
    install_version(shelf)
    views("s1", shelf[:5])
    # Only two of the model's candidates are allowed: the rest of the list is popular items.
    keep = {shelf[7].pk, shelf[8].pk}
    rule = lambda queryset: queryset.filter(pk__in=keep | {p.pk for p in shelf[:5]})  # noqa: E731
    with override_settings(RECOMMENDER={**_settings(), "ITEM_FILTER": rule}):
        recs = serving.recommend(session_key="s1", limit=6, exclude=[])
    model_part = [p.pk for p in recs.items[:2]]
    assert set(model_part) == keep and all(named(recs)[:2])
    assert named(recs)[2:] == [None] * (len(recs) - 2)


def _settings():
    from django.conf import settings

    return dict(settings.RECOMMENDER)


@pytest.mark.parametrize("how", ["hidden", "deleted"])
def test_an_item_shoppers_may_no_longer_see_is_never_named(shelf, how):
    install_version(shelf)
    views("s1", shelf[:5])
    first = serving.recommend(session_key="s1", limit=20)
    gone_pk = Counter(pk for pk in named(first) if pk).most_common(1)[0][0]
    gone = next(p for p in shelf if p.pk == gone_pk)
    if how == "hidden":
        gone.is_active = False
        gone.save()
    else:
        gone.delete()
    cached = serving.recommend(session_key="s1", limit=20)
    assert cached.recommendation_id == first.recommendation_id  # the cached list, re-checked
    assert gone_pk not in named(cached)
    assert cached.items == first.items
    assert named(cached) == [None if pk == gone_pk else pk for pk in named(first)]
    serving.invalidate_shopper(session_key="s1")
    fresh = serving.recommend(session_key="s1", limit=20)
    assert fresh.recommendation_id != first.recommendation_id
    # Computed again, the shopper's other items are named instead.
    assert gone_pk not in named(fresh) and any(named(fresh))
    assert set(named(fresh)) - {None} <= latest_pks("s1") - {gone_pk}


def test_with_reasons_off_none_are_computed(shelf, monkeypatch):
    install_version(shelf)
    views("s1", shelf[:5])
    monkeypatch.setattr(Predictor, "reasons", lambda *a, **k: pytest.fail("computed"))
    with override_settings(RECOMMENDER={**_settings(), "REASONS": False}):
        assert recommender_settings.REASONS is False
        recs = serving.recommend(session_key="s1", limit=5)
    assert recs.source == "model" and recs.reasons == [None] * 5


class FixedReasons:
    """A loaded model whose reasons are given: the kind rule is serving's own."""

    def __init__(self, found):
        self.found = found

    def reasons(self, history, pks, *, eligible):
        return {pk: self.found.get(pk) if self.found.get(pk) in eligible else None for pk in pks}


def test_the_kind_is_the_shoppers_weightiest_event_on_the_item(shelf):
    a, b, c, d = (p.pk for p in shelf[:4])
    history = [(a, "view"), (b, "add_to_cart"), (a, "purchase"), (a, "view"), (b, "view")]
    history += [(c, "remove_from_cart"), (shelf[30].pk, "view")]  # inactive: never named
    model = FixedReasons({10: a, 11: b, 12: c, 13: shelf[30].pk, 14: None})
    assert serving._reasons(model, history, [10, 11, 12, 13, 14, d]) == [
        (a, "purchase"),
        (b, "add_to_cart"),
        None,  # a kind training drops is no reason
        None,
        None,
        None,
    ]


# --------------------------------------------------------------------------- privacy


def install_fitted_version(name, model_name):
    """A version fitted on every event now stored: item-kNN alone, or blended with a net."""
    rows = [
        (f"{user}:{session}", itemkeys.to_json(pk), kind, None, when.timestamp())
        for user, session, pk, kind, when in Event.objects.values_list(
            "user_id", "session_key", "item_id", "kind", "occurred_at"
        )
    ]
    off = dict(burst_window_seconds=None, max_events_per_minute=None)
    seqs = data.build_sequences(
        rows, data.CleaningConfig(**off, min_item_count=None, min_shopper_count=None)
    )
    knn = baselines.ItemKNN(seqs.n_items, k=10).fit_sequences(seqs.items)
    model = knn
    if model_name == "hybrid":
        import torch

        torch.manual_seed(0)
        net = nets.build_model("cnn_dnn", seqs.n_items, seqs.n_kinds, dim=16, tower_hidden=32)
        model = hybrid.HybridRanker.of(net.eval(), knn, 4.0)
    save_version(model, seqs.item_map.to_list(), seqs.kind_names, name).activate()
    serving.active_model.reset()
    return knn, seqs


@pytest.mark.parametrize("model_name", ["itemknn", "hybrid"])
def test_a_reason_is_never_another_shoppers_item_even_where_their_events_made_the_link(
    shelf, model_name
):
    """Others' co-views make their item X the strongest neighbour of Y; the shopper, who
    never saw X, is recommended Y for their own item, and X is never named."""
    mine, also, x, y = shelf[0], shelf[1], shelf[5], shelf[6]
    for s in range(3):  # a weaker link from the shopper's item to Y
        views(f"some{s}", [mine, y])
    views("alice", [mine, also])
    install_fitted_version("before", model_name)
    before = serving.recommend(session_key="alice", limit=10)
    assert set(named(before)) - {None} <= latest_pks("alice")

    for s in range(20):  # other shoppers' events change the kNN lists
        views(f"other{s}", [x, y])
    knn, seqs = install_fitted_version("after", model_name)
    y_index, x_index = seqs.item_map.index(y.pk), seqs.item_map.index(x.pk)
    assert int(knn.neighbours[y_index][0]) == x_index  # Y's strongest link: the others' item
    serving.invalidate_shopper(session_key="alice")
    after = serving.recommend(session_key="alice", limit=10)
    reason_of = dict(zip((p.pk for p in after.items), named(after), strict=True))
    assert reason_of[y.pk] == mine.pk
    assert set(reason_of.values()) - {None} <= latest_pks("alice") == {mine.pk, also.pk}
    assert x.pk not in reason_of.values()


# --------------------------------------------------------------------------- API


def test_the_api_gives_each_item_its_reason(client, shelf):
    install_version(shelf)
    client.get("/")  # a session for the shopper
    session = client.session
    session.save()
    from recommender.shoppers import SESSION_FIELD

    session[SESSION_FIELD] = "api-shopper"
    session.save()
    events.record_many(
        [{"kind": "view", "item": p.pk} for p in shelf[:4]]
        + [{"kind": "add_to_cart", "item": shelf[2].pk}],
        session_key="api-shopper",
    )
    plain = client.get(f"{API}/recommendations/?limit=8").json()
    assert plain["source"] == "model" and all(item["reason"] is None for item in plain["items"])
    assert client.get(f"{API}/recommendations/?reasons=maybe").status_code == 400
    body = client.get(f"{API}/recommendations/?limit=8&reasons=true").json()
    assert body["source"] == "model" and len(body["items"]) == 8
    reasons = [item["reason"] for item in body["items"]]
    assert all(reasons)
    own = {p.pk: p for p in shelf[:4]}
    for reason in reasons:
        assert {"id", "name", "url", "kind"} <= set(reason)
        assert reason["id"] in own and reason["name"] == own[reason["id"]].name
        assert reason["kind"] == ("add_to_cart" if reason["id"] == shelf[2].pk else "view")
    for path in ("popular/", f"items/{shelf[0].pk}/similar/"):
        listed = client.get(f"{API}/{path}").json()["items"]
        assert client.get(f"{API}/{path}?reasons=true").status_code == 400  # personal lists only
        assert listed and all(item["reason"] is None for item in listed)


def test_the_schema_describes_the_reason(client):
    schema = json.loads(client.get(f"{API}/schema/?format=json").content)
    components = schema["components"]["schemas"]
    reason = components["RecommendedItem"]["properties"]["reason"]
    assert reason.get("nullable") or {"type": "null"} in reason.get("oneOf", [])
    assert "reason" in components["RecommendedItem"]["required"]
    assert {"id", "name", "kind"} <= set(components["Reason"]["required"])
