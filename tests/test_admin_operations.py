"""Operating the recommender from the admin: retrain, watch, compare, activate, dashboards."""

import os
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.contrib.staticfiles import finders
from django.test import override_settings
from django.utils import timezone

from recommender.models import Event, ModelVersion, Recommendation

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/recommender/modelversion/"
RETRAIN = "/admin/recommender/modelversion/retrain/"


@pytest.fixture
def staff_client(client):
    client.force_login(get_user_model().objects.create_superuser("boss", "boss@example.com", "pw"))
    return client


def staff_with(client, *codenames):
    """Log in a fresh staff user holding only these recommender permissions."""
    user = get_user_model().objects.create_user(
        f"clerk{get_user_model().objects.count()}", is_staff=True
    )
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="recommender", codename__in=codenames)
    )
    client.force_login(user)
    return client


def messages_of(response):
    return [str(m) for m in get_messages(response.wsgi_request)]


@pytest.fixture
def training_queue():
    """A Celery queue of this test's own on the real Redis broker, emptied afterwards."""
    name = f"recommender-admin-test-{os.getpid()}"
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete(name)
    with override_settings(RECOMMENDER={**settings.RECOMMENDER, "TRAINING_QUEUE": name}):
        yield broker, name
    broker.delete(name)


# --------------------------------------------------------------------------- retrain


@pytest.mark.redis
def test_retrain_button_queues_a_run_and_a_second_press_is_refused(
    staff_client, training_queue, django_capture_on_commit_callbacks
):
    broker, queue = training_queue
    page = staff_client.get(CHANGELIST)
    assert b'id="recommender-retrain"' in page.content and b"Retrain now" in page.content
    assert b'id="recommender-retrain" class="rec-tool-button" disabled' not in page.content

    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(RETRAIN)
    version = ModelVersion.objects.get()
    assert response.status_code == 302 and response.url == f"{CHANGELIST}{version.pk}/change/"
    assert version.status == "queued" and version.trigger == "admin"
    # The task really went to the broker: one message on the training queue, its id on the row.
    assert version.task_id and broker.llen(queue) == 1
    assert any(f"Queued training v{version.pk}" in m for m in messages_of(response))

    page = staff_client.get(CHANGELIST)
    assert b'id="recommender-retrain" class="rec-tool-button" disabled' in page.content
    assert f'data-progress-url="{CHANGELIST}{version.pk}/progress/"'.encode() in page.content
    assert f"Training v{version.pk} queued".encode() in page.content

    with django_capture_on_commit_callbacks(execute=True):
        again = staff_client.post(RETRAIN, follow=True)
    assert ModelVersion.objects.count() == 1 and broker.llen(queue) == 1
    assert any("already queued" in m for m in messages_of(again))


@pytest.mark.redis
def test_retrain_action_queues_a_run(
    staff_client, training_queue, django_capture_on_commit_callbacks
):
    broker, queue = training_queue
    old = ModelVersion.objects.create(status="ready")
    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post(CHANGELIST, {"action": "retrain_action", "_selected_action": [old.pk]})
    assert ModelVersion.objects.filter(status="queued", trigger="admin").count() == 1
    assert broker.llen(queue) == 1


def test_retrain_is_post_only_and_needs_the_add_permission(client):
    anonymous = client.post(RETRAIN)
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous.url
    client.force_login(get_user_model().objects.create_user("shopper"))
    assert client.post(RETRAIN).status_code == 302  # not staff: back to the admin login
    staff = staff_with(client, "view_modelversion")
    assert staff.post(RETRAIN).status_code == 403
    assert b'id="recommender-retrain"' not in staff.get(CHANGELIST).content
    assert ModelVersion.objects.count() == 0
    assert (
        staff_with(client, "add_modelversion", "view_modelversion").get(RETRAIN).status_code == 405
    )


# --------------------------------------------------------------------------- progress


def test_progress_json_returns_the_rows_live_progress(staff_client):
    progress = {
        "stage": "train",
        "epoch": 3,
        "epochs": 12,
        "loss": 4.2,
        "val_ndcg10": 0.0812,
        "val_hr10": 0.15,
        "elapsed": 12.5,
        "eta": 37.0,
    }
    version = ModelVersion.objects.create(status="running", progress=progress)
    data = staff_client.get(f"{CHANGELIST}{version.pk}/progress/").json()
    assert data["status"] == "running" and not data["finished"]
    assert data["progress"] == progress
    assert data["percent"] == 30  # epochs fill the 10-90% band: 10 + 80 * 3/12

    ModelVersion.objects.filter(pk=version.pk).update(status="failed", error="ValueError: boom")
    data = staff_client.get(f"{CHANGELIST}{version.pk}/progress/").json()
    assert data["finished"] and data["error"] == "ValueError: boom"
    assert staff_client.get(f"{CHANGELIST}999999/progress/").status_code == 404


def test_progress_json_is_staff_only(client):
    version = ModelVersion.objects.create(status="running")
    url = f"{CHANGELIST}{version.pk}/progress/"
    assert client.get(url).status_code == 302
    assert staff_with(client).get(url).status_code == 403


def test_a_running_versions_page_polls_its_progress(staff_client):
    version = ModelVersion.objects.create(
        status="running",
        progress={"stage": "train", "epoch": 2, "epochs": 8, "loss": 5.5, "val_ndcg10": 0.05},
    )
    page = staff_client.get(f"{CHANGELIST}{version.pk}/change/").content.decode()
    assert 'id="recommender-progress"' in page
    assert f'data-progress-url="{CHANGELIST}{version.pk}/progress/"' in page
    assert "recommender/admin/progress.js" in page
    assert 'id="rec-progress-bar" max="100" value="30"' in page
    assert 'id="rec-progress-epoch">2 / 8<' in page and 'id="rec-progress-ndcg">0.0500<' in page
    assert 'name="_save"' not in page
    assert finders.find("recommender/admin/progress.js")


def test_a_failed_versions_page_shows_the_error(staff_client):
    version = ModelVersion.objects.create(status="failed", error="TrainingError: Only 3 events")
    page = staff_client.get(f"{CHANGELIST}{version.pk}/change/").content.decode()
    assert "TrainingError: Only 3 events" in page
    assert "progress.js" not in page  # nothing left to poll
    assert 'id="recommender-activate"' not in page


# --------------------------------------------------------------------------- history


def trained(pk_hint, ndcg, *, active=False, curve_len=4, **fields):
    metrics = {
        "valid": {"hr@10": ndcg * 2, "ndcg@10": ndcg, "mrr": ndcg * 0.8, "coverage@10": 0.5},
        "test": {"hr@10": ndcg * 2, "ndcg@10": ndcg},
        "baselines": {
            "popularity": {
                "valid": {"hr@10": 0.05, "ndcg@10": 0.0211, "mrr": 0.02, "coverage@10": 0.01}
            },
            "itemknn": {
                "valid": {"hr@10": 0.08, "ndcg@10": 0.0333, "mrr": 0.03, "coverage@10": 0.3}
            },
        },
        "best_epoch": 3,
        "stopped": "patience",
        "visit_start_weight": 12.784,
    }
    curve = [
        {
            "stage": "train",
            "epoch": e,
            "epochs": 12,
            "loss": 6.0 - e,
            "val_ndcg10": 0.02 * e,
            "val_hr10": 0.04 * e,
        }
        for e in range(1, curve_len + 1)
    ]
    now = timezone.now()
    version = ModelVersion.objects.create(
        status="ready",
        model_name="cnn_dnn",
        metrics=metrics,
        curve=curve,
        data_stats={"shoppers": 1500, "items": 400, "events": 23456},
        started_at=now - timedelta(minutes=3, seconds=5),
        finished_at=now,
        **fields,
    )
    if active:
        version.activate()
    return version


def test_history_shows_data_size_offline_and_online_metrics_and_the_active_mark(
    staff_client, catalog
):
    old = trained(1, 0.0412, created_at=timezone.now() - timedelta(days=1))
    current = trained(2, 0.0777, active=True)
    shown = Recommendation.objects.create(
        version=current, placement="home", source="model", impressions=40
    )
    for shopper in ("s", "t", "t"):  # t's repeated click counts once
        Event.objects.create(
            item=catalog[0], kind="click", session_key=shopper, recommendation_id=shown.pk
        )
    page = staff_client.get(CHANGELIST).content.decode()
    assert "0.0412" in page and "0.0777" in page and "0.1554" in page  # NDCG@10 and HR@10
    assert "1,500 · 400 · 23,456" in page and "3m 05s" in page
    assert (
        "★ active" in page
        and f'id="recommender-active-version">Serving: <a href="{CHANGELIST}{current.pk}/change/"'
        in page
    )
    assert ">40<" in page and "5.00%" in page  # impressions and CTR of the active version
    assert old.pk != current.pk


def test_a_versions_page_has_curves_comparison_and_online_metrics(staff_client, catalog):
    import xml.etree.ElementTree as ET

    previous = trained(1, 0.0500, active=True)
    version = trained(2, 0.0800, active=True, curve_len=5)
    home = Recommendation.objects.create(
        version=version, placement="home", source="model", impressions=10
    )
    Recommendation.objects.create(
        version=version, placement="product", source="model", impressions=30
    )
    Event.objects.create(item=catalog[0], kind="click", session_key="s", recommendation_id=home.pk)
    page = staff_client.get(f"{CHANGELIST}{version.pk}/change/").content.decode()

    chunks = ("<svg" + part for part in page.split("<svg")[1:] if 'class="rec-chart' in part[:200])
    svgs = [ET.fromstring(chunk[: chunk.index("</svg>") + 6]) for chunk in chunks]
    titles = [svg.find("{http://www.w3.org/2000/svg}title").text for svg in svgs]
    assert titles == [
        "Training loss per epoch",
        "Validation NDCG@10 and HR@10 per epoch",
        "Validation metrics compared",
    ]
    assert "training loss, 5: 1" in page and "validation NDCG@10, 5: 0.1" in page
    # This version beside the one that served before it and both baselines.
    assert f"v{version.pk} (this)" in page and f"v{previous.pk} (previously active)" in page
    assert "popularity baseline" in page and "0.0211" in page and "itemknn baseline" in page
    assert 'data-placement="home"' in page and "10.00%" in page  # 1 click / 10 impressions
    assert 'data-placement="all"' in page and "2.50%" in page
    assert 'id="recommender-is-active"' in page
    assert "<dt>Visit starts</dt>" in page and "weighed ×12.8" in page


@pytest.mark.slow
def test_a_really_trained_versions_page(staff_client):
    """The page reads what training really writes: curve, metrics with baselines, data stats."""
    import xml.etree.ElementTree as ET

    from recommender import training

    from .store_data import FAST_CONFIG, make_catalogue, make_history

    make_history(make_catalogue(), n_shoppers=80)
    version = training.run_training(training.request_training(config=FAST_CONFIG).pk)
    assert version.status == "ready", version.error
    page = staff_client.get(f"{CHANGELIST}{version.pk}/change/").content.decode()
    chunks = ["<svg" + part for part in page.split("<svg")[1:] if 'class="rec-chart' in part[:200]]
    svgs = [ET.fromstring(chunk[: chunk.index("</svg>") + 6]) for chunk in chunks]
    circles = [c for c in svgs[0].iter("{http://www.w3.org/2000/svg}circle")]
    assert len(circles) == len(version.curve) > 0
    assert "popularity baseline" in page and "itemknn baseline" in page
    assert f"{version.data_stats['events']:,}" in page
    progress = staff_client.get(f"{CHANGELIST}{version.pk}/progress/").json()
    assert progress["finished"] and progress["percent"] == 100


# --------------------------------------------------------------------------- activate


def test_activation_needs_confirmation_and_switches_the_active_version(staff_client):
    old = trained(1, 0.05, created_at=timezone.now() - timedelta(days=2))
    new = trained(2, 0.06, active=True)
    page = staff_client.get(f"{CHANGELIST}{old.pk}/change/").content.decode()
    assert 'id="recommender-activate"' in page and "Roll back to this version" in page

    confirm = staff_client.get(f"{CHANGELIST}{old.pk}/activate/")
    assert confirm.status_code == 200 and b'id="recommender-activate-confirm"' in confirm.content
    assert b"Roll back to" in confirm.content
    old.refresh_from_db()
    assert not old.is_active  # a GET changes nothing

    response = staff_client.post(f"{CHANGELIST}{old.pk}/activate/")
    assert response.status_code == 302
    assert ModelVersion.objects.active() == old
    assert any(f"Rolled back to v{old.pk}" in m for m in messages_of(response))
    staff_client.post(f"{CHANGELIST}{new.pk}/activate/")
    assert ModelVersion.objects.active() == new


@pytest.mark.parametrize("status", ["failed", "queued", "running"])
def test_only_ready_versions_can_be_activated(staff_client, status):
    active = trained(1, 0.05, active=True)
    version = ModelVersion.objects.create(status=status)
    response = staff_client.post(f"{CHANGELIST}{version.pk}/activate/", follow=True)
    assert ModelVersion.objects.active() == active
    assert any("only a ready" in m for m in messages_of(response))


def test_activation_needs_the_change_permission(client):
    version = trained(1, 0.05)
    assert client.post(f"{CHANGELIST}{version.pk}/activate/").status_code == 302
    assert (
        staff_with(client, "view_modelversion")
        .post(f"{CHANGELIST}{version.pk}/activate/")
        .status_code
        == 403
    )
    assert ModelVersion.objects.active() is None


def test_activate_action_takes_exactly_one_version(staff_client):
    one, two = trained(1, 0.05), trained(2, 0.06)
    response = staff_client.post(
        CHANGELIST, {"action": "activate_action", "_selected_action": [one.pk]}
    )
    assert response.status_code == 302 and response.url == f"{CHANGELIST}{one.pk}/activate/"
    response = staff_client.post(
        CHANGELIST, {"action": "activate_action", "_selected_action": [one.pk, two.pk]}, follow=True
    )
    assert any("exactly one" in m for m in messages_of(response))
    assert ModelVersion.objects.active() is None


def test_the_active_version_cannot_be_deleted(staff_client):
    active = trained(1, 0.05, active=True)
    assert staff_client.get(f"{CHANGELIST}{active.pk}/delete/").status_code == 403


# --------------------------------------------------------------------------- events dashboard


def test_events_dashboard(staff_client, catalog):
    ann = get_user_model().objects.create_user("ann")
    now = timezone.now()
    for _ in range(3):
        Event.objects.create(
            item=catalog[2], kind="view", session_key="anon-1", occurred_at=now - timedelta(days=1)
        )
    Event.objects.create(item=catalog[3], kind="purchase", user=ann, occurred_at=now)
    shown = Recommendation.objects.create(placement="home", source="model", impressions=4)
    Event.objects.create(item=catalog[3], kind="click", user=ann, recommendation_id=shown.pk)

    changelist = staff_client.get("/admin/recommender/event/").content.decode()
    assert (
        'id="recommender-events-dashboard" href="/admin/recommender/event/dashboard/"' in changelist
    )
    assert 'id="recommender-forget-shopper" href="/admin/recommender/event/forget/"' in changelist
    app_index = staff_client.get("/admin/recommender/").content.decode()
    assert 'href="/admin/recommender/event/dashboard/"' in app_index

    page = staff_client.get("/admin/recommender/event/dashboard/").content.decode()
    assert "Events per day, last 30 days" in page and "<svg" in page
    assert "view, " in page and ": 3</title>" in page  # the stacked bar of yesterday's views
    assert 'id="rec-top-viewed"' in page and "Product 2" in page
    assert "Product 3" in page  # most purchased
    assert "Carousel click-through rate per day" in page and "25.00%" in page
    # Last 24 hours: ann plus one anonymous session.
    assert 'data-window="last 30 days">\n        <span class="rec-stat-value">2<' in page


def test_dashboard_is_staff_only(client):
    assert client.get("/admin/recommender/event/dashboard/").status_code == 302
    assert staff_with(client).get("/admin/recommender/event/dashboard/").status_code == 403


# --------------------------------------------------------------------------- forget a shopper


def test_forget_a_shopper_previews_then_deletes(staff_client, catalog):
    ann = get_user_model().objects.create_user("ann")
    Event.objects.create(item=catalog[0], kind="view", user=ann, session_key="ann-browser")
    Event.objects.create(item=catalog[1], kind="purchase", user=ann)
    Event.objects.create(item=catalog[1], kind="view", session_key="someone-else")

    preview = staff_client.post(
        "/admin/recommender/event/forget/", {"username": "ann"}
    ).content.decode()
    assert (
        'id="recommender-forget-preview"' in preview
        and "2 event(s) (1 purchase, 1 view)" in preview
    )
    assert Event.objects.count() == 3

    # A confirmation for someone else (the form was edited after the preview) only previews.
    edited = staff_client.post(
        "/admin/recommender/event/forget/", {"username": "ann", "confirm": "anonymous session x"}
    )
    assert b'id="recommender-forget-confirm"' in edited.content and Event.objects.count() == 3

    done = staff_client.post(
        "/admin/recommender/event/forget/",
        {"username": "ann", "confirm": f"user ann (id {ann.pk})"},
    )
    assert done.status_code == 302
    assert list(Event.objects.values_list("session_key", flat=True)) == ["someone-else"]
    assert any("deleted 2 event(s)" in m for m in messages_of(done))

    bad = staff_client.post(
        "/admin/recommender/event/forget/", {"username": "nobody", "session_key": "x"}
    )
    assert b"exactly one" in bad.content


def test_forgetting_needs_the_delete_permission(client):
    viewer = staff_with(client, "view_event")
    assert viewer.get("/admin/recommender/event/forget/").status_code == 403
    assert b"recommender-forget-shopper" not in viewer.get("/admin/recommender/event/").content
