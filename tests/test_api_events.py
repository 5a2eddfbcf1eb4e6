"""POST /api/recommender/events/: the tracker's and the store's HTTP way in."""

import base64
import json
import uuid
from datetime import UTC

import pytest
from django.contrib.auth import get_user_model
from django.test import Client, override_settings
from django.urls import reverse

from recommender.models import Event
from recommender.shoppers import SESSION_FIELD

pytestmark = pytest.mark.django_db
URL = "/api/recommender/events/"


def browser():
    """A client that enforces CSRF like a real browser session, holding a token."""
    client = Client(enforce_csrf_checks=True)
    client.get(reverse("admin:login"))  # any page that sets the csrftoken cookie
    return client, client.cookies["csrftoken"].value


def post(client, payload, token=None, **extra):
    headers = {"HTTP_X_CSRFTOKEN": token} if token else {}
    body = payload if isinstance(payload, (str, bytes)) else json.dumps(payload)
    return client.post(URL, body, content_type="application/json", **headers, **extra)


def test_reverse_name():
    assert reverse("recommender:events") == URL


def test_anonymous_shopper_records_through_their_session(catalog):
    client, token = browser()
    response = post(client, {"kind": "view", "item": catalog[0].pk}, token)
    assert response.status_code == 201, response.content
    assert response.json() == {"stored": 1, "duplicates": 0}
    event = Event.objects.get()
    assert event.user is None
    assert event.session_key == client.session[SESSION_FIELD]


def test_a_batch_in_an_envelope_and_as_a_list(catalog):
    client, token = browser()
    batch = [{"kind": "view", "item": p.pk} for p in catalog[:3]]
    assert post(client, {"events": batch}, token).json()["stored"] == 3
    assert post(client, batch, token).json()["stored"] == 3
    assert Event.objects.count() == 6
    assert Event.objects.values("session_key").distinct().count() == 1


def test_without_csrf_token_an_anonymous_post_is_refused(catalog):
    client, _ = browser()
    response = post(client, {"kind": "view", "item": catalog[0].pk})
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]
    assert Event.objects.count() == 0


def test_without_csrf_token_a_logged_in_post_is_refused(catalog):
    client, _ = browser()
    client.force_login(get_user_model().objects.create_user("ann"))
    assert post(client, {"kind": "view", "item": catalog[0].pk}).status_code == 403
    assert Event.objects.count() == 0


def test_send_beacon_carries_the_token_in_the_body(catalog):
    client, token = browser()
    payload = {"csrf_token": token, "events": [{"kind": "click", "item": catalog[0].pk}]}
    assert post(client, payload).status_code == 201
    assert post(client, {**payload, "csrf_token": "x" * 64}).status_code == 403


def test_logged_in_shopper_records_as_themselves(catalog):
    client, token = browser()
    user = get_user_model().objects.create_user("ann")
    client.force_login(user)
    token = client.cookies["csrftoken"].value
    post(client, {"kind": "view", "item": catalog[0].pk}, token)
    assert Event.objects.get().user == user


def test_the_shopper_cannot_be_chosen_by_the_payload(catalog):
    client, token = browser()
    other = get_user_model().objects.create_user("bob")
    response = post(client, {"kind": "view", "item": catalog[0].pk, "user": other.pk}, token)
    assert response.status_code == 400
    assert "unknown field" in response.json()["errors"]["0"]["event"]
    assert not Event.objects.filter(user=other).exists()


def test_bad_events_get_400_with_a_reason_per_event_and_nothing_is_stored(catalog):
    client, token = browser()
    batch = [
        {"kind": "view", "item": catalog[0].pk},
        {"kind": "teleport", "item": catalog[0].pk},
        {"kind": "view", "item": catalog[0].pk, "value": "NaN?"},
    ]
    response = post(client, batch, token)
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert set(errors) == {"1", "2"}
    assert "unknown kind" in errors["1"]["kind"]
    assert "number" in errors["2"]["value"]
    assert Event.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{not json", "Malformed JSON"),
        ("42", "Send an event object"),
        ('{"events": "view"}', "must be a list"),
        (json.dumps({"events": [{"kind": "view", "item": 1}] * 101}), "At most 100"),
    ],
)
def test_malformed_requests_get_400(catalog, body, reason):
    client, token = browser()
    response = post(client, body, token)
    assert response.status_code == 400
    assert reason in response.json()["detail"]


def test_non_json_content_is_refused(catalog):
    client, token = browser()
    response = client.post(URL, {"kind": "view"}, HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 400
    assert "Send JSON" in response.json()["detail"]


def test_oversized_bodies_are_refused_before_parsing(catalog):
    client, token = browser()
    response = post(client, json.dumps({"events": [], "pad": "x" * 300_000}), token)
    assert response.status_code == 400
    assert "too large" in response.json()["detail"]


def test_a_retried_batch_is_stored_once(catalog):
    client, token = browser()
    batch = [{"kind": "view", "item": p.pk, "event_id": str(uuid.uuid4())} for p in catalog[:3]]
    post(client, batch, token)
    response = post(client, batch, token)
    assert response.json() == {"stored": 0, "duplicates": 3}
    assert Event.objects.count() == 3


def test_login_attaches_the_anonymous_events_to_the_user_once(catalog):
    client, token = browser()
    post(client, [{"kind": "view", "item": p.pk} for p in catalog[:3]], token)
    user = get_user_model().objects.create_user("ann", password="pw")
    assert client.login(username="ann", password="pw")
    assert Event.objects.filter(user=user).count() == 3
    client.logout()
    assert client.login(username="ann", password="pw")
    assert Event.objects.count() == 3
    assert Event.objects.filter(user=user).count() == 3


def test_login_does_not_take_another_sessions_events(catalog):
    a, token_a = browser()
    b, token_b = browser()
    post(a, {"kind": "view", "item": catalog[0].pk}, token_a)
    post(b, {"kind": "view", "item": catalog[1].pk}, token_b)
    get_user_model().objects.create_user("ann", password="pw")
    a.login(username="ann", password="pw")
    assert Event.objects.get(item=catalog[1]).user is None


@pytest.mark.redis
@override_settings(RECOMMENDER={"EVENTS_THROTTLE_RATE": "3/min"})
def test_bursts_are_throttled(catalog):
    client, token = browser()
    codes = [
        post(client, {"kind": "view", "item": catalog[0].pk}, token).status_code for _ in range(6)
    ]
    # The first request, made before the session holds a shopper key, counts against the address.
    assert codes == [201, 201, 201, 201, 429, 429]


@override_settings(RECOMMENDER={"EVENTS_THROTTLE_RATE": "3/min"})
def test_throttled_answers_say_when_to_retry(catalog):
    client, token = browser()
    responses = [post(client, {"kind": "view", "item": catalog[0].pk}, token) for _ in range(6)]
    last = responses[-1]
    assert last.status_code == 429 and last["Content-Type"] == "application/json"
    assert "throttled" in last.json()["detail"] and int(last["Retry-After"]) >= 0


@pytest.fixture
def basic_auth_api(monkeypatch):
    """A store whose API also takes HTTP Basic authentication (an app, not the tracker)."""
    from rest_framework.authentication import BasicAuthentication, SessionAuthentication

    from recommender.api.views import EventIngestView

    monkeypatch.setattr(
        EventIngestView, "authentication_classes", [SessionAuthentication, BasicAuthentication]
    )
    get_user_model().objects.create_user("app", password="s3cret-pass")
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(b"app:s3cret-pass").decode()}


def test_a_client_with_an_authorization_header_goes_through_drf_without_csrf(
    catalog, basic_auth_api
):
    client = Client(enforce_csrf_checks=True)
    response = post(client, {"kind": "view", "item": catalog[0].pk}, **basic_auth_api)
    assert response.status_code == 201, response.content
    assert Event.objects.get().user.username == "app"
    wrong = {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(b"app:wrong").decode()}
    assert post(client, {"kind": "view", "item": catalog[0].pk}, **wrong).status_code in (401, 403)
    assert Event.objects.count() == 1


def test_both_ways_in_give_the_same_answers_to_bad_input(catalog, basic_auth_api):
    cookie_client, token = browser()
    app_client = Client(enforce_csrf_checks=True)
    for payload in ({"kind": "stare", "item": catalog[0].pk}, "{not json", [{}] * 101):
        by_cookie = post(cookie_client, payload, token)
        by_app = post(app_client, payload, **basic_auth_api)
        assert by_cookie.status_code == by_app.status_code == 400
        assert by_cookie.json() == by_app.json()
    assert Event.objects.count() == 0


def test_only_post_is_allowed(catalog):
    client, _ = browser()
    assert client.get(URL).status_code == 405


# --------------------------------------------------------------------------- attacks (issue "Safe to go live")


@pytest.mark.parametrize("offset", ["+16:00", "-16:00", "+23:59"])
def test_offsets_postgresql_refuses_are_stored_as_utc_not_a_500(catalog, offset):
    from datetime import datetime, timedelta

    when = (datetime.now(UTC) - timedelta(hours=2)).replace(microsecond=0)
    hours, minutes = int(offset[1:3]), int(offset[4:])
    shift = timedelta(hours=hours, minutes=minutes) * (1 if offset[0] == "+" else -1)
    local = (when + shift).replace(tzinfo=None).isoformat() + offset
    client, token = browser()
    batch = [{"kind": "view", "item": catalog[0].pk, "occurred_at": local}]
    batch.append({"kind": "view", "item": catalog[1].pk})
    response = post(client, batch, token)
    assert response.status_code == 201, response.content
    assert Event.objects.get(item=catalog[0]).occurred_at == when
    assert Event.objects.count() == 2


def test_a_huge_integer_timestamp_is_a_400(catalog):
    client, token = browser()
    body = f'{{"kind": "view", "item": {catalog[0].pk}, "occurred_at": 1{"0" * 309}}}'
    response = post(client, body, token)
    assert response.status_code == 400
    assert response.json()["errors"] == {"0": {"occurred_at": "is out of range."}}
    assert not Event.objects.exists()


def test_an_anonymous_session_cannot_suppress_or_probe_another_shoppers_events(catalog):
    """Pre-sending a victim's (guessed) event ids stores the attacker's events, not theirs."""
    victim, victim_token = browser()
    get_user_model().objects.create_user("victim", password="pw")
    assert victim.login(username="victim", password="pw")
    victim_token = victim.cookies["csrftoken"].value
    ids = [str(uuid.uuid4()) for _ in range(2)]
    attacker, attacker_token = browser()
    forged = [{"kind": "view", "item": catalog[0].pk, "event_id": i} for i in ids]
    assert post(attacker, forged, attacker_token).json() == {"stored": 2, "duplicates": 0}
    purchases = [{"kind": "purchase", "item": catalog[1].pk, "event_id": i} for i in ids]
    assert post(victim, purchases, victim_token).json() == {"stored": 2, "duplicates": 0}
    assert Event.objects.filter(user__username="victim", kind="purchase").count() == 2
    # Sending the victim's ids again tells the attacker nothing about them.
    probe = [{"kind": "view", "item": catalog[2].pk, "event_id": i} for i in ids]
    assert post(attacker, probe, attacker_token).json() == {"stored": 0, "duplicates": 2}
    fresh, fresh_token = browser()
    assert post(fresh, probe, fresh_token).json() == {"stored": 2, "duplicates": 0}


def test_clicks_cannot_be_forged_onto_a_list(catalog):
    from recommender import events, reports

    for product in catalog[:4]:
        events.record("purchase", product, session_key="earlier-shopper")
    client, token = browser()
    shown = client.get("/api/recommender/popular/").json()
    item = shown["items"][0]["id"]
    rid = shown["recommendation_id"]
    click = {"kind": "click", "item": item, "recommendation_id": rid}
    for _ in range(4):
        assert post(client, [click] * 25, token).status_code == 201
    not_shown = next(p.pk for p in catalog if p.pk not in {i["id"] for i in shown["items"]})
    post(client, {**click, "item": not_shown}, token)
    post(client, {**click, "recommendation_id": str(uuid.uuid4())}, token)
    assert Event.objects.filter(kind="click").count() == 102
    assert Event.objects.filter(recommendation_id=rid).count() == 1
    day = reports.carousel_ctr_per_day(*reports.day_range(1))[-1]
    assert day[2] == 1


def test_a_personal_list_is_credited_only_with_its_own_shoppers_clicks(catalog):
    from recommender.models import Recommendation

    from .serving_fixtures import install_version

    install_version(catalog)
    ann, ann_token = browser()
    post(ann, {"kind": "view", "item": catalog[0].pk}, ann_token)
    shown = ann.get("/api/recommender/recommendations/?limit=3").json()
    assert shown["source"] == "model"
    rid, item = shown["recommendation_id"], shown["items"][0]["id"]
    owner = Recommendation.objects.get(pk=rid).owner
    assert owner and ann.session[SESSION_FIELD] not in owner  # a pseudonym, not the key
    mallory, mallory_token = browser()
    click = {"kind": "click", "item": item, "recommendation_id": rid}
    assert post(mallory, [click] * 10, mallory_token).json()["stored"] == 10
    assert not Event.objects.filter(recommendation_id=rid).exists()
    post(ann, click, ann_token)
    assert Event.objects.get(recommendation_id=rid).session_key == ann.session[SESSION_FIELD]


# --------------------------------------------------------------------------- DRF's dispatch
# EventIngestView.dispatch answers the tracker's posts without DRF's request wrapping, so
# it re-does DRF's throttling and exception handling. These tests answer the same request
# with a plain DRF APIView and fail if DRF (or the settings) ever answer differently.


class _Deny:
    """A throttle that refuses every request, asking the client to wait 7 s."""

    def allow_request(self, request, view):
        return False

    def wait(self):
        return 7


def _answer(path, failure, throttled=False):
    """(status, Retry-After, body) of ``path``'s ("fast" or "drf") answer to one tracker post.

    The post reaches the view's work only to meet ``failure``, unless ``throttled``.
    """
    from django.http import JsonResponse
    from django.test import RequestFactory
    from rest_framework.views import APIView

    from recommender.api.views import EventIngestView

    class Fast(EventIngestView):
        throttle_classes = [_Deny] if throttled else []

        def _ingest(self, request, token_authenticated=False):
            raise failure

    class Plain(APIView):
        throttle_classes = Fast.throttle_classes

        def post(self, request):
            raise failure

    request = RequestFactory().post(
        URL, "{}", content_type="application/json", HTTP_ACCEPT="application/json"
    )
    response = (Fast if path == "fast" else Plain).as_view()(request)
    if path == "fast":
        assert type(response) is JsonResponse, "the tracker's post no longer takes the fast path"
    else:
        response.render()
    return response.status_code, response.get("Retry-After"), json.loads(response.content)


def test_a_throttled_tracker_post_gets_drfs_429_and_retry_after():
    fast = _answer("fast", None, throttled=True)
    assert fast == _answer("drf", None, throttled=True)
    assert fast[:2] == (429, "7")


@pytest.mark.parametrize("kind", ["api", "database"])
def test_a_tracker_posts_exception_goes_through_the_configured_handler(kind):
    from django.db import OperationalError
    from rest_framework.exceptions import ParseError

    failure = ParseError("bad body") if kind == "api" else OperationalError("server closed")
    fast = _answer("fast", failure)
    assert fast == _answer("drf", failure)
    # A database that cannot answer: the store's EXCEPTION_HANDLER's 503 + Retry-After.
    assert fast[:2] == ((400, None) if kind == "api" else (503, "1"))


@pytest.mark.parametrize("path", ["fast", "drf"])
def test_an_exception_no_handler_answers_is_raised_on_both_paths(path):
    with pytest.raises(ZeroDivisionError):
        _answer(path, ZeroDivisionError("a bug"))
