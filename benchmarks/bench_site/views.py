"""Benchmark-only views: the bare minimum an event insert costs, a page like a store's, and the
serving baseline (10 products through DRF)."""

import json
import secrets
import uuid

from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import ensure_csrf_cookie
from rest_framework import serializers
from rest_framework.generics import ListAPIView
from rest_framework.permissions import AllowAny

from recommender.models import Event
from shop_demo.catalog.models import Product

SHOPPER_FIELD = "recommender_shopper"


@ensure_csrf_cookie
def page(request):
    """A store page: it hands the browser its CSRF cookie, as a page with a tracker does."""
    return HttpResponse("<!doctype html><title>product</title><p>product page</p>")


def ping(request):
    return HttpResponse("ok")


def bare_event(request):
    """One event, one ``objects.create``: no DRF, validation, item check or throttle.

    It still passes Django's CSRF middleware (not exempt) and identifies the shopper by
    the session, because any view that stores shopper events must do both.
    """
    data = json.loads(request.body)
    key = request.session.get(SHOPPER_FIELD)
    if not key:
        key = request.session[SHOPPER_FIELD] = secrets.token_hex(16)
    Event.objects.create(
        event_id=data.get("event_id") or uuid.uuid4(),
        session_key=key,
        item_id=int(data["item"]),
        kind=data["kind"],
    )
    return JsonResponse({"stored": 1, "duplicates": 0}, status=201)


# ---------------------------------------------------------------- serving benchmark


class BenchProductSerializer(serializers.ModelSerializer):
    class Meta:
        model = Product
        fields = ["id", "name", "slug", "price", "category"]


class ProductListBaseline(ListAPIView):
    """The serving baseline: 10 products by primary key (``?ids=1,2,...``), serialized by DRF.

    What a store pays for any precomputed list: session authentication, one query, a
    small ModelSerializer. No throttle, no cache, no model.
    """

    serializer_class = BenchProductSerializer
    permission_classes = [AllowAny]
    throttle_classes = []
    pagination_class = None

    def get_queryset(self):
        ids = [int(x) for x in self.request.query_params.get("ids", "").split(",") if x.isdigit()][
            :10
        ]
        products = Product.objects.filter(pk__in=ids) if ids else Product.objects.order_by("pk")
        return products[:10]


def serving_warm(request):
    """Load the active model, and the running experiments' arm versions, in this worker and
    run each model path once (first-call costs).

    Answers which process it is and what it loaded, so the benchmark can wait until every
    gunicorn worker has built its indexes before measuring.
    """
    import os

    from recommender import experiments, serving

    serving.warm_up()
    model = serving.active_model.get()
    if model is None:
        return JsonResponse({"pid": os.getpid(), "ready": False})
    arms = {}
    for experiment in experiments.running_experiments.get().experiments:
        for arm in experiment.arms:
            if not arm.serves_popular_items:
                arms[arm.name] = serving.arm_models.model_for(arm, model)
    for loaded in (model, *arms.values()):
        first = loaded.predictor.item_map.id(1)
        loaded.top_candidates([(first, "view")], 30)
        loaded.similar(first, 30)
    return JsonResponse(
        {
            "pid": os.getpid(),
            "ready": True,
            "version": model.version_id,
            "items": model.predictor.n_items,
            "index": model.index.build_info if model.index is not None else None,
            "arms": {name: loaded.version_id for name, loaded in arms.items()},
        }
    )
