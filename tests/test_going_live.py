"""Safe to go live: what an attacker or a fresh install finds in the demo's defaults.

Secrets and debug pages (the demo's own settings, in fresh processes), the pseudonym key
and its deploy check, the stale-run sweeper on the queue the documented worker consumes
(real Redis, real worker), and web workers that load the model before their first request
(real gunicorn with the demo's config file).
"""

import hashlib
import hmac
import io
import json
import os
import stat
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import timedelta

import pytest
from celery.app.routes import Router, prepare
from django.conf import settings as django_settings
from django.core import checks
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django.utils import timezone

from recommender import pseudonyms, training
from recommender.models import ModelVersion
from recommender.schedule import periodic_tasks
from shop_demo.celery import app as celery_app

from .faults.processes import Gunicorn, Worker
from .serving_fixtures import install_version
from .store_data import make_catalogue

PUBLIC_DEMO_KEY = "demo-only-not-secret-change-me"  # the demo's SECRET_KEY until now


def demo_process(code, var_dir, **env):
    """Run ``code`` under the demo's own settings, with no secret or debug in the environment."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DJANGO_SECRET_KEY", "DJANGO_DEBUG", "DATABASE_URL", "REDIS_URL")
    }
    return subprocess.run(
        [sys.executable, "-c", code],
        env={
            **clean,
            "DJANGO_SETTINGS_MODULE": "shop_demo.settings",
            "SHOP_VAR_DIR": str(var_dir),
            **env,
        },
        cwd=django_settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )


# --------------------------------------------------------------------------- secrets, debug, logs


SETTINGS_AS_JSON = (
    "import json, shop_demo.settings as s; "
    "print(json.dumps({'debug': s.DEBUG, 'key': s.SECRET_KEY}))"
)


def test_the_demo_runs_with_debug_off_and_a_random_secret_key_of_its_own(tmp_path):
    first = demo_process(SETTINGS_AS_JSON, tmp_path / "one")
    assert first.returncode == 0, first.stderr
    one = json.loads(first.stdout)
    assert one["debug"] is False
    assert one["key"] != PUBLIC_DEMO_KEY and len(one["key"]) >= 50
    key_file = tmp_path / "one" / "secret-key"
    assert key_file.read_text().strip() == one["key"]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # Kept: sessions survive a restart. Another install gets another key.
    again = json.loads(demo_process(SETTINGS_AS_JSON, tmp_path / "one").stdout)
    other = json.loads(demo_process(SETTINGS_AS_JSON, tmp_path / "two").stdout)
    assert again["key"] == one["key"] and other["key"] != one["key"]
    # Explicit choices still win.
    chosen = demo_process(
        SETTINGS_AS_JSON, tmp_path / "three", DJANGO_SECRET_KEY="k" * 60, DJANGO_DEBUG="1"
    )
    assert json.loads(chosen.stdout) == {"debug": True, "key": "k" * 60}
    assert not (tmp_path / "three" / "secret-key").exists()


def test_a_500_of_the_demo_logs_its_traceback_to_stderr(tmp_path):
    code = """
import sys, types, django
django.setup()
from django.test import Client, override_settings
from django.urls import path

def boom(request):
    raise RuntimeError("boom-from-the-test")

urls = types.ModuleType("boom_urls")
urls.urlpatterns = [path("boom/", boom)]
sys.modules["boom_urls"] = urls
with override_settings(ROOT_URLCONF="boom_urls"):
    response = Client(raise_request_exception=False).get("/boom/")
print(response.status_code)
"""
    result = demo_process(code, tmp_path, DJANGO_DEBUG="0")  # as in production
    assert result.stdout.strip() == "500", result.stderr
    assert "Internal Server Error: /boom/" in result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert "RuntimeError: boom-from-the-test" in result.stderr


def test_rundemo_serves_static_files_itself_with_debug_off(monkeypatch):
    from shop_demo.catalog.management.commands import rundemo

    class NoWorker:
        def __init__(self, *args, **kwargs):
            pass

        terminate = wait = kill = lambda self, **kwargs: None

    served = {}
    monkeypatch.setattr(rundemo.subprocess, "Popen", NoWorker)
    monkeypatch.setattr(
        rundemo, "call_command", lambda name, *args, **options: served.update(options, name=name)
    )
    call_command("rundemo", stdout=io.StringIO())
    assert served["name"] == "runserver" and served["insecure_serving"] is True


# --------------------------------------------------------------------------- pseudonym key


def attackers_pseudonym(secret_key, user_id):
    """What the export used to be: an HMAC keyed by SECRET_KEY itself."""
    return hmac.new(secret_key.encode(), f"u{user_id}".encode(), hashlib.sha256).hexdigest()[:20]


@override_settings(SECRET_KEY=PUBLIC_DEMO_KEY)
def test_a_public_secret_key_does_not_reverse_the_pseudonyms(settings):
    guesses = {attackers_pseudonym(PUBLIC_DEMO_KEY, user_id): user_id for user_id in range(1, 50)}
    assert not {pseudonyms.export_shopper(user_id=u) for u in range(1, 50)} & set(guesses)

    key = "a-pseudonym-key-of-the-store-itself-0123456789"
    settings.RECOMMENDER = {**settings.RECOMMENDER, "PSEUDONYM_KEY": key}
    keyed = pseudonyms.export_shopper(user_id=7)
    assert keyed == hmac.new(key.encode(), b"export:u7", hashlib.sha256).hexdigest()[:20]
    assert keyed not in guesses
    settings.RECOMMENDER = {**settings.RECOMMENDER, "PSEUDONYM_KEY": key + "-rotated"}
    assert pseudonyms.export_shopper(user_id=7) != keyed


def deploy_warnings():
    found = checks.run_checks(include_deployment_checks=True)
    return [w for w in found if w.id == "recommender.W002"]


@pytest.mark.parametrize(
    "key", [None, "", PUBLIC_DEMO_KEY, "short-key", "same-as-the-secret-key-" + "x" * 40]
)
def test_check_deploy_warns_about_a_missing_weak_or_public_pseudonym_key(settings, key):
    settings.SECRET_KEY = "same-as-the-secret-key-" + "x" * 40
    settings.RECOMMENDER = {**settings.RECOMMENDER, "PSEUDONYM_KEY": key}
    (warning,) = deploy_warnings()
    assert "PSEUDONYM_KEY" in warning.msg and "PSEUDONYM_KEY" in warning.hint
    # Only a deploy check: plain `check` (and the demo's `make demo`) stays quiet.
    assert not [w for w in checks.run_checks() if w.id == "recommender.W002"]


def test_check_deploy_accepts_a_long_secret_pseudonym_key_of_its_own(settings):
    settings.RECOMMENDER = {**settings.RECOMMENDER, "PSEUDONYM_KEY": uuid.uuid4().hex * 2}
    assert deploy_warnings() == []
    out = io.StringIO()
    call_command("check", "--deploy", stdout=out, stderr=io.StringIO())
    assert "recommender.W002" not in out.getvalue()


# --------------------------------------------------------------------------- the sweeper's queue


@pytest.fixture
def broker(private_redis, monkeypatch):
    """This process's Celery app on the private Redis (the status command's connections too).

    The app caches its connection and producer pools (the control mailbox too): they are
    set aside for the test and put back after it, for the tests that follow.
    """
    for name in ("broker_url", "broker_write_url", "broker_read_url"):
        monkeypatch.setitem(celery_app.conf, name, private_redis.url)
    mailbox = celery_app.control.mailbox.__dict__
    kept = celery_app._pool, celery_app.amqp._producer_pool, mailbox.pop("producer_pool", None)
    celery_app._pool = celery_app.amqp._producer_pool = None
    yield private_redis
    if celery_app._pool is not None:
        celery_app._pool.force_close_all()
    celery_app._pool, celery_app.amqp._producer_pool = kept[:2]
    mailbox.pop("producer_pool", None)
    if kept[2] is not None:
        mailbox["producer_pool"] = kept[2]


def send_as_beat_does(entry_name):
    """Celery beat's apply_async of one entry of the recommender's schedule."""
    entry = periodic_tasks()[entry_name]
    task = celery_app.tasks[entry["task"]]
    with celery_app.connection_for_write() as connection:
        task.apply_async((), {}, connection=connection, **entry.get("options", {}))


def status():
    out = io.StringIO()
    try:
        call_command(
            "recommender_status", "--timeout", "3", stdout=out, stderr=io.StringIO(), verbosity=0
        )
    except CommandError as exc:
        return out.getvalue(), str(exc)
    return out.getvalue(), None


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_documented_worker_runs_the_stale_run_sweeper_and_status_sees_it(broker):
    """The worker of the README (``-Q recommender-training``) gets beat's sweeper, and frees the lock."""
    import recommender.tasks  # noqa: F401 - registers the tasks, as the worker's autodiscovery does

    queue = django_settings.RECOMMENDER.get("TRAINING_QUEUE", "recommender-training")
    dead = ModelVersion.objects.create(
        status="running", heartbeat_at=timezone.now() - timedelta(hours=2)
    )
    worker = Worker(broker.url, [queue]).wait_ready()
    try:
        send_as_beat_does("recommender-fail-stale-runs")
        wait_for(
            lambda: ModelVersion.objects.get(pk=dead.pk).status == "failed",
            30,
            f"the sweeper to fail the dead run:\n{worker.output()}",
        )
        assert not ModelVersion.objects.running().exists()  # the lock is free
        training.request_training().delete()  # the next run may start

        out, problem = status()
        assert problem is None, out
        line = next(line for line in out.splitlines() if line.startswith(f"Queue '{queue}' ("))
        assert "recommender.train" in line and "recommender.fail_stale_runs" in line, out
        assert "0 waiting; consumed by faults-" in line, out
    finally:
        worker.stop()


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_status_fails_when_recommender_tasks_wait_in_a_queue_no_worker_consumes(
    broker, monkeypatch
):
    """A store that kept the old route (only ``recommender.train``): the sweeper piles up on ``celery``."""
    import recommender.tasks  # noqa: F401

    queue = "recommender-training"
    old_routes = Router(
        prepare({"recommender.train": {"queue": queue}}), celery_app.amqp.queues, app=celery_app
    )
    monkeypatch.setattr(celery_app.amqp, "router", old_routes)
    with celery_app.connection_for_write() as connection:
        for _ in range(3):  # beat every 5 minutes, to the default queue
            recommender.tasks.fail_stale_runs.apply_async(connection=connection, queue="celery")
    worker = Worker(broker.url, [queue]).wait_ready()
    try:
        out, problem = status()
    finally:
        worker.stop()
    assert problem is not None, out
    assert "3 task(s) wait in queue 'celery', which no worker consumes" in problem
    assert "recommender.fail_stale_runs" in problem
    line = next(line for line in out.splitlines() if line.startswith("Queue 'celery' ("))
    assert "recommender.fail_stale_runs" in line, out
    assert line.endswith("3 waiting; consumed by no worker."), out


# --------------------------------------------------------------------------- warm web workers


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_gunicorn_workers_load_the_model_before_their_first_request():
    version = install_version(make_catalogue(20), seed=3)
    server = Gunicorn(
        workers=1, args=["--config", "shop_demo/gunicorn.conf.py", "--log-level", "info"]
    )
    try:
        # No request is sent until the worker says it serves the model.
        wait_for(
            lambda: f"serving model version v{version.pk}, loaded at start" in server.output(),
            90,
            f"the worker to load the model:\n{server.output()}",
        )
        assert "Booting worker" in server.output()
        with urllib.request.urlopen(
            server.url + "/api/recommender/recommendations/?limit=3", timeout=30
        ) as response:
            assert response.status == 200
    finally:
        server.stop()
