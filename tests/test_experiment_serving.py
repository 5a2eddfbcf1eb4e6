"""Experiments at serving time: who is in which arm, and every list served from that arm.

The versions are tests/serving_fixtures.py's small real artifacts (random weights, seeds
that rank differently); the active version is a third one, so both arms are loaded
beside it as a web process would.
"""

from collections import Counter
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model, login
from django.contrib.auth.models import AnonymousUser, Permission
from django.contrib.sessions.backends.db import SessionStore
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection
from django.template import Context, Template
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from recommender import cachekeys, events, experiments, privacy, serving, shoppers
from recommender.models import Arm, Assignment, Experiment, ModelVersion, Recommendation

from .serving_fixtures import install_version, views

pytestmark = pytest.mark.django_db
SALT = "a-fixed-salt-for-the-tests"


@pytest.fixture(autouse=True)
def check_at_every_request(settings):
    """Every request re-reads the running experiments (the snapshot has its own test)."""
    settings.RECOMMENDER = {**settings.RECOMMENDER, "VERSION_CHECK_SECONDS": 0}


@pytest.fixture
def versions(shelf):
    """(arm A's version, arm B's version, the active version): three different rankers."""
    first = install_version(shelf, seed=1, activate=False)
    second = install_version(shelf, seed=2, activate=False)
    active = install_version(shelf, seed=3)
    return first, second, active


def start(name, arms, placements=("home",), salt=SALT, started_at=None):
    """A running experiment; ``arms``: [(name, version or None for popularity, share)]."""
    experiment = Experiment.objects.create(
        name=name,
        placements=list(placements),
        salt=salt,
        status=Experiment.Status.RUNNING,
        started_at=started_at or timezone.now(),
    )
    for arm_name, version, share in arms:
        Arm.objects.create(
            experiment=experiment,
            name=arm_name,
            ranker="version" if version is not None else "popularity",
            version=version,
            share=share,
        )
    return experiment


def stop(experiment):
    Experiment.objects.filter(pk=experiment.pk).update(
        status=Experiment.Status.STOPPED, stopped_at=timezone.now()
    )


def running(placement="home"):
    return experiments.running_experiment(placement)


def shopper_in(arm_name, prefix="shopper", placement="home"):
    """An anonymous key the hash puts in ``arm_name``."""
    experiment = running(placement)
    for i in range(1000):
        key = f"{prefix}-{i}"
        if experiments.hashed_arm(experiment, f"s{key}").name == arm_name:
            return key
    raise AssertionError(f"no shopper hashes into {arm_name}")


def arm_id(experiment, name):
    return Arm.objects.get(experiment=experiment, name=name).pk


# --------------------------------------------------------------------------- assignment


def test_shoppers_split_by_the_shares_and_keep_their_arm(db):
    experiment = start("split", [("big", None, 3), ("small", None, 1)])
    snapshot = running()
    keys = [f"shopper-{i}" for i in range(1000)]
    first = {key: experiments.arm_for(snapshot, session_key=key).name for key in keys}
    counts = Counter(first.values())
    assert 0.70 <= counts["big"] / 1000 <= 0.80, counts
    assert Assignment.objects.filter(experiment=experiment).count() == 1000

    serving._cache().clear()  # from the stored rows
    assert all(experiments.arm_for(snapshot, session_key=k).name == first[k] for k in keys[:100])
    Assignment.objects.all().delete()
    serving._cache().clear()  # from the hash alone: the same arms again
    assert all(experiments.arm_for(snapshot, session_key=k).name == first[k] for k in keys[:100])

    # Another experiment's salt splits the same shoppers differently.
    other = start("other", [("big", None, 3), ("small", None, 1)], ["cart"], salt="other-salt")
    other_arms = {k: experiments.hashed_arm(running("cart"), f"s{k}").name for k in keys}
    assert other.pk != experiment.pk and other_arms != first


def test_an_assignment_is_stored_once_and_then_read_from_the_cache(db, django_assert_num_queries):
    experiment = start("once", [("a", None, 1), ("b", None, 1)])
    snapshot = running()
    arm = experiments.arm_for(snapshot, session_key="ann")
    with django_assert_num_queries(0):
        assert experiments.arm_for(snapshot, session_key="ann") == arm
    serving._cache().clear()
    assert experiments.arm_for(snapshot, session_key="ann") == arm
    stored = Assignment.objects.get(experiment=experiment)
    assert (stored.session_key, stored.user, stored.arm_id) == ("ann", None, arm.id)


def test_a_stored_assignment_wins_over_the_hash(db):
    experiment = start("stored", [("a", None, 1), ("b", None, 1)])
    key = shopper_in("a")
    Assignment.objects.create(
        experiment=experiment, arm_id=arm_id(experiment, "b"), session_key=key
    )
    assert experiments.arm_for(running(), session_key=key).name == "b"
    assert Assignment.objects.count() == 1


def test_a_request_without_a_shopper_is_outside_the_experiment(shelf, versions):
    start("anon", [("a", versions[0], 1), ("b", versions[1], 1)])
    recs = serving.recommend(placement="home")
    assert recs.arm_id is None and not Assignment.objects.exists()


def test_staff_looking_at_a_users_list_see_their_arm_without_exposing_them(client, shelf, versions):
    first, second, _ = versions
    experiment = start("preview", [("a", first, 1), ("b", second, 1)])
    user = get_user_model().objects.create_user("eve")
    events.record_many([{"kind": "view", "item": p.pk} for p in shelf[:3]], user=user)
    staff = get_user_model().objects.create_user("staff", is_staff=True)
    staff.user_permissions.add(
        Permission.objects.get(codename="view_event", content_type__app_label="recommender")
    )
    client.force_login(staff)
    url = f"/api/recommender/users/{user.pk}/recommendations/?placement=home"
    hashed = experiments.hashed_arm(running(), f"u{user.pk}")
    assert client.get(url).json()["arm_id"] == hashed.id
    assert not Assignment.objects.exists()  # looking is not serving
    other = next(arm for arm in running().arms if arm.id != hashed.id)
    Assignment.objects.create(experiment=experiment, arm_id=other.id, user=user)
    body = client.get(url).json()
    assert (body["arm_id"], body["model_version"]) == (other.id, other.version_id)
    assert Assignment.objects.count() == 1


# --------------------------------------------------------------------------- login


def make_request():
    request = RequestFactory().get("/")
    request.session = SessionStore()
    request.user = AnonymousUser()
    return request


def test_at_login_the_sessions_arm_becomes_the_users(shelf, versions):
    experiment = start("login", [("a", versions[0], 1), ("b", versions[1], 1)])
    user = get_user_model().objects.create_user("bob", password="pw")
    snapshot = running()
    users_own = experiments.hashed_arm(snapshot, f"u{user.pk}").name
    request = make_request()
    for i in range(200):  # a visitor whom the hash would put in the other arm than the user
        request.session[shoppers.SESSION_FIELD] = f"visitor-{i}"
        if experiments.hashed_arm(snapshot, f"svisitor-{i}").name != users_own:
            break
    key = shoppers.anonymous_key(request)
    views(key, shelf[:3])
    before = serving.recommend(session_key=key, placement="home")

    login(request, user)

    moved = Assignment.objects.get(experiment=experiment)
    assert moved.user == user and moved.arm_id == before.arm_id
    assert serving._cache().get(cachekeys.assignment(experiment.pk, None, key)) is None
    after = serving.recommend(user=user, session_key=key, placement="home")
    assert after.arm_id == before.arm_id and after.version_id == before.version_id
    assert Assignment.objects.count() == 1


def test_at_login_the_users_own_arm_wins_and_the_sessions_is_dropped(shelf, versions):
    experiment = start("login2", [("a", versions[0], 1), ("b", versions[1], 1)])
    user = get_user_model().objects.create_user("cy", password="pw")
    theirs = Assignment.objects.create(
        experiment=experiment, arm_id=arm_id(experiment, "a"), user=user
    )
    request = make_request()
    key = shoppers.anonymous_key(request)
    Assignment.objects.create(
        experiment=experiment, arm_id=arm_id(experiment, "b"), session_key=key
    )

    login(request, user)

    assert list(Assignment.objects.all()) == [theirs]
    recs = serving.recommend(user=user, session_key=key, placement="home")
    assert recs.arm_id == theirs.arm_id


# --------------------------------------------------------------------------- serving per arm


def test_each_arm_is_served_by_its_own_version(shelf, versions):
    first, second, active = versions
    experiment = start("versions", [("a", first, 1), ("b", second, 1)])
    in_a, in_b = shopper_in("a"), shopper_in("b")
    for key in (in_a, in_b):
        views(key, shelf[:4])
    a = serving.recommend(session_key=in_a, placement="home", limit=8)
    b = serving.recommend(session_key=in_b, placement="home", limit=8)
    assert (a.source, a.version_id, a.arm_id) == ("model", first.pk, arm_id(experiment, "a"))
    assert (b.source, b.version_id, b.arm_id) == ("model", second.pk, arm_id(experiment, "b"))
    # Same history, different versions: different lists.
    assert [p.pk for p in a.items] != [p.pk for p in b.items]
    rows = Recommendation.objects.in_bulk([a.recommendation_id, b.recommendation_id])
    assert rows[a.recommendation_id].arm_id == a.arm_id
    assert rows[a.recommendation_id].version_id == first.pk
    assert rows[b.recommendation_id].arm_id == b.arm_id
    assert set(serving.arm_models.loaded) == {(first.pk, "version"), (second.pk, "version")}

    # Arm a's list is what its version serves when it is the active one.
    stop(experiment)
    first.activate()
    alone = serving.recommend(session_key=in_a, placement="home", limit=8)
    assert alone.arm_id is None and alone.version_id == first.pk
    assert [p.pk for p in alone.items] == [p.pk for p in a.items]
    assert alone.recommendation_id != a.recommendation_id


def test_a_placement_outside_the_experiment_is_served_as_before(shelf, versions):
    first, second, active = versions
    start("home only", [("a", first, 1), ("b", second, 1)])
    key = shopper_in("a")
    views(key, shelf[:4])
    recs = serving.recommend(session_key=key, placement="product")
    similar = serving.similar(shelf[0], placement="product", session_key=key)
    assert (recs.version_id, recs.arm_id) == (active.pk, None)
    assert (similar.version_id, similar.arm_id) == (active.pk, None)
    assert not Assignment.objects.exists() and not serving.arm_models.loaded


def test_an_experiment_over_every_placement_covers_each(shelf, versions):
    first, second, _ = versions
    start("everywhere", [("a", first, 1), ("b", second, 1)], placements=())
    key = shopper_in("a", placement="cart")
    views(key, shelf[:4])
    for placement in ("", "cart", "product"):
        assert serving.recommend(session_key=key, placement=placement).version_id == first.pk


def test_arms_never_share_cached_lists(shelf, versions):
    first, second, _ = versions
    experiment = start("cache", [("a", first, 1), ("b", second, 1)])
    in_a, in_b = shopper_in("a"), shopper_in("b")
    a = serving.similar(shelf[0], placement="home", session_key=in_a)
    b = serving.similar(shelf[0], placement="home", session_key=in_b)
    assert (a.version_id, b.version_id) == (first.pk, second.pk)
    assert a.recommendation_id != b.recommendation_id
    assert [p.pk for p in a.items] != [p.pk for p in b.items]
    # Each arm's list is cached on its own: asked again, the same list (and row).
    assert serving.similar(shelf[0], placement="home", session_key=in_a).recommendation_id == (
        a.recommendation_id
    )
    assert serving.similar(shelf[0], placement="home", session_key=in_b).recommendation_id == (
        b.recommendation_id
    )

    # A shopper's cached list is their arm's: moved to the other arm, they never get it.
    views(in_a, shelf[:3])
    cached = serving.recommend(session_key=in_a, placement="home")
    assert serving.recommend(session_key=in_a, placement="home").recommendation_id == (
        cached.recommendation_id
    )
    Assignment.objects.filter(session_key=in_a).update(arm_id=arm_id(experiment, "b"))
    serving._cache().delete(cachekeys.assignment(experiment.pk, None, in_a))
    moved = serving.recommend(session_key=in_a, placement="home")
    assert moved.recommendation_id != cached.recommendation_id
    assert (moved.version_id, moved.arm_id) == (second.pk, arm_id(experiment, "b"))


def test_a_popularity_arm_serves_popular_items_everywhere_it_runs(shelf, versions):
    first, _, _ = versions
    experiment = start("baseline", [("model", first, 1), ("popular", None, 1)])
    for i in range(3):
        views(f"crowd-{i}", shelf[5:9])
    key = shopper_in("popular")
    views(key, shelf[5:7])
    recs = serving.recommend(session_key=key, placement="home", limit=5)
    popular_arm = arm_id(experiment, "popular")
    assert (recs.source, recs.version_id, recs.arm_id) == ("popular", None, popular_arm)
    assert not {p.pk for p in recs.items} & {shelf[5].pk, shelf[6].pk}  # seen: left out
    assert recs.items[:2] == [shelf[7], shelf[8]]
    assert Recommendation.objects.get(pk=recs.recommendation_id).arm_id == popular_arm
    similar = serving.similar(shelf[5], placement="home", session_key=key, limit=3)
    assert (similar.source, similar.arm_id) == ("popular", popular_arm)
    assert similar.items[:2] == [shelf[6], shelf[7]] and shelf[5] not in similar.items
    together = serving.bought_together(shelf[5], placement="home", session_key=key)
    assert (together.source, together.arm_id) == ("popular", popular_arm)
    assert not serving.arm_models.loaded  # no model asked for yet


def test_popular_lists_in_an_experiment_carry_the_shoppers_arm(shelf, versions):
    first, second, _ = versions
    experiment = start("popular rows", [("a", first, 1), ("b", second, 1)])
    views("crowd", shelf[:3])
    in_a, in_b = shopper_in("a"), shopper_in("b")
    a = serving.popular(placement="home", session_key=in_a)
    b = serving.popular(placement="home", session_key=in_b)
    assert a.items == b.items and a.recommendation_id != b.recommendation_id
    assert (a.arm_id, b.arm_id) == (arm_id(experiment, "a"), arm_id(experiment, "b"))
    assert serving.popular(placement="home").arm_id is None  # no shopper, no arm


def test_stopping_returns_everyone_to_the_active_version(shelf, versions):
    first, second, active = versions
    experiment = start("stop", [("a", first, 1), ("b", second, 1)])
    key = shopper_in("b")
    views(key, shelf[:4])
    during = serving.recommend(session_key=key, placement="home")
    similar_during = serving.similar(shelf[0], placement="home", session_key=key)
    assert during.version_id == second.pk == similar_during.version_id

    stop(experiment)

    after = serving.recommend(session_key=key, placement="home")
    similar_after = serving.similar(shelf[0], placement="home", session_key=key)
    assert (after.version_id, after.arm_id) == (active.pk, None)
    assert (similar_after.version_id, similar_after.arm_id) == (active.pk, None)
    assert after.recommendation_id != during.recommendation_id
    assert Recommendation.objects.get(pk=after.recommendation_id).arm_id is None
    assert serving.arm_models.loaded == {}  # the arms' versions are dropped


def test_an_arm_whose_version_cannot_load_is_served_by_the_active_one(shelf, versions, caplog):
    _, second, active = versions
    name = default_storage.save("recommender/models/broken.pt", ContentFile(b"not a model"))
    broken = ModelVersion.objects.create(status="ready", artifact=name)
    experiment = start("broken", [("broken", broken, 1), ("b", second, 1)])
    key = shopper_in("broken")
    views(key, shelf[:3])
    recs = serving.recommend(session_key=key, placement="home")
    assert (recs.version_id, recs.arm_id) == (active.pk, arm_id(experiment, "broken"))
    assert f"v{broken.pk} refused" in caplog.text and "arm 'broken'" in caplog.text
    broken.refresh_from_db()
    assert broken.error.startswith(serving.REFUSED)
    other = shopper_in("b")
    views(other, shelf[:3])
    assert serving.recommend(session_key=other, placement="home").version_id == second.pk


# --------------------------------------------------------------------------- the snapshot


def test_the_running_experiments_are_read_once_per_check(settings, django_assert_num_queries):
    settings.RECOMMENDER = {**settings.RECOMMENDER, "VERSION_CHECK_SECONDS": 60}
    assert running() is None
    with django_assert_num_queries(0):  # nothing runs: an in-process check, no query
        assert running() is None
    experiment = start("later", [("a", None, 1), ("b", None, 1)])
    assert running() is None  # not before the next check
    experiments.running_experiments.checked_at -= 61
    with django_assert_num_queries(1):
        assert running().id == experiment.pk
    with django_assert_num_queries(0):
        assert running().id == experiment.pk and running("cart") is None


def test_overlapping_experiments_the_earliest_started_wins(db):
    now = timezone.now()
    later = start("later", [("a", None, 1), ("b", None, 1)], ["home", "cart"], started_at=now)
    earlier = start(
        "earlier", [("a", None, 1), ("b", None, 1)], ["home"], started_at=now - timedelta(hours=1)
    )
    assert running("home").id == earlier.pk
    assert running("cart").id == later.pk
    assert running("product") is None


def test_a_cache_hit_in_an_experiment_costs_what_one_outside_costs(shelf, versions, monkeypatch):
    first, second, _ = versions
    views("outside", shelf[:3])
    serving.recommend(session_key="outside", limit=5)
    with CaptureQueriesContext(connection) as plain:
        serving.recommend(session_key="outside", limit=5)
    start("hits", [("a", first, 1), ("b", second, 1)])
    key = shopper_in("a")
    views(key, shelf[:3])

    calls = Counter()
    real = serving._cache()

    class Counting:
        def __getattr__(self, name):
            calls[name] += 1
            return getattr(real, name)

    monkeypatch.setattr(serving, "_cache", Counting)
    monkeypatch.setattr(experiments, "_cache", Counting)
    serving.recommend(session_key=key, placement="home", limit=5)
    # First exposure: the arm's key was read with the list (absent), not once more.
    assert calls["get_many"] == 1 and calls["get"] == 0
    calls.clear()
    with CaptureQueriesContext(connection) as in_experiment:
        hit = serving.recommend(session_key=key, placement="home", limit=5)
    assert hit.version_id == first.pk
    # The arm comes with the list in the one get_many, and no query looks it up (both
    # counts include the snapshot's query, made at every request with VERSION_CHECK_SECONDS 0).
    assert dict(calls) == {"get_many": 1}
    assert len(in_experiment.captured_queries) == len(plain.captured_queries)
    assert not any(
        Assignment._meta.db_table in query["sql"] for query in in_experiment.captured_queries
    )


# --------------------------------------------------------------------------- what carries the arm


def test_the_api_and_the_carousel_carry_the_arm(client, shelf, versions):
    first, second, _ = versions
    experiment = start("shown", [("a", first, 1), ("b", second, 1)])
    key = shopper_in("a")
    views(key, shelf[:3])
    session = client.session
    session[shoppers.SESSION_FIELD] = key
    session.save()
    body = client.get("/api/recommender/recommendations/?placement=home").json()
    assert (body["arm_id"], body["model_version"]) == (arm_id(experiment, "a"), first.pk)
    similar = client.get(f"/api/recommender/items/{shelf[0].pk}/similar/?placement=home").json()
    assert (similar["arm_id"], similar["model_version"]) == (arm_id(experiment, "a"), first.pk)
    assert client.get("/api/recommender/recommendations/?placement=cart").json()["arm_id"] is None
    schema = client.get("/api/recommender/schema/?format=json").json()
    field = schema["components"]["schemas"]["RecommendationList"]["properties"]["arm_id"]
    assert field["type"] == "integer" and field["nullable"] is True

    request = RequestFactory().get("/")
    request.session = {shoppers.SESSION_FIELD: key}
    request.user = AnonymousUser()
    html = Template(
        "{% load recommender_tags %}"
        '{% similar_products item placement="home" as products %}'
        "{% product_carousel products %}"
    ).render(Context({"request": request, "item": shelf[0]}))
    assert f'data-rec-arm="{arm_id(experiment, "a")}"' in html
    assert f'data-rec-version="{first.pk}"' in html


# --------------------------------------------------------------------------- forgetting


def test_forgetting_a_shopper_deletes_their_assignments_and_cached_arms(shelf, versions):
    first, second, _ = versions
    experiment = start("forget", [("a", first, 1), ("b", second, 1)])
    user = get_user_model().objects.create_user("dee")
    views("dees-phone", shelf[:2])
    serving.recommend(session_key="dees-phone", placement="home")
    serving.recommend(user=user, placement="home")
    serving.recommend(session_key="someone-else", placement="home")
    keys = [
        cachekeys.assignment(experiment.pk, None, "dees-phone"),
        cachekeys.assignment(experiment.pk, user, ""),
    ]
    assert all(serving._cache().get(key) is not None for key in keys)
    assert privacy.preview_forget(session_key="dees-phone").assignments == 1

    result = privacy.forget_shopper(session_key="dees-phone")
    forgotten_user = privacy.forget_shopper(user=user)

    assert result.assignments == 1 and "1 experiment assignment(s)" in result.describe()
    assert forgotten_user.assignments == 1
    assert list(Assignment.objects.values_list("session_key", flat=True)) == ["someone-else"]
    assert all(serving._cache().get(key) is None for key in keys)
