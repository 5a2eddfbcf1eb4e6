"""Deleting a product keeps its history: events stay for training, reports and the admin."""

import pytest
from django.contrib.auth import get_user_model

from recommender import serving, training
from recommender.models import Event, ModelVersion

from .store_data import FAST_CONFIG

pytestmark = pytest.mark.django_db


def test_deleting_a_product_keeps_its_events(history):
    gone, gone_pk = history[3], history[3].pk
    before = Event.objects.filter(item_id=gone_pk).count()
    assert before > 0
    total = Event.objects.count()
    gone.delete()
    assert Event.objects.filter(item_id=gone_pk).count() == before
    assert Event.objects.count() == total


def test_training_and_serving_cope_with_a_deleted_product(history):
    buyer = Event.objects.filter(user__isnull=False).values_list("user", flat=True).first()
    user = get_user_model().objects.get(pk=buyer)
    seen = Event.objects.filter(user=user).values_list("item_id", flat=True).first()
    gone = next(p for p in history if p.pk == seen)
    gone.delete()

    version = training.request_training(config=FAST_CONFIG)
    version = training.run_training(version.pk)
    assert version.status == ModelVersion.Status.READY and version.is_active, version.error

    for answer in (
        serving.recommend(user=user, limit=10),
        serving.popular(limit=40),
        serving.similar(history[0], limit=10),
    ):
        pks = [item.pk for item in answer.items]
        assert pks and seen not in pks


def test_the_admin_lists_events_of_a_deleted_product(client, history):
    admin = get_user_model().objects.create_superuser("boss", "boss@example.com", "pw")
    client.force_login(admin)
    gone_pk = history[5].pk
    Event.objects.exclude(item_id__in=[gone_pk, history[6].pk]).delete()  # one page
    history[5].delete()
    page = client.get("/admin/recommender/event/")
    assert page.status_code == 200
    assert f"deleted item {gone_pk}".encode() in page.content
    assert b"Chain item 6" in page.content
    event = Event.objects.filter(item_id=gone_pk).first()
    assert client.get(f"/admin/recommender/event/{event.pk}/change/").status_code == 200
