"""Benchmark-only views: the bare minimum an event insert costs, and a page like a store's."""

import json
import secrets
import uuid

from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import ensure_csrf_cookie

from recommender.models import Event

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
