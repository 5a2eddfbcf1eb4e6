"""The serving service: fallbacks, business rules, cache invalidation, version switches."""

import uuid

import pytest
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import override_settings

from recommender import events, serving
from recommender.models import Event, ModelVersion, Recommendation
from shop_demo.catalog.models import Product

from .serving_fixtures import install_version, views

pytestmark = pytest.mark.django_db


def test_without_a_model_everyone_gets_popular_items(shelf):
    for shopper in range(3):
        views(f"s{shopper}", shelf[:2])
    views("s9", shelf[5:6])
    recs = serving.recommend(session_key="new", limit=3)
    assert recs.source == "popular" and recs.version_id is None
    assert [p.pk for p in recs.items][:2] == [shelf[0].pk, shelf[1].pk]
    assert Recommendation.objects.get(pk=recs.recommendation_id).source == "popular"


def test_a_new_shopper_gets_popular_items_even_with_a_model(shelf):
    install_version(shelf)
    views("other", shelf[:3])
    assert serving.recommend(session_key="new", limit=3).source == "popular"


def test_a_shopper_with_history_gets_model_recommendations(shelf):
    version = install_version(shelf)
    views("s1", shelf[:4])
    recs = serving.recommend(session_key="s1", limit=5, placement="home")
    assert recs.source == "model" and recs.version_id == version.pk and len(recs) == 5
    saved = Recommendation.objects.get(pk=recs.recommendation_id)
    # The row holds the ranked candidates the list was cut from (for every limit).
    hidden = {shelf[30].pk, shelf[31].pk}  # inactive, sold out
    assert (
        saved.version == version
        and saved.placement == "home"
        and [pk for pk in saved.items if pk not in hidden][:5] == [p.pk for p in recs.items]
    )
    assert recs.scores == sorted(recs.scores, reverse=True)


def test_never_inactive_sold_out_seen_or_excluded_items(shelf):
    install_version(shelf)
    views("s1", shelf[:10])
    recs = serving.recommend(session_key="s1", limit=25, exclude=[shelf[10].pk])
    shown = {p.pk for p in recs.items}
    assert shelf[30].pk not in shown and shelf[31].pk not in shown
    assert not shown & {p.pk for p in shelf[:11]}
    assert len(shown) == 19


def test_purchases_are_excluded_unless_the_placement_allows_rebuying(shelf):
    install_version(shelf)
    user = get_user_model().objects.create_user("ann")
    events.record_many([{"kind": "purchase", "item": p.pk} for p in shelf[:20]], user=user)
    events.record_many([{"kind": "view", "item": shelf[20].pk}], user=user)
    with override_settings(
        RECOMMENDER={
            "PLACEMENTS": {"cart": {"exclude_purchased": False, "exclude_seen": False}},
            "ITEM_FILTER": "shop_demo.catalog.rules.sellable_products",
            "ITEM_CATEGORY_FIELD": "category_id",
        }
    ):
        home = {p.pk for p in serving.recommend(user=user, limit=30, placement="home").items}
        cart = {p.pk for p in serving.recommend(user=user, limit=30, placement="cart").items}
    bought = {p.pk for p in shelf[:20]}
    assert not home & bought
    assert cart & bought


@override_settings(RECOMMENDER={"HISTORY_LENGTH": 3})
def test_one_query_reads_the_latest_events_in_order_and_every_purchase(
    shelf, django_assert_num_queries
):
    from datetime import timedelta

    from django.utils import timezone

    start = timezone.now() - timedelta(hours=1)
    done = [
        ("purchase", 0),
        ("view", 1),
        ("view", 2),
        ("add_to_cart", 3),
        ("view", 4),
        ("purchase", 5),
    ]
    events.record_many(
        [
            {"kind": kind, "item": shelf[i].pk, "occurred_at": start + timedelta(minutes=i)}
            for kind, i in reversed(done)
        ],
        session_key="s1",
    )
    with django_assert_num_queries(1):
        history, purchased = serving.shopper_activity(session_key="s1")
    assert history == [
        (shelf[3].pk, "add_to_cart"),
        (shelf[4].pk, "view"),
        (shelf[5].pk, "purchase"),
    ]
    assert purchased == {shelf[0].pk, shelf[5].pk}  # the first purchase is older than the history
    assert serving.shopper_activity(session_key="s1", with_purchases=False)[0] == history
    assert serving.shopper_activity(session_key="nobody-yet") == ([], set())


def test_a_users_activity_is_theirs_and_not_their_anonymous_sessions(shelf):
    ann = get_user_model().objects.create_user("ann")
    events.record_many(
        [{"kind": "view", "item": shelf[1].pk}, {"kind": "purchase", "item": shelf[2].pk}], user=ann
    )
    events.record_many([{"kind": "purchase", "item": shelf[3].pk}], session_key="s-ann")
    history, purchased = serving.shopper_activity(user=ann, session_key="s-ann")
    assert sorted(history) == sorted(
        [(shelf[1].pk, "view"), (shelf[2].pk, "purchase")]
    ) and purchased == {shelf[2].pk}
    assert serving.shopper_activity(session_key="s-ann") == (
        [(shelf[3].pk, "purchase")],
        {shelf[3].pk},
    )
    assert serving.shopper_activity(user=ann, length=1, with_purchases=False)[0] == [history[-1]]


def test_category_filter_and_diversity(shelf):
    install_version(shelf)
    views("s1", shelf[:3])
    only_c1 = serving.recommend(session_key="s1", limit=5, category=shelf[1].category_id)
    assert only_c1.items and {p.category_id for p in only_c1.items} == {shelf[1].category_id}
    with override_settings(
        RECOMMENDER={
            "PLACEMENTS": {"home": {"diversity": 2}},
            "ITEM_FILTER": "shop_demo.catalog.rules.sellable_products",
            "ITEM_CATEGORY_FIELD": "category_id",
        }
    ):
        diverse = serving.recommend(session_key="s1", limit=6, placement="home")
    per_category = {}
    for p in diverse.items:
        per_category[p.category_id] = per_category.get(p.category_id, 0) + 1
    assert len(diverse) == 6 and max(per_category.values()) == 2


def test_results_are_cached_until_the_shopper_records_an_event(shelf):
    install_version(shelf)
    views("s1", shelf[:3])
    first = serving.recommend(session_key="s1", limit=8)
    again = serving.recommend(session_key="s1", limit=8)
    assert again.recommendation_id == first.recommendation_id
    views("s1", shelf[20:23])
    fresh = serving.recommend(session_key="s1", limit=8)
    assert fresh.recommendation_id != first.recommendation_id
    assert [p.pk for p in fresh.items] != [p.pk for p in first.items]
    assert not {p.pk for p in fresh.items} & {p.pk for p in shelf[20:23]}


def test_cached_lists_still_obey_stock_changes(shelf):
    install_version(shelf)
    views("s1", shelf[:3])
    first = serving.recommend(session_key="s1", limit=5)
    sold_out = first.items[0]
    Product.objects.filter(pk=sold_out.pk).update(stock=0)
    again = serving.recommend(session_key="s1", limit=5)
    assert again.recommendation_id == first.recommendation_id
    assert sold_out.pk not in {p.pk for p in again.items}


@override_settings(
    RECOMMENDER={
        "VERSION_CHECK_SECONDS": 0,
        "ITEM_FILTER": "shop_demo.catalog.rules.sellable_products",
    }
)
def test_a_promoted_or_rolled_back_version_serves_at_once(shelf):
    old = install_version(shelf, seed=1)
    views("s1", shelf[:3])
    assert serving.recommend(session_key="s1").version_id == old.pk
    new = install_version(shelf, seed=2)
    assert serving.recommend(session_key="s1").version_id == new.pk
    old.activate()
    assert serving.recommend(session_key="s1").version_id == old.pk


@override_settings(
    RECOMMENDER={
        "VERSION_CHECK_SECONDS": 0,
        "ITEM_FILTER": "shop_demo.catalog.rules.sellable_products",
    }
)
def test_a_corrupt_artifact_is_refused_and_the_previous_version_keeps_serving(shelf):
    good = install_version(shelf)
    views("s1", shelf[:3])
    assert serving.recommend(session_key="s1").version_id == good.pk
    name = default_storage.save(
        "recommender/models/corrupt.pt", ContentFile(b"\x80\x04not a model")
    )
    bad = ModelVersion.objects.create(status="ready", artifact=name)
    bad.activate()
    recs = serving.recommend(session_key="s1")
    assert recs.version_id == good.pk and recs.source == "model"


def test_similar_items_are_the_nearest_by_cosine(shelf):
    install_version(shelf)
    recs = serving.similar(shelf[0], limit=5)
    assert recs.source == "similar" and len(recs) == 5 and shelf[0] not in recs.items
    predictor = serving.active_model.get().predictor
    expected = [
        pk for pk, _ in predictor.similar(shelf[0].pk, 10) if pk not in (shelf[30].pk, shelf[31].pk)
    ][:5]
    assert [p.pk for p in recs.items] == expected


def test_bought_together_counts_shoppers_who_bought_both(shelf):
    for shopper, basket in enumerate([[0, 1, 2], [0, 1], [0, 1, 3], [0, 2], [4, 5]]):
        events.record_many(
            [{"kind": "purchase", "item": shelf[i].pk} for i in basket],
            user=get_user_model().objects.create_user(f"b{shopper}"),
        )
    recs = serving.bought_together(shelf[0], limit=5)
    # P3 was bought with P0 by one shopper only: showing it would disclose their basket.
    assert [p.pk for p in recs.items] == [shelf[1].pk, shelf[2].pk]


def test_trending_favours_what_rises_today(shelf):
    from datetime import timedelta

    from django.utils import timezone

    old = timezone.now() - timedelta(days=5)
    for s in range(6):
        events.record("purchase", shelf[0], session_key=f"o{s}", occurred_at=old)
    for s in range(2):
        events.record("view", shelf[1], session_key=f"n{s}")
    assert serving.popular(limit=2).items[0] == shelf[0]
    assert serving.popular(limit=2, window="trending").items[0] == shelf[1]


@override_settings(
    RECOMMENDER={
        "EVENT_KINDS": ["view", "purchase", "wishlist"],
        "CLEANING": {"kind_weights": {"view": 0.0, "purchase": 1.0, "wishlist": 4.0}},
    }
)
def test_popularity_weighs_kinds_as_training_does_the_stores_own_kinds_included(shelf):
    for s in range(5):
        events.record("view", shelf[0], session_key=f"v{s}")  # weight 0: training drops views
    for s in range(2):
        events.record("purchase", shelf[1], session_key=f"p{s}")
    events.record("wishlist", shelf[2], session_key="w0")  # 4 > 2 purchases at 1
    ranking = serving.popularity_ranking()
    assert ranking == [(shelf[2].pk, 4.0), (shelf[1].pk, 2.0)]


@override_settings(RECOMMENDER={"CLEANING": {"kind_weights": {"view": 0.0, "purchase": 3.0}}})
def test_the_model_reads_no_kind_that_training_dropped(shelf):
    serving.active_model.reset()
    install_version(shelf)
    predictor = serving.active_model.get().predictor
    assert predictor.drop_kinds == {"view"}  # remove_from_cart now weighs 1 (the default)
    serving.active_model.reset()


@pytest.mark.parametrize(
    "kwargs", [{"limit": 0}, {"limit": "x"}, {"limit": 10_000}, {"placement": "p" * 65}]
)
def test_bad_parameters_raise_bad_request(shelf, kwargs):
    with pytest.raises(serving.BadRequest):
        serving.recommend(session_key="s1", **kwargs)


def test_impressions_and_clicks_give_click_through_per_version(shelf):
    version = install_version(shelf)
    views("s1", shelf[:3])
    recs = serving.recommend(session_key="s1", limit=4, placement="home")
    serving.record_impressions([recs.recommendation_id, recs.recommendation_id, uuid.uuid4()])
    events.record(
        "click",
        recs.items[0],
        session_key="s1",
        recommendation_id=str(recs.recommendation_id),
        placement="home",
    )
    lists = Recommendation.objects.filter(version=version, placement="home")
    assert sum(lists.values_list("impressions", flat=True)) == 1
    assert lists.clicks().count() == 1
    assert Event.objects.get(kind="click").recommendation_id == recs.recommendation_id


@override_settings(
    RECOMMENDER={"ANN_MIN_ITEMS": 10, "ITEM_FILTER": "shop_demo.catalog.rules.sellable_products"}
)
def test_large_catalogues_are_served_from_the_approximate_index(shelf):
    install_version(shelf)
    views("s1", shelf[:3])
    recs = serving.recommend(session_key="s1", limit=5)
    loaded = serving.active_model.get()
    assert loaded.index is not None and recs.source == "model" and len(recs) == 5
    exact = loaded.__class__(loaded.version_id, loaded.predictor, loaded.categories, None)
    history = serving.shopper_activity(session_key="s1", with_purchases=False)[0]
    assert [pk for pk, _ in loaded.top_candidates(history, 5)] == [
        pk for pk, _ in exact.top_candidates(history, 5)
    ]
