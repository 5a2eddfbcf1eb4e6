"""Findings of the "Safe to go live" review on serving: each attack as it was reported."""

import hashlib
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.files.storage import default_storage
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from recommender import events, serving, tasks
from recommender.models import Event, ModelVersion, Recommendation
from recommender.schedule import periodic_tasks
from shop_demo.catalog.models import Product

from .serving_fixtures import install_version, views

pytestmark = pytest.mark.django_db
API = "/api/recommender"


def anonymous_shopper(client, key="s-web"):
    """The client's session carries the recommender's anonymous shopper key ``key``."""
    from recommender.shoppers import SESSION_FIELD

    session = client.session
    session[SESSION_FIELD] = key
    session.save()
    return key


def shown(answer):
    return [item["id"] for item in answer.json()["items"]]


# --------------------------------------------------------------------------- 1: limit


def test_a_short_list_asked_for_first_does_not_shorten_the_next_longer_one(shelf):
    install_version(shelf)
    views("s1", shelf[:3])
    assert len(serving.recommend(session_key="s1", limit=2, placement="product")) == 2
    ten = serving.recommend(session_key="s1", limit=10, placement="product")
    assert len(ten) == 10 and ten.source == "model"
    assert [p.pk for p in serving.recommend(session_key="s1", limit=2, placement="product")] == [
        p.pk for p in ten.items[:2]
    ]


def test_the_api_answers_the_limit_asked_for_after_a_smaller_one(client, shelf):
    install_version(shelf)
    for shopper in range(3):  # popular items to fill what the home page's diversity rule cuts
        views(f"crowd{shopper}", shelf[3:30])
    views(anonymous_shopper(client), shelf[:3])
    three = client.get(f"{API}/recommendations/?limit=3&placement=product")
    twenty = client.get(f"{API}/recommendations/?limit=20&placement=product")
    assert three.json()["source"] == twenty.json()["source"] == "model"
    assert len(shown(three)) == 3 and len(shown(twenty)) == 20
    assert shown(twenty)[:3] == shown(three)
    # The home page's 10-item carousel after the API's ?limit=2 for the same placement.
    short = client.get(f"{API}/recommendations/?limit=2&placement=home").json()
    assert len(short["items"]) == 2 and short["source"] == "model", short
    page = client.get("/").content.decode()
    carousel = page[page.index('data-rec-placement="home"') :]
    assert carousel.count('class="rec-carousel__item"') == 10


def test_short_lists_are_still_filled_with_popular_items_from_the_cache(shelf):
    """A model that knows few items: the rest of the list is popular items, cached or not."""
    install_version(shelf[:6])  # the model knows 6 items; the shopper saw 3 of them
    for shopper in range(3):
        views(f"crowd{shopper}", shelf[10:14])
    views("s1", shelf[:3])
    first = serving.recommend(session_key="s1", limit=8)
    again = serving.recommend(session_key="s1", limit=8)
    for recs in (first, again):
        pks = [p.pk for p in recs.items]  # 3 the model knows, 4 popular: nothing else has events
        assert len(pks) == 7 and not set(pks) & {p.pk for p in shelf[:3]}
        assert set(pks[:3]) == {p.pk for p in shelf[3:6]}
        assert set(pks[3:7]) == {p.pk for p in shelf[10:14]}
    assert again.recommendation_id == first.recommendation_id


def test_a_click_on_a_popular_item_filling_a_personal_list_is_credited_to_that_list(shelf):
    install_version(shelf[:6])
    for shopper in range(3):
        views(f"crowd{shopper}", shelf[10:14])
    views("s1", shelf[:3])
    with CaptureQueriesContext(connection) as queries:  # the miss: one row, fill-ins included
        listed = serving.recommend(session_key="s1", limit=8)
    assert not [q for q in queries if q["sql"].startswith('UPDATE "recommender_recommendation"')]
    filler = listed.items[-1]
    assert filler.pk in {p.pk for p in shelf[10:14]} and listed.source == "model"
    with CaptureQueriesContext(connection) as queries:  # the row already holds the fill-ins
        assert serving.recommend(session_key="s1", limit=8).items == listed.items
    assert not [q for q in queries if q["sql"].startswith("UPDATE")]
    row = Recommendation.objects.get(pk=listed.recommendation_id)
    assert [int(pk) for pk in row.items[-4:]] == [p.pk for p in listed.items[-4:]]
    events.record("click", filler, session_key="s1", recommendation_id=str(row.pk))
    assert Event.objects.filter(kind="click").get().recommendation_id == row.pk


# --------------------------------------------------------------------------- 7: bought together


def alice_and_the_attacker(shelf):
    alice = get_user_model().objects.create_user("alice")
    events.record_many([{"kind": "add_to_cart", "item": shelf[i].pk} for i in (6, 17)], user=alice)
    active = Product.objects.filter(is_active=True).exclude(pk=shelf[6].pk)
    events.record_many(
        [{"kind": "add_to_cart", "item": shelf[6].pk}]
        + [{"kind": "add_to_cart", "item": p.pk} for p in active[:99]],
        session_key="attacker-session",
    )


def test_one_anonymous_session_cannot_reveal_what_a_shopper_carted(client, shelf):
    alice_and_the_attacker(shelf)
    together = client.get(f"{API}/items/{shelf[6].pk}/bought-together/")
    assert together.status_code == 200 and shown(together) == []
    assert list(serving.bought_together(shelf[6])) == []


def test_signed_in_shoppers_still_make_pairs(shelf):
    alice_and_the_attacker(shelf)
    bob = get_user_model().objects.create_user("bob")
    events.record_many([{"kind": "purchase", "item": shelf[i].pk} for i in (6, 17)], user=bob)
    assert [p.pk for p in serving.bought_together(shelf[6])] == [shelf[17].pk]


def test_another_placement_is_served_from_the_cached_item_lists(shelf):
    install_version(shelf)
    for name in ("ann", "bob"):
        user = get_user_model().objects.create_user(name)
        events.record_many([{"kind": "purchase", "item": shelf[i].pk} for i in (0, 1)], user=user)
    for placement in ("", "product-bought-together"):
        serving.bought_together(shelf[0], placement=placement)
        serving.similar(shelf[0], placement=placement)
        serving.popular(placement=placement)
    with CaptureQueriesContext(connection) as queries:
        lists = {
            "bought together": serving.bought_together(shelf[0], placement="product"),
            "similar": serving.similar(shelf[0], placement="product"),
            "popular": serving.popular(placement="product"),
        }
    assert not [q["sql"] for q in queries if Event._meta.db_table in q["sql"]]
    for name, recs in lists.items():
        row = Recommendation.objects.get(pk=recs.recommendation_id)
        assert row.placement == "product" and recs.placement == "product", name
    assert [p.pk for p in lists["bought together"]] == [shelf[1].pk]
    # Each placement keeps its own row (click-through per placement), made once.
    again = serving.bought_together(shelf[0], placement="product")
    assert again.recommendation_id == lists["bought together"].recommendation_id


# --------------------------------------------------------------------------- 10: hidden items


@pytest.mark.parametrize("path", ["similar", "bought-together"])
def test_an_inactive_item_answers_like_an_unknown_one(client, shelf, path):
    install_version(shelf)
    inactive, sold_out = shelf[30], shelf[31]
    unknown = client.get(f"{API}/items/999999/{path}/")
    hidden = client.get(f"{API}/items/{inactive.pk}/{path}/")
    assert unknown.status_code == hidden.status_code == 404
    assert unknown.json() == hidden.json()
    # A sold-out item's page is public: its lists are still answered.
    assert client.get(f"{API}/items/{sold_out.pk}/{path}/").status_code == 200


def test_the_demo_does_not_draw_an_inactive_products_picture(client, shelf):
    assert client.get("/p/secret/image.svg").status_code == 404
    assert client.get("/p/nothing-here/image.svg").status_code == 404
    assert client.get("/p/sold-out/image.svg").status_code == 200


def test_the_demo_cart_does_not_name_an_inactive_product(client, shelf):
    def message_after_adding(pk):
        answer = client.post("/cart/", {"action": "add", "product": pk}, follow=True)
        return [str(m) for m in answer.context["messages"]]

    assert message_after_adding(shelf[30].pk) == message_after_adding(999999)
    assert message_after_adding(999999) == ["That product does not exist."]
    assert client.session.get("cart", {}) == {}


# --------------------------------------------------------------------------- 12: fall back


def verified_version(products, seed):
    version = install_version(products, seed=seed)
    with default_storage.open(version.artifact, "rb") as stored:
        payload = stored.read()
    version.artifact_sha256 = hashlib.sha256(payload).hexdigest()
    version.save(update_fields=["artifact_sha256"])
    return version, payload


def overwrite(version, payload):
    with open(default_storage.path(version.artifact), "wb") as stored:
        stored.write(payload)


def new_process():
    serving.active_model.reset()


# A process looks for a new active version on every request, serving sellable items only.
checking_versions_on_every_request = override_settings(
    RECOMMENDER={
        "VERSION_CHECK_SECONDS": 0,
        "ITEM_FILTER": "shop_demo.catalog.rules.sellable_products",
    }
)


@checking_versions_on_every_request
def test_a_version_once_refused_serves_again_as_the_fallback_once_intact(shelf):
    views("s1", shelf[:3])
    older, older_bytes = verified_version(shelf, seed=1)
    newer, newer_bytes = verified_version(shelf, seed=2)
    # Both artifacts damaged: a process refuses both and records it.
    overwrite(older, b"damaged")
    overwrite(newer, b"damaged")
    new_process()
    assert serving.recommend(session_key="s1").source == "popular"
    older.refresh_from_db()
    assert older.error.startswith(serving.REFUSED)
    # Both restored: the active one serves and its refusal is cleared.
    overwrite(older, older_bytes)
    overwrite(newer, newer_bytes)
    new_process()
    assert serving.recommend(session_key="s1").version_id == newer.pk
    newer.refresh_from_db()
    assert newer.error == ""
    # The active one damaged again: a new process serves the intact, verified older one.
    overwrite(newer, b"damaged again")
    new_process()
    views("s1", shelf[3:4])
    recs = serving.recommend(session_key="s1")
    assert (recs.version_id, recs.source) == (older.pk, "model")
    older.refresh_from_db()
    assert older.error == ""


@checking_versions_on_every_request
def test_a_process_keeps_looking_past_more_broken_versions_than_one_check_tries(shelf):
    views("s1", shelf[:3])
    intact, _ = verified_version(shelf, seed=1)
    for seed in range(2, 7):  # five later versions, all damaged since
        broken, _ = verified_version(shelf, seed=seed)
        overwrite(broken, b"damaged")
    new_process()
    answers = [serving.recommend(session_key="s1").version_id for _ in range(3)]
    assert answers[-1] == intact.pk


# --------------------------------------------------------------------------- 13: bounded rows


def test_an_unknown_placement_is_a_400_and_stores_nothing(client, shelf):
    install_version(shelf)
    views(anonymous_shopper(client), shelf[:3])
    before = Recommendation.objects.count()
    paths = [
        "recommendations/",
        "popular/",
        f"items/{shelf[0].pk}/similar/",
        f"items/{shelf[0].pk}/bought-together/",
    ]
    for n in range(100):
        answer = client.get(f"{API}/{paths[n % 4]}?placement=made-up-{n}")
        assert answer.status_code == 400 and "Unknown placement" in answer.json()["detail"]
    assert Recommendation.objects.count() == before
    for placement in ("home", "cart", "product-similar", "product-bought-together", ""):
        assert client.get(f"{API}/recommendations/?placement={placement}").status_code == 200


@override_settings(
    RECOMMENDER={"PLACEMENTS": {"sidebar": {"diversity": 1}}, "PLACEMENT_NAMES": ["newsletter"]}
)
def test_the_store_names_its_placements(client, shelf):
    for placement in ("sidebar", "newsletter"):
        assert client.get(f"{API}/popular/?placement={placement}").status_code == 200
    assert client.get(f"{API}/popular/?placement=home").status_code == 400


def test_a_template_with_an_unknown_placement_still_renders(rf, shelf, caplog):
    from django.contrib.auth.models import AnonymousUser
    from django.template import Context, Template

    request = rf.get("/")
    request.session, request.user = {}, AnonymousUser()
    html = Template(
        "{% load recommender_tags %}<main>page</main>"
        '{% popular_products limit=4 placement="nowhere" as products %}'
        '{% product_carousel products placement="nowhere" %}'
    ).render(Context({"request": request}))
    assert "<main>page</main>" in html and "rec-carousel__item" not in html
    assert "Unknown placement 'nowhere'" in caplog.text


def test_old_recommendation_lists_are_deleted_in_batches(shelf):
    now = timezone.now()
    old = [
        Recommendation(source="popular", created_at=now - timedelta(days=91, minutes=m))
        for m in range(7)
    ]
    kept = [Recommendation(source="popular", created_at=now - timedelta(days=89))]
    Recommendation.objects.bulk_create(old + kept)
    assert serving.delete_old_recommendations(batch_size=3) == 7
    assert list(Recommendation.objects.values_list("pk", flat=True)) == [kept[0].pk]
    with override_settings(RECOMMENDER={"RECOMMENDATION_RETENTION_DAYS": 30}):
        assert tasks.delete_old_recommendations() == 1
    assert not Recommendation.objects.exists()


def test_the_retention_task_is_in_the_beat_schedule():
    entry = periodic_tasks()["recommender-delete-old-recommendations"]
    assert entry["task"] == tasks.delete_old_recommendations.name


def test_a_version_error_of_training_is_not_cleared_by_serving(shelf):
    """Only a web process's own refusal is cleared when the version loads again."""
    version = install_version(shelf)
    ModelVersion.objects.filter(pk=version.pk).update(error="a note from training")
    views("s1", shelf[:3])
    assert serving.recommend(session_key="s1").version_id == version.pk
    version.refresh_from_db()
    assert version.error == "a note from training"


# --------------------------------------------------------------------------- empty lists


def test_a_store_with_no_events_yet_caches_no_empty_list(client, shelf):
    """The first page load of a new store must not pin an empty "popular" list for minutes."""
    assert shown(client.get(f"{API}/popular/")) == []
    assert not Recommendation.objects.exists()  # nothing shown, nothing to attribute
    views("first-shopper", shelf[:3])
    assert set(shown(client.get(f"{API}/popular/"))) == {p.pk for p in shelf[:3]}
