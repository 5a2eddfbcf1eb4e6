"""The read endpoints: who may see what, parameters, schema, impressions, throttling."""

import json
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client, override_settings

from recommender import events
from recommender.models import Recommendation
from shop_demo.catalog.models import Category, Product

from .serving_fixtures import install_version

pytestmark = pytest.mark.django_db
API = "/api/recommender"


@pytest.fixture
def shelf():
    category = Category.objects.create(name="C", slug="c")
    products = [
        Product.objects.create(
            category=category, name=f"P{i}", slug=f"p{i}", price=Decimal(1), stock=3
        )
        for i in range(20)
    ]
    install_version(products)
    return products


@pytest.fixture
def ann():
    return get_user_model().objects.create_user("ann", password="pw")


def test_my_recommendations_for_a_logged_in_shopper(client, shelf, ann):
    events.record_many([{"kind": "view", "item": p.pk} for p in shelf[:3]], user=ann)
    client.force_login(ann)
    body = client.get(f"{API}/recommendations/?limit=4&placement=product").json()
    assert body["source"] == "model" and body["model_version"] and body["placement"] == "product"
    assert len(body["items"]) == 4 and {"id", "name", "url", "score", "image"} <= set(
        body["items"][0]
    )
    assert Recommendation.objects.filter(pk=body["recommendation_id"]).exists()


def test_an_anonymous_shopper_is_served_through_their_session(shelf):
    client = Client(enforce_csrf_checks=True)
    client.get("/admin/login/")
    token = client.cookies["csrftoken"].value
    client.post(
        f"{API}/events/",
        json.dumps([{"kind": "view", "item": p.pk} for p in shelf[:3]]),
        content_type="application/json",
        HTTP_X_CSRFTOKEN=token,
    )
    body = client.get(f"{API}/recommendations/").json()
    assert body["source"] == "model"
    assert not {item["id"] for item in body["items"]} & {p.pk for p in shelf[:3]}


def test_an_event_changes_the_next_recommendations(client, shelf, ann):
    client.force_login(ann)
    events.record("view", shelf[0], user=ann)
    before = client.get(f"{API}/recommendations/").json()
    client.post(
        f"{API}/events/",
        json.dumps({"kind": "view", "item": shelf[7].pk}),
        content_type="application/json",
    )
    after = client.get(f"{API}/recommendations/").json()
    assert after["recommendation_id"] != before["recommendation_id"]
    assert [i["id"] for i in after["items"]] != [i["id"] for i in before["items"]]


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=abc", "limit=51", "colour=red", f"placement={'x' * 65}"]
)
def test_bad_parameters_get_400_with_a_reason(client, shelf, query):
    response = client.get(f"{API}/recommendations/?{query}")
    assert response.status_code == 400 and response.json()["detail"]


def test_only_staff_read_another_users_recommendations(client, shelf, ann):
    bob = get_user_model().objects.create_user("bob")
    events.record("view", shelf[0], user=bob)
    url = f"{API}/users/{bob.pk}/recommendations/"
    assert client.get(url).status_code == 403
    client.force_login(ann)
    assert client.get(url).status_code == 403
    staff = get_user_model().objects.create_user("staff", is_staff=True)
    client.force_login(staff)
    assert client.get(url).status_code == 403  # staff, but may not read shoppers' events
    staff.user_permissions.add(
        Permission.objects.get(codename="view_event", content_type__app_label="recommender")
    )
    client.force_login(get_user_model().objects.get(pk=staff.pk))
    assert client.get(url).status_code == 200 and client.get(url).json()["source"] == "model"
    assert client.get(f"{API}/users/999999/recommendations/").status_code == 404


def test_similar_bought_together_and_popular(client, shelf):
    for buyer in ("b1", "b2"):
        events.record_many(
            [{"kind": "purchase", "item": shelf[i].pk} for i in (0, 1)],
            user=get_user_model().objects.create_user(buyer),
        )
    similar = client.get(f"{API}/items/{shelf[0].pk}/similar/?limit=3").json()
    assert similar["source"] == "similar" and len(similar["items"]) == 3
    together = client.get(f"{API}/items/{shelf[0].pk}/bought-together/").json()
    assert [i["id"] for i in together["items"]] == [shelf[1].pk]
    popular = client.get(f"{API}/popular/?window=trending").json()
    assert popular["source"] == "popular" and popular["model_version"] is None
    assert client.get(f"{API}/popular/?window=yearly").status_code == 400
    assert client.get(f"{API}/items/999999/similar/").status_code == 404
    assert client.get(f"{API}/items/not-a-pk/similar/").status_code == 404


def test_impressions_need_csrf_and_are_counted(shelf):
    client = Client(enforce_csrf_checks=True)
    client.get("/admin/login/")
    token = client.cookies["csrftoken"].value
    events.record("view", shelf[0].pk, session_key="somebody")  # a non-empty popular list
    rid = client.get(f"{API}/popular/").json()["recommendation_id"]
    payload = json.dumps({"recommendations": [rid]})
    assert (
        client.post(f"{API}/impressions/", payload, content_type="application/json").status_code
        == 403
    )
    ok = client.post(
        f"{API}/impressions/", payload, content_type="application/json", HTTP_X_CSRFTOKEN=token
    )
    assert ok.status_code == 200 and ok.json() == {"counted": 1}
    assert Recommendation.objects.get(pk=rid).impressions == 1
    bad = client.post(
        f"{API}/impressions/",
        json.dumps({"recommendations": ["x"]}),
        content_type="application/json",
        HTTP_X_CSRFTOKEN=token,
    )
    assert bad.status_code == 400


@pytest.mark.redis
@override_settings(RECOMMENDER={"API_THROTTLE_RATE": "2/min"})
def test_public_endpoints_are_throttled(client, shelf):
    codes = [client.get(f"{API}/popular/").status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_the_openapi_schema_and_docs(client):
    schema = client.get(f"{API}/schema/?format=json")
    assert schema.status_code == 200
    paths = json.loads(schema.content)["paths"]
    for path in (
        "/api/recommender/recommendations/",
        "/api/recommender/events/",
        "/api/recommender/popular/",
        "/api/recommender/items/{item_id}/similar/",
        "/api/recommender/users/{user_id}/recommendations/",
    ):
        assert path in paths
    docs = client.get(f"{API}/docs/").content.decode()
    assert "swagger-ui" in docs and "cdn" not in docs.lower()
