"""Who may do what: every API endpoint and recommender admin page, for every role.

The matrix is checked against the URL resolver: a new endpoint or admin page under
/api/recommender/ or /admin/recommender/ without a row here fails the test. Writes are
checked by their effect, not only their status: a refused retrain queued nothing, a
refused activation activated nothing, a refused "forget" deleted nothing.

Roles:
  anonymous   no login
  shopper_a   a customer (plain user); the shopper whose data the pages are about
  shopper_b   another customer
  clerk       is_staff, no recommender permission (say, a catalogue editor)
  viewer      is_staff + recommender.view_event, view_modelversion, view_experiment (an analyst)
  operator    viewer + add_modelversion (retrain), change_modelversion (activate / roll back),
              delete_event (forget a shopper, delete events), add_/change_experiment and
              the arms' permissions (drafts experiments, but has no run_experiment)
  superuser   (the only role here that may start, stop and promote experiments)

Also here: CSRF on session-authenticated writes, throttling (429 + Retry-After, no escape
by dropping cookies or forging X-Forwarded-For), request size limits, and escaping of
everything the template tags and the admin pages render.
"""

import json
import re
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import transaction
from django.template import Context, Template
from django.test import Client, RequestFactory, override_settings
from django.urls import URLResolver, get_resolver
from django.utils import timezone
from django.utils.html import escape

from recommender import events, experiment_lifecycle, serving
from recommender.models import Arm, Event, Experiment, ModelVersion, Recommendation
from shop_demo.catalog.models import Category, Product

from .own_cache import own_cache
from .serving_fixtures import install_version

pytestmark = pytest.mark.django_db

ROLES = ("anonymous", "shopper_a", "shopper_b", "clerk", "viewer", "operator", "superuser")
PERMISSIONS = {
    "clerk": [],
    "viewer": ["view_event", "view_modelversion", "view_experiment", "view_arm"],
    "operator": [
        "view_event",
        "delete_event",
        "view_modelversion",
        "add_modelversion",
        "change_modelversion",
        "view_experiment",
        "add_experiment",
        "change_experiment",
        "view_arm",
        "add_arm",
        "change_arm",
        "delete_arm",
    ],
}
STAFF = ("clerk", "viewer", "operator", "superuser")
LOGIN = "login"  # 302 to the admin's login page
APP_INDEX = "admin/<app_label=recommender>/"


@pytest.fixture(autouse=True)
def fresh_process_state():
    """The per-process active model must not outlive the test whose version it loaded."""
    serving.active_model.reset()
    yield
    serving.active_model.reset()


@pytest.fixture
def private_cache():
    """Throttle counters other test processes' cache flushes cannot reset (see own_cache)."""
    with own_cache() as cache:
        yield cache


def recommender(**overrides):
    return override_settings(RECOMMENDER={**settings.RECOMMENDER, **overrides})


def everyone(code):
    return dict.fromkeys(ROLES, code)


def admin(clerk, viewer, operator, superuser=None):
    """Non-staff are sent to the admin login; staff get these answers."""
    return {
        "anonymous": LOGIN,
        "shopper_a": LOGIN,
        "shopper_b": LOGIN,
        "clerk": clerk,
        "viewer": viewer,
        "operator": operator,
        "superuser": operator if superuser is None else superuser,
    }


@dataclass
class Check:
    """One method on one URL: the answer each role gets, and for writes, who may cause the effect."""

    expected: dict
    data: object = None
    done: object = None  # (ctx) -> bool: did the write happen?
    allowed: tuple = ()


@dataclass
class Row:
    path: object  # str with {placeholders} filled from the context
    methods: dict = field(default_factory=dict)


def forget_form(ctx):
    a = ctx["users"]["shopper_a"]
    return {"username": a.username, "confirm": f"user {a} (id {a.pk})"}


MATRIX = {
    # ------------------------------------------------------------------ API
    "api/recommender/events/": Row(
        "/api/recommender/events/",
        {
            "post": Check(
                everyone(201), data=lambda ctx: {"kind": "view", "item": ctx["product"].pk}
            ),
            "get": Check(everyone(405)),
        },
    ),
    "api/recommender/impressions/": Row(
        "/api/recommender/impressions/",
        {
            "post": Check(
                everyone(200), data=lambda ctx: {"recommendations": [str(ctx["list"].pk)]}
            ),
            "get": Check(everyone(405)),
        },
    ),
    "api/recommender/recommendations/": Row(
        "/api/recommender/recommendations/",
        {
            "get": Check(everyone(200)),
            "post": Check(everyone(405), data={}),
        },
    ),
    "api/recommender/users/<int:user_id>/recommendations/": Row(
        "/api/recommender/users/{a}/recommendations/",
        {
            "get": Check({**everyone(403), "viewer": 200, "operator": 200, "superuser": 200}),
            "post": Check(
                {**everyone(403), "viewer": 405, "operator": 405, "superuser": 405}, data={}
            ),
        },
    ),
    "api/recommender/items/<str:item_id>/similar/": Row(
        "/api/recommender/items/{product}/similar/",
        {
            "get": Check(everyone(200)),
            "post": Check(everyone(405), data={}),
        },
    ),
    "api/recommender/items/<str:item_id>/bought-together/": Row(
        "/api/recommender/items/{product}/bought-together/",
        {
            "get": Check(everyone(200)),
            "post": Check(everyone(405), data={}),
        },
    ),
    "api/recommender/popular/": Row(
        "/api/recommender/popular/",
        {
            "get": Check(everyone(200)),
            "post": Check(everyone(405), data={}),
        },
    ),
    "api/recommender/schema/": Row("/api/recommender/schema/", {"get": Check(everyone(200))}),
    "api/recommender/docs/": Row("/api/recommender/docs/", {"get": Check(everyone(200))}),
    "api/recommender/^.*/$": Row("/api/recommender/no/such/thing/", {"get": Check(everyone(404))}),
    # ------------------------------------------------------------------ admin: events
    APP_INDEX: Row(
        "/admin/recommender/", {"get": Check(admin(clerk=404, viewer=200, operator=200))}
    ),
    "admin/recommender/event/": Row(
        "/admin/recommender/event/",
        {
            "get": Check(admin(clerk=403, viewer=200, operator=200)),
            "post": Check(
                admin(clerk=403, viewer=200, operator=302),
                data=lambda ctx: {
                    "action": "delete_selected",
                    "_selected_action": [ctx["event"].pk],
                    "post": "yes",
                },
                done=lambda ctx: not Event.objects.filter(pk=ctx["event"].pk).exists(),
                allowed=("operator", "superuser"),
            ),
        },
    ),
    "admin/recommender/event/add/": Row(
        "/admin/recommender/event/add/",
        {
            "get": Check(admin(clerk=403, viewer=403, operator=403, superuser=403)),
            "post": Check(
                admin(clerk=403, viewer=403, operator=403, superuser=403),
                data=lambda ctx: {"kind": "view", "item": ctx["product"].pk, "session_key": "x"},
                done=lambda ctx: Event.objects.filter(session_key="x").exists(),
            ),
        },
    ),
    "admin/recommender/event/<path:object_id>/history/": Row(
        "/admin/recommender/event/{event}/history/",
        {
            "get": Check(admin(clerk=403, viewer=200, operator=200)),
        },
    ),
    "admin/recommender/event/<path:object_id>/delete/": Row(
        "/admin/recommender/event/{event}/delete/",
        {
            "get": Check(admin(clerk=403, viewer=403, operator=200)),
            "post": Check(
                admin(clerk=403, viewer=403, operator=302),
                data={"post": "yes"},
                done=lambda ctx: not Event.objects.filter(pk=ctx["event"].pk).exists(),
                allowed=("operator", "superuser"),
            ),
        },
    ),
    "admin/recommender/event/<path:object_id>/change/": Row(
        "/admin/recommender/event/{event}/change/",
        {
            "get": Check(admin(clerk=403, viewer=200, operator=200)),
            "post": Check(
                admin(clerk=403, viewer=403, operator=403, superuser=403),
                data=lambda ctx: {"kind": "click", "item": ctx["product"].pk, "session_key": "x"},
                done=lambda ctx: Event.objects.get(pk=ctx["event"].pk).kind == "click",
            ),
        },
    ),
    "admin/recommender/event/<path:object_id>/": Row(
        "/admin/recommender/event/{event}/",
        {
            "get": Check(
                admin(clerk=302, viewer=302, operator=302)
            ),  # to the change page, which checks
        },
    ),
    "admin/recommender/event/dashboard/": Row(
        "/admin/recommender/event/dashboard/",
        {
            "get": Check(admin(clerk=403, viewer=200, operator=200)),
        },
    ),
    "admin/recommender/event/forget/": Row(
        "/admin/recommender/event/forget/",
        {
            "get": Check(admin(clerk=403, viewer=403, operator=200)),
            "post": Check(
                admin(clerk=403, viewer=403, operator=302),
                data=forget_form,
                done=lambda ctx: not Event.objects.filter(user=ctx["users"]["shopper_a"]).exists(),
                allowed=("operator", "superuser"),
            ),
        },
    ),
    # ------------------------------------------------------------------ admin: model versions
    "admin/recommender/modelversion/": Row(
        "/admin/recommender/modelversion/",
        {
            "get": Check(admin(clerk=403, viewer=200, operator=200)),
            "post": Check(
                admin(clerk=403, viewer=200, operator=302),
                data=lambda ctx: {
                    "action": "retrain_action",
                    "_selected_action": [ctx["ready"].pk],
                },
                done=lambda ctx: ModelVersion.objects.filter(status="queued").exists(),
                allowed=("operator", "superuser"),
            ),
        },
    ),
    "admin/recommender/modelversion/add/": Row(
        "/admin/recommender/modelversion/add/",
        {
            "get": Check(admin(clerk=403, viewer=403, operator=403, superuser=403)),
        },
    ),
    "admin/recommender/modelversion/<path:object_id>/history/": Row(
        "/admin/recommender/modelversion/{ready}/history/",
        {
            "get": Check(admin(clerk=403, viewer=200, operator=200)),
        },
    ),
    "admin/recommender/modelversion/<path:object_id>/delete/": Row(
        "/admin/recommender/modelversion/{ready}/delete/",
        {
            "get": Check(admin(clerk=403, viewer=403, operator=403, superuser=200)),
            "post": Check(
                admin(clerk=403, viewer=403, operator=403, superuser=302),
                data={"post": "yes"},
                done=lambda ctx: not ModelVersion.objects.filter(pk=ctx["ready"].pk).exists(),
                allowed=("superuser",),
            ),
        },
    ),
    "admin/recommender/modelversion/<path:object_id>/change/": Row(
        "/admin/recommender/modelversion/{ready}/change/",
        {
            "get": Check(admin(clerk=403, viewer=200, operator=200)),
            # Every field is read-only: those who may change a version post a form that edits nothing.
            "post": Check(
                admin(clerk=403, viewer=403, operator=302),
                data={"status": "failed", "is_active": "on"},
                done=lambda ctx: ModelVersion.objects.get(pk=ctx["ready"].pk).status != "ready",
            ),
        },
    ),
    "admin/recommender/modelversion/<path:object_id>/": Row(
        "/admin/recommender/modelversion/{ready}/",
        {
            "get": Check(admin(clerk=302, viewer=302, operator=302)),
        },
    ),
    "admin/recommender/modelversion/retrain/": Row(
        "/admin/recommender/modelversion/retrain/",
        {
            "get": Check(admin(clerk=405, viewer=405, operator=405)),
            "post": Check(
                admin(clerk=403, viewer=403, operator=302),
                data={},
                done=lambda ctx: ModelVersion.objects.filter(status="queued").exists(),
                allowed=("operator", "superuser"),
            ),
        },
    ),
    "admin/recommender/modelversion/<int:pk>/progress/": Row(
        "/admin/recommender/modelversion/{ready}/progress/",
        {
            "get": Check(admin(clerk=403, viewer=200, operator=200)),
        },
    ),
    "admin/recommender/modelversion/<int:pk>/activate/": Row(
        "/admin/recommender/modelversion/{ready}/activate/",
        {
            "get": Check(admin(clerk=403, viewer=403, operator=200)),
            "post": Check(
                admin(clerk=403, viewer=403, operator=302),
                data={},
                done=lambda ctx: ModelVersion.objects.get(pk=ctx["ready"].pk).is_active,
                allowed=("operator", "superuser"),
            ),
        },
    ),
    # ------------------------------------------------------------------ admin: experiments
    "admin/recommender/experiment/": Row(
        "/admin/recommender/experiment/",
        {
            "get": Check(admin(clerk=403, viewer=200, operator=200)),
            "post": Check(
                admin(clerk=403, viewer=200, operator=200, superuser=302),
                data=lambda ctx: {
                    "action": "delete_selected",
                    "_selected_action": [ctx["draft"].pk],
                    "post": "yes",
                },
                done=lambda ctx: not Experiment.objects.filter(pk=ctx["draft"].pk).exists(),
                allowed=("superuser",),
            ),
        },
    ),
    "admin/recommender/experiment/add/": Row(
        "/admin/recommender/experiment/add/",
        {
            "get": Check(admin(clerk=403, viewer=403, operator=200)),
            "post": Check(
                admin(clerk=403, viewer=403, operator=302),
                data=lambda ctx: experiment_form(ctx, "New test"),
                done=lambda ctx: Experiment.objects.filter(name="New test").exists(),
                allowed=("operator", "superuser"),
            ),
        },
    ),
    "admin/recommender/experiment/<path:object_id>/history/": Row(
        "/admin/recommender/experiment/{draft}/history/",
        {"get": Check(admin(clerk=403, viewer=200, operator=200))},
    ),
    "admin/recommender/experiment/<path:object_id>/delete/": Row(
        "/admin/recommender/experiment/{draft}/delete/",
        {
            "get": Check(admin(clerk=403, viewer=403, operator=403, superuser=200)),
            "post": Check(
                admin(clerk=403, viewer=403, operator=403, superuser=302),
                data={"post": "yes"},
                done=lambda ctx: not Experiment.objects.filter(pk=ctx["draft"].pk).exists(),
                allowed=("superuser",),
            ),
        },
    ),
    "admin/recommender/experiment/<path:object_id>/change/": Row(
        "/admin/recommender/experiment/{draft}/change/",
        {
            "get": Check(admin(clerk=403, viewer=200, operator=200)),
            "post": Check(
                admin(clerk=403, viewer=403, operator=302),
                data=lambda ctx: experiment_form(ctx, "Renamed", draft=ctx["draft"]),
                done=lambda ctx: Experiment.objects.get(pk=ctx["draft"].pk).name == "Renamed",
                allowed=("operator", "superuser"),
            ),
        },
    ),
    "admin/recommender/experiment/<path:object_id>/": Row(
        "/admin/recommender/experiment/{draft}/",
        {"get": Check(admin(clerk=302, viewer=302, operator=302))},
    ),
    "admin/recommender/experiment/<int:pk>/start/": Row(
        "/admin/recommender/experiment/{draft}/start/",
        {
            "get": Check(admin(clerk=405, viewer=405, operator=405)),
            "post": Check(
                admin(clerk=403, viewer=403, operator=403, superuser=302),
                data={},
                done=lambda ctx: Experiment.objects.get(pk=ctx["draft"].pk).status == "running",
                allowed=("superuser",),
            ),
        },
    ),
    "admin/recommender/experiment/<int:pk>/stop/": Row(
        "/admin/recommender/experiment/{running}/stop/",
        {
            "get": Check(admin(clerk=405, viewer=405, operator=405)),
            "post": Check(
                admin(clerk=403, viewer=403, operator=403, superuser=302),
                data={},
                done=lambda ctx: Experiment.objects.get(pk=ctx["running"].pk).status == "stopped",
                allowed=("superuser",),
            ),
        },
    ),
    "admin/recommender/experiment/<int:pk>/promote/<int:arm_pk>/": Row(
        "/admin/recommender/experiment/{running}/promote/{popular_arm}/",
        {
            "get": Check(admin(clerk=403, viewer=403, operator=403, superuser=200)),
            "post": Check(
                admin(clerk=403, viewer=403, operator=403, superuser=302),
                data={},
                done=lambda ctx: not ModelVersion.objects.filter(is_active=True).exists(),
                allowed=("superuser",),
            ),
        },
    ),
}


def experiment_form(ctx, name, draft=None):
    """The admin form of a draft experiment: two arms, new ones or ``draft``'s own."""
    arms = list(draft.arms.all()) if draft else []
    data = {
        "name": name,
        "placements": ["home"],
        "primary_metric": "purchases_per_shopper",
        "attribution_hours": "24",
        "confidence": "0.95",
        "arms-TOTAL_FORMS": "2",
        "arms-INITIAL_FORMS": str(len(arms)),
        "arms-MIN_NUM_FORMS": "2",
        "arms-MAX_NUM_FORMS": "1000",
    }
    for index, (arm_name, ranker, version) in enumerate(
        [("A", "version", ctx["active"].pk), ("Popular", "popularity", "")]
    ):
        data |= {
            f"arms-{index}-name": arm_name,
            f"arms-{index}-ranker": ranker,
            f"arms-{index}-version": version,
            f"arms-{index}-share": "50",
        }
        if arms:
            data |= {f"arms-{index}-id": arms[index].pk, f"arms-{index}-experiment": draft.pk}
    return data


def recommender_routes():
    """Every URL pattern under /api/recommender/ and /admin/recommender/, as its route."""

    def walk(patterns, prefix=""):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns, prefix + str(pattern.pattern))
            else:
                yield prefix + str(pattern.pattern), pattern

    routes = set()
    for route, pattern in walk(get_resolver().url_patterns):
        if route.startswith(("api/recommender/", "admin/recommender/")):
            routes.add(route)
        elif pattern.name == "app_list" and "recommender" in route:
            routes.add(APP_INDEX)
    return routes


def test_every_endpoint_and_admin_page_has_a_row_in_the_matrix():
    routes = recommender_routes()
    assert routes - set(MATRIX) == set(), "URL patterns without a row in the permission matrix"
    assert set(MATRIX) - routes == set(), "rows of the matrix for URLs that no longer exist"


@pytest.fixture
def world(catalog):
    """Users of every role, shopper A's and B's events, a serving and a ready version, a list."""
    User = get_user_model()
    users = {"anonymous": None}
    users["shopper_a"] = User.objects.create_user("shopper_a", "a@example.com", "pw")
    users["shopper_b"] = User.objects.create_user("shopper_b", "b@example.com", "pw")
    for role, codenames in PERMISSIONS.items():
        user = User.objects.create_user(role, f"{role}@example.com", "pw", is_staff=True)
        user.user_permissions.set(
            Permission.objects.filter(content_type__app_label="recommender", codename__in=codenames)
        )
        users[role] = user
    users["superuser"] = User.objects.create_superuser("root", "root@example.com", "pw")
    events.record_many(
        [{"kind": "purchase", "item": p.pk} for p in catalog[:3]], user=users["shopper_a"]
    )
    events.record_many(
        [{"kind": "view", "item": p.pk} for p in catalog[3:5]], user=users["shopper_b"]
    )
    active = install_version(catalog)  # the active version
    ready = ModelVersion.objects.create(
        status="ready", model_name="cnn_dnn", metrics={"valid": {"ndcg@10": 0.2}}
    )
    experiments = {}
    for status, placements in (("draft", ["home"]), ("running", ["cart"])):
        experiment = Experiment.objects.create(name=f"{status} test", placements=placements)
        Arm.objects.create(experiment=experiment, name="A", version=active)
        Arm.objects.create(experiment=experiment, name="Popular", ranker="popularity")
        if status == "running":
            experiment_lifecycle.start(experiment)
        experiments[status] = experiment
    clients = {}
    for role, user in users.items():
        clients[role] = Client()
        if user is not None:
            clients[role].force_login(user)
    return {
        "users": users,
        "clients": clients,
        "product": catalog[0],
        "event": Event.objects.filter(user=users["shopper_a"]).first(),
        "ready": ready,
        "active": active,
        "list": Recommendation.objects.create(source="popular", items=[catalog[0].pk]),
        "draft": experiments["draft"],
        "running": experiments["running"],
        "popular_arm": experiments["running"].arms.get(name="Popular"),
    }


def fill(path, ctx):
    return path.format(
        a=ctx["users"]["shopper_a"].pk,
        product=ctx["product"].pk,
        event=ctx["event"].pk,
        ready=ctx["ready"].pk,
        draft=ctx["draft"].pk,
        running=ctx["running"].pk,
        popular_arm=ctx["popular_arm"].pk,
    )


def call(client, method, path, check, ctx):
    data = check.data(ctx) if callable(check.data) else check.data
    if method == "get":
        return client.get(path)
    if path.startswith("/api/"):
        return client.post(path, json.dumps(data), content_type="application/json")
    return client.post(path, data or {})


def outcome(response):
    if response.status_code == 302 and response["Location"].startswith("/admin/login/"):
        return LOGIN
    return response.status_code


@recommender(API_THROTTLE_RATE=None, EVENTS_THROTTLE_RATE=None)
def test_permission_matrix(world):
    """Every role on every row, each cell rolled back, so no cell sees another's writes."""
    mismatches = []
    for route, row in MATRIX.items():
        path = fill(row.path, world)
        for method, check in row.methods.items():
            for role in ROLES:
                with transaction.atomic():
                    response = call(world["clients"][role], method, path, check, world)
                    got = outcome(response)
                    if got != check.expected[role]:
                        mismatches.append(
                            f"{method.upper()} {route} as {role}: {got}, expected {check.expected[role]}"
                        )
                    if check.done is not None and check.done(world) != (role in check.allowed):
                        mismatches.append(
                            f"{method.upper()} {route} as {role}: the write "
                            f"{'happened' if check.done(world) else 'did not happen'}"
                        )
                    if route == "api/recommender/events/" and method == "post":
                        latest = Event.objects.order_by("-id").first()
                        if latest.user != world["users"][role]:
                            mismatches.append(
                                f"an event posted by {role} was recorded for {latest.user}"
                            )
                    transaction.set_rollback(True)
    assert not mismatches, "\n".join(mismatches)


# --------------------------------------------------------------------------- one shopper, one history


@recommender(API_THROTTLE_RATE=None, EVENTS_THROTTLE_RATE=None)
def test_a_shopper_reads_only_their_own_recommendations(world):
    a, b = world["clients"]["shopper_a"], world["clients"]["shopper_b"]
    mine = a.get("/api/recommender/recommendations/").json()
    theirs = b.get("/api/recommender/recommendations/").json()
    a_items = set(
        Event.objects.filter(user=world["users"]["shopper_a"]).values_list("item", flat=True)
    )
    b_items = set(
        Event.objects.filter(user=world["users"]["shopper_b"]).values_list("item", flat=True)
    )
    # Each list is computed from its own shopper's history: what they saw or bought is left out.
    assert mine["source"] == theirs["source"] == "model"
    assert (
        not {i["id"] for i in mine["items"]} & a_items
        and not {i["id"] for i in theirs["items"]} & b_items
    )
    assert mine == a.get("/api/recommender/recommendations/").json()  # cached per shopper...
    assert mine["recommendation_id"] != theirs["recommendation_id"]  # ...never shared between them
    a_pk = world["users"]["shopper_a"].pk
    for query in (f"user={a_pk}", f"user_id={a_pk}", "session_key=x", f"shopper={a_pk}"):
        response = b.get(f"/api/recommender/recommendations/?{query}")
        assert response.status_code == 400 and "Unknown parameter" in response.json()["detail"]
    assert b.get(f"/api/recommender/users/{a_pk}/recommendations/").status_code == 403


@recommender(API_THROTTLE_RATE=None, EVENTS_THROTTLE_RATE=None)
def test_a_shopper_cannot_record_events_as_someone_else(world):
    a, b = world["users"]["shopper_a"], world["users"]["shopper_b"]
    client = world["clients"]["shopper_b"]
    before = Event.objects.filter(user=a).count()
    for name in ("user", "user_id", "session_key", "shopper"):
        response = client.post(
            "/api/recommender/events/",
            json.dumps({"kind": "view", "item": world["product"].pk, name: a.pk}),
            content_type="application/json",
        )
        assert (
            response.status_code == 400
            and "unknown field" in response.json()["errors"]["0"]["event"]
        )
    # Extra keys of the envelope are not read at all: the event is B's.
    response = client.post(
        "/api/recommender/events/",
        json.dumps(
            {
                "events": [{"kind": "view", "item": world["product"].pk}],
                "user": a.pk,
                "user_id": a.pk,
            }
        ),
        content_type="application/json",
    )
    assert response.status_code == 201
    assert Event.objects.order_by("-id").first().user == b
    assert Event.objects.filter(user=a).count() == before


# --------------------------------------------------------------------------- CSRF


def browser(user=None):
    """A client that enforces CSRF like a browser, logged in as ``user``, holding a token."""
    client = Client(enforce_csrf_checks=True)
    if user is not None:
        client.force_login(user)
    client.get("/accounts/login/")  # a page with a form sets the CSRF cookie
    return client, client.cookies["csrftoken"].value


@recommender(API_THROTTLE_RATE=None, EVENTS_THROTTLE_RATE=None)
@pytest.mark.parametrize("role", ["anonymous", "shopper_a", "superuser"])
def test_session_writes_need_the_csrf_token(world, role):
    user = world["users"][role]
    client, token = browser(user)
    _, other_token = browser(user)  # a token of another browser's cookie
    writes = [
        (
            "/api/recommender/events/",
            {"kind": "view", "item": world["product"].pk},
            201,
            lambda: Event.objects.filter(user=user, item=world["product"], kind="view").count(),
        ),
        (
            "/api/recommender/impressions/",
            {"recommendations": [str(world["list"].pk)]},
            200,
            lambda: Recommendation.objects.get(pk=world["list"].pk).impressions,
        ),
    ]
    for url, payload, ok, count in writes:
        before = count()
        for headers in ({}, {"HTTP_X_CSRFTOKEN": "x" * 32}, {"HTTP_X_CSRFTOKEN": other_token}):
            response = client.post(
                url, json.dumps(payload), content_type="application/json", **headers
            )
            assert response.status_code == 403 and "CSRF" in response.json()["detail"], (
                url,
                headers,
            )
        response = client.post(
            url, json.dumps({**payload, "csrf_token": "y" * 32}), content_type="application/json"
        )
        assert response.status_code in (403, 400)
        assert count() == before, f"{url}: a refused write was written"
        assert (
            client.post(
                url, json.dumps(payload), content_type="application/json", HTTP_X_CSRFTOKEN=token
            ).status_code
            == ok
        )
        assert count() == before + 1


def test_admin_posts_need_the_csrf_token(world, django_capture_on_commit_callbacks):
    client, token = browser(world["users"]["superuser"])
    ready, event = world["ready"], world["event"]
    posts = [
        (
            "/admin/recommender/modelversion/retrain/",
            {},
            lambda: ModelVersion.objects.filter(status="queued").exists(),
        ),
        (
            f"/admin/recommender/modelversion/{ready.pk}/activate/",
            {},
            lambda: ModelVersion.objects.get(pk=ready.pk).is_active,
        ),
        (
            "/admin/recommender/event/forget/",
            forget_form(world),
            lambda: not Event.objects.filter(user=world["users"]["shopper_a"]).exists(),
        ),
        (
            f"/admin/recommender/event/{event.pk}/delete/",
            {"post": "yes"},
            lambda: not Event.objects.filter(pk=event.pk).exists(),
        ),
        (
            "/admin/recommender/modelversion/",
            {"action": "retrain_action", "_selected_action": [ready.pk]},
            lambda: ModelVersion.objects.filter(status="queued").exists(),
        ),
    ]
    for url, data, done in posts:
        with transaction.atomic():
            response = client.post(url, data)
            assert response.status_code == 403 and b"CSRF" in response.content, url
            assert not done(), f"{url} acted without the CSRF token"
            response = client.post(url, {**data, "csrfmiddlewaretoken": token})
            assert response.status_code == 302 and done(), url
            transaction.set_rollback(True)


# --------------------------------------------------------------------------- throttling


@pytest.mark.redis
@recommender(EVENTS_THROTTLE_RATE="3/min")
def test_event_bursts_get_429_with_retry_after(world, private_cache):
    client, token = browser(world["users"]["shopper_a"])
    answers = [
        client.post(
            "/api/recommender/events/",
            json.dumps({"kind": "view", "item": world["product"].pk}),
            content_type="application/json",
            HTTP_X_CSRFTOKEN=token,
        )
        for _ in range(5)
    ]
    assert [r.status_code for r in answers] == [201, 201, 201, 429, 429]
    assert (
        1 <= int(answers[-1]["Retry-After"]) <= 61 and "throttled" in answers[-1].json()["detail"]
    )
    assert Event.objects.filter(user=world["users"]["shopper_a"], kind="view").count() == 3
    # The same user in another browser shares the allowance.
    other, other_token = browser(world["users"]["shopper_a"])
    assert (
        other.post(
            "/api/recommender/events/",
            json.dumps({"kind": "view", "item": world["product"].pk}),
            content_type="application/json",
            HTTP_X_CSRFTOKEN=other_token,
        ).status_code
        == 429
    )


@pytest.mark.redis
@recommender(API_THROTTLE_RATE="2/min")
@pytest.mark.parametrize(
    "path",
    [
        "/api/recommender/popular/",
        "/api/recommender/recommendations/",
        "/api/recommender/items/{product}/similar/",
        "/api/recommender/schema/",
    ],
)
def test_read_bursts_get_429_with_retry_after(world, path, private_cache):
    client = Client()
    path = fill(path, world)
    answers = [client.get(path) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]
    assert 1 <= int(answers[-1]["Retry-After"]) <= 61


@pytest.mark.redis
@recommender(EVENTS_THROTTLE_RATE="3/min", API_THROTTLE_RATE="3/min")
def test_dropping_cookies_or_forging_forwarded_for_does_not_escape_the_throttle(
    world, private_cache
):
    """A script that keeps no session (and so would get a fresh anonymous key every time),
    and names a new X-Forwarded-For address on every request, is still counted as one client."""
    token = "t" * 32  # a client may set its own CSRF cookie; the double submit still matches
    codes = []
    for n in range(5):
        client = Client(enforce_csrf_checks=True)
        client.cookies["csrftoken"] = token
        response = client.post(
            "/api/recommender/events/",
            json.dumps({"kind": "view", "item": world["product"].pk}),
            content_type="application/json",
            HTTP_X_CSRFTOKEN=token,
            HTTP_X_FORWARDED_FOR=f"203.0.113.{n}",
        )
        codes.append(response.status_code)
    assert codes == [201, 201, 201, 429, 429]
    reads = [
        Client()
        .get("/api/recommender/popular/", HTTP_X_FORWARDED_FOR=f"198.51.100.{n}")
        .status_code
        for n in range(5)
    ]
    assert reads == [200, 200, 200, 429, 429]


def test_read_endpoints_do_not_open_sessions_for_cookieless_clients(world):
    response = Client().get("/api/recommender/popular/")
    assert response.status_code == 200 and settings.SESSION_COOKIE_NAME not in response.cookies


# --------------------------------------------------------------------------- size limits


def test_the_write_endpoints_refuse_oversized_bodies(world):
    client, token = browser(world["users"]["shopper_a"])
    huge = {"events": [{"kind": "view", "item": world["product"].pk}], "pad": "x" * 300_000}
    for url in ("/api/recommender/events/", "/api/recommender/impressions/"):
        response = client.post(
            url, json.dumps(huge), content_type="application/json", HTTP_X_CSRFTOKEN=token
        )
        assert response.status_code == 400 and "too large" in response.json()["detail"], url
    # A lying Content-Length does not let more through: the body is read only up to the limit.
    response = client.post(
        "/api/recommender/events/",
        json.dumps(huge),
        content_type="application/json",
        HTTP_X_CSRFTOKEN=token,
        CONTENT_LENGTH="10",
    )
    assert response.status_code == 400
    assert not Event.objects.filter(kind="view", user=world["users"]["shopper_a"]).exists()


def test_admin_forms_refuse_bodies_over_the_upload_limits(world):
    client = world["clients"]["superuser"]
    form = {**forget_form(world), "pad": "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)}
    assert client.post("/admin/recommender/event/forget/", form).status_code == 400
    assert Event.objects.filter(user=world["users"]["shopper_a"]).exists()
    many = {
        "action": "delete_selected",
        "post": "yes",
        "_selected_action": [world["event"].pk] * (settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1),
    }
    assert client.post("/admin/recommender/event/", many).status_code == 400
    assert Event.objects.filter(pk=world["event"].pk).exists()


# --------------------------------------------------------------------------- escaping

XSS = '<script>alert("x")</script>'
ATTR = '"><img src=x onerror=alert(1)>'


def assert_escaped(html, *payloads):
    for payload in payloads:
        assert payload not in html, f"{payload!r} rendered raw"
        assert escape(payload) in html, f"{payload!r} not rendered at all"


@pytest.fixture
def evil_shelf():
    category = Category.objects.create(name=XSS, slug="evil")
    products = [
        Product.objects.create(
            category=category, name=f"P{i}", slug=f"p{i}", price=Decimal(1), stock=3
        )
        for i in range(10)
    ]
    products += [
        Product.objects.create(
            category=category, name=name, slug=f"evil{i}", price=Decimal(1), stock=3
        )
        for i, name in enumerate((XSS, ATTR))
    ]
    install_version(products)
    return products


def render(source, **context):
    from django.contrib.auth.models import AnonymousUser

    request = RequestFactory().get("/")
    request.session = {"recommender_shopper": "s1"}
    request.user = AnonymousUser()
    return Template("{% load recommender_tags %}" + source).render(
        Context({"request": request, **context})
    )


APP_TEMPLATES_ONLY = override_settings(TEMPLATES=[{**settings.TEMPLATES[0], "DIRS": []}])


@pytest.mark.parametrize("templates", ["the store's item template", "the app's own item template"])
# A store may name its placements anything (they are attributes of the carousel).
@override_settings(RECOMMENDER={**settings.RECOMMENDER, "PLACEMENT_NAMES": [ATTR]})
def test_every_template_tag_escapes_what_it_renders(evil_shelf, templates):
    evil = evil_shelf[-2:]
    events.record("view", evil_shelf[3], session_key="s1")  # the shopper rendering the page
    for buyer in ("s2", "s3"):  # bought together by two users, so the pair may be shown
        events.record_many(
            [{"kind": "purchase", "item": p.pk} for p in [evil_shelf[0], *evil]],
            user=get_user_model().objects.create_user(buyer),
        )
    tags = {
        "recommended_products": "{% recommended_products limit=20 placement=placement as items %}",
        "similar_products": "{% similar_products product limit=20 placement=placement as items %}",
        "bought_together": "{% bought_together anchor limit=20 placement=placement as items %}",
        "popular_products": "{% popular_products limit=20 placement=placement as items %}",
        "a plain list": "{% with items=evil %}{% endwith %}",
    }
    with APP_TEMPLATES_ONLY if templates == "the app's own item template" else override_settings():
        for name, tag in tags.items():
            source = tag + "{% product_carousel items title=title placement=placement %}"
            if name == "a plain list":
                source = "{% product_carousel evil title=title placement=placement %}"
            html = render(
                source,
                product=evil_shelf[2],
                anchor=evil_shelf[0],
                evil=evil,
                title=XSS,
                placement=ATTR,
            )
            shown = [p for p in evil if f'data-rec-item="{p.pk}"' in html]
            assert shown, f"{name}: the evil products were not in the carousel"
            assert_escaped(html, XSS, ATTR, *(p.name for p in shown))  # title, placement, names
            assert "<script>alert" not in html and "<img src=x" not in html, name
        tracker = render("{% recommender_tracker flush_ms='1500' %}")
        assert re.fullmatch(
            r'<script src="[^"<>]+" data-endpoint="/api/recommender/events/" '
            r'data-impressions-endpoint="/api/recommender/impressions/" data-csrf-token="\w+" '
            r'data-flush-ms="1500" defer></script>',
            tracker.strip(),
        ), tracker


def test_admin_pages_escape_names_kinds_placements_and_run_details(world, evil_shelf):
    """Product names, event kinds and placements come from the store and its shoppers; run
    details from training. Every admin page that shows them renders them as text."""
    client = world["clients"]["superuser"]
    evil = evil_shelf[-2]  # named XSS
    now = timezone.now()
    for kind in ("view", "purchase"):
        events.record(kind, evil, session_key="s1", placement=ATTR[:60])
    # A kind the write path would refuse today (an import, or one the store used to allow).
    Event.objects.create(item=evil, kind=XSS[:32], session_key="s2", occurred_at=now)
    Event.objects.create(item=evil, kind="view", session_key="s3", placement=XSS, occurred_at=now)
    version = ModelVersion.objects.create(
        status="ready",
        model_name=XSS[:32],
        decision=XSS,
        error=XSS,
        metrics={
            "valid": {"ndcg@10": 0.1, "hr@10": 0.2},
            "baselines": {XSS: {"valid": {"ndcg@10": 0.05}}},
        },
        curve=[{"epoch": 1, "loss": 2.0, "val_ndcg10": 0.1, "val_hr10": 0.2}],
        data_stats={"shoppers": 3},
    )
    Recommendation.objects.create(source="model", version=version, placement=XSS, items=[evil.pk])
    pages = {
        "/admin/recommender/event/dashboard/": [XSS[:32], XSS],  # top items, chart legend, totals
        "/admin/recommender/event/": [
            XSS,
            XSS[:32],
        ],  # item column, kind filter and column, placement
        f"/admin/recommender/event/{Event.objects.get(kind=XSS[:32]).pk}/change/": [XSS, XSS[:32]],
        "/admin/recommender/modelversion/": [XSS[:32]],
        f"/admin/recommender/modelversion/{version.pk}/change/": [
            XSS,
            XSS[:32],
        ],  # decision, error, charts, tables
        f"/admin/recommender/modelversion/{version.pk}/activate/": [XSS],  # the comparison table
    }
    html = {}
    for url, payloads in pages.items():
        response = client.get(url)
        assert response.status_code == 200, url
        html[url] = response.content.decode()
        for payload in payloads:
            assert payload not in html[url], f"{url} renders {payload!r} raw"
            assert escape(payload) in html[url], f"{url} does not show {payload!r}"
    # The charts' own SVG text: legend entries and per-point tooltips.
    legend = re.compile(
        r"<text [^>]*>" + re.escape(escape(XSS)) + r"( baseline| trained, not chosen)?</text>"
    )
    tooltip = re.compile(
        r"<title>" + re.escape(escape(XSS)) + r"( baseline| trained, not chosen)?, "
    )
    for url in (
        "/admin/recommender/event/dashboard/",
        f"/admin/recommender/modelversion/{version.pk}/change/",
    ):
        assert legend.search(html[url]) and tooltip.search(html[url]), (
            f"{url}: the chart does not name the series"
        )


def test_the_forget_page_escapes_the_shopper_it_names(world):
    User = get_user_model()
    victim = User.objects.create_user(XSS[:150])
    events.record("view", world["product"], user=victim)
    client = world["clients"]["superuser"]
    preview = client.post(
        "/admin/recommender/event/forget/", {"username": victim.username}
    ).content.decode()
    assert_escaped(preview, XSS)
    done = client.post(
        "/admin/recommender/event/forget/",
        {"username": victim.username, "confirm": f"user {victim} (id {victim.pk})"},
        follow=True,
    )
    assert_escaped(done.content.decode(), XSS)
    assert not Event.objects.filter(user=victim).exists()
