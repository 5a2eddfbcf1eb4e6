"""Who the shopper is: an anonymous key kept in the session, merged into the user at login."""

import pytest
from django.contrib.auth import get_user_model, login
from django.contrib.auth.models import AnonymousUser
from django.contrib.sessions.backends.db import SessionStore
from django.test import RequestFactory

from recommender import cachekeys, events, serving, shoppers
from recommender.models import Event


def make_request(user=None, session=True):
    request = RequestFactory().get("/")
    if session:
        request.session = SessionStore()
    request.user = user or AnonymousUser()
    return request


def test_the_anonymous_key_is_made_once_and_kept_in_the_session(db):
    request = make_request()
    assert shoppers.anonymous_key(request, create=False) == ""
    key = shoppers.anonymous_key(request)
    assert len(key) == 32 and int(key, 16) >= 0
    assert shoppers.anonymous_key(request) == key
    assert request.session[shoppers.SESSION_FIELD] == key
    assert shoppers.anonymous_key(make_request()) != key  # another visitor, another key


def test_a_request_without_a_session_has_no_key():
    assert shoppers.anonymous_key(make_request(session=False)) == ""


def test_shopper_of_names_the_user_only_when_authenticated(db):
    user = get_user_model().objects.create_user("ann")
    anonymous = shoppers.shopper_of(make_request())
    assert anonymous["user"] is None and anonymous["session_key"]
    assert shoppers.shopper_of(make_request(user))["user"] == user


@pytest.fixture
def shopper_with_anonymous_events(catalog):
    request = make_request()
    key = shoppers.anonymous_key(request)
    events.record_many([{"kind": "view", "item": p.pk} for p in catalog[:3]], session_key=key)
    events.record_many([{"kind": "view", "item": catalog[4].pk}], session_key="someone-else")
    return request, key


def test_login_makes_the_sessions_events_the_users_once(shopper_with_anonymous_events):
    request, key = shopper_with_anonymous_events
    user = get_user_model().objects.create_user("bob", password="pw")
    serving._cache().set(cachekeys.generation(user=user), "stale", 60)

    login(request, user)  # rotates the session key; the shopper key survives in its data

    assert shoppers.anonymous_key(request, create=False) == key
    assert Event.objects.filter(user=user).count() == 3
    assert not Event.objects.filter(session_key=key, user__isnull=True).exists()
    assert Event.objects.filter(session_key="someone-else", user__isnull=True).count() == 1
    assert serving._cache().get(cachekeys.generation(user=user)) is None

    login(request, user)  # a second login moves nothing and copies nothing
    assert Event.objects.filter(user=user).count() == 3
    assert Event.objects.count() == 4


def test_login_without_anonymous_events_changes_nothing(db):
    user = get_user_model().objects.create_user("cy", password="pw")
    login(make_request(), user)
    assert not Event.objects.exists()
