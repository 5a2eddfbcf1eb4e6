import pytest
from django.contrib.auth import get_user_model

from recommender import events
from recommender.models import ModelVersion

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client):
    admin = get_user_model().objects.create_superuser("boss", "boss@example.com", "pw")
    client.force_login(admin)
    return client


def test_events_are_listed_and_filterable_but_read_only(staff_client, catalog):
    events.record("purchase", catalog[0], session_key="abcdef123", value=2)
    events.record("view", catalog[1], session_key="abcdef123")
    page = staff_client.get("/admin/recommender/event/?kind__exact=purchase")
    assert page.status_code == 200
    assert b"Product 0" in page.content and b"Product 1" not in page.content
    assert staff_client.get("/admin/recommender/event/?shopper=anonymous").status_code == 200
    assert staff_client.get("/admin/recommender/event/add/").status_code == 403
    event_id = events.Event.objects.first().pk
    change = staff_client.get(f"/admin/recommender/event/{event_id}/change/")
    assert change.status_code == 200 and b'name="_save"' not in change.content


def test_model_versions_and_products_are_in_the_admin(staff_client):
    ModelVersion.objects.create(status="ready", metrics={"valid": {"ndcg@10": 0.0412}})
    page = staff_client.get("/admin/recommender/modelversion/")
    assert page.status_code == 200 and b"0.0412" in page.content
    assert staff_client.get("/admin/catalog/product/").status_code == 200


def test_shoppers_cannot_open_the_admin(client):
    client.force_login(get_user_model().objects.create_user("ann"))
    assert client.get("/admin/recommender/event/").status_code == 302
