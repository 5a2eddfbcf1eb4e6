"""POST /api/recommender/events/: the tracker's and the store's HTTP way in."""

import base64
import json
import uuid

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
