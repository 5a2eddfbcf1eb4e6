"""Failing services: the store keeps serving pages, loses no events, never serves a broken model.

Every fault is real and injected into a service of the test's own: a private
``redis-server`` killed (SIGKILL) or hung (SIGSTOP) and restarted, a real Celery worker
killed in the middle of training, the PostgreSQL connections of the test database
terminated under a gunicorn server (what clients see when the server restarts). The
machine's shared PostgreSQL and Redis are never stopped.
"""

import collections
import json
import logging
import re
import time
import uuid
from decimal import Decimal

import pytest
from django.core.cache import caches
from django.test import Client

from recommender import serving, tasks, training
from recommender.ml import artifact
from recommender.models import Event, ModelVersion
from shop_demo.catalog.models import Category, Product
from shop_demo.celery import app as celery_app

from .faults.processes import Gunicorn, Worker
from .faults.services import DatabaseFaults
from .faults.tracker_client import TrackerClient
from .serving_fixtures import install_version
from .store_data import FAST_CONFIG, make_catalogue, make_history

CAROUSEL = re.compile(
    r'<section class="rec-carousel"[^>]*data-rec-placement="(?P<placement>[^"]*)"[^>]*'
    r'data-rec-source="(?P<source>[^"]*)"(?: data-rec-version="(?P<version>\d+)")?'
)


@pytest.fixture
def shelf(db):
    """24 sellable products in 3 categories and an active (untrained) model over them."""
    cats = [Category.objects.create(name=f"Dept {i}", slug=f"dept-{i}") for i in range(3)]
    products = [
        Product.objects.create(
            category=cats[i % 3],
            name=f"Thing {i}",
            slug=f"thing-{i}",
            price=Decimal("3.00"),
            stock=9,
        )
        for i in range(24)
    ]
    version = install_version(products, seed=3)
    return products, version


def carousels(response):
    return [m.groupdict() for m in CAROUSEL.finditer(response.content.decode())]


# --------------------------------------------------------------------------- Redis down


@pytest.fixture
def resilient_cache(private_redis, settings, request):
    """The demo's cache backend on a Redis this test may kill (breaker period 1 s by default)."""
    options = {"RETRY_SECONDS": 1, **getattr(request, "param", {})}
    settings.CACHES = {
        "default": {
            "BACKEND": "recommender.cache.ResilientRedisCache",
            "LOCATION": private_redis.url,
            "KEY_PREFIX": "faults",
            "OPTIONS": options,
        }
    }
    yield caches["default"]


class Shopper:
    """A browser on the demo store: pages, tracker batches and API calls, timed."""

    def __init__(self, products):
        self.client = Client()
        self.products = products
        self.sent = set()
        self.durations = []

    def _timed(self, call, *args, **kwargs):
        started = time.monotonic()
        response = call(*args, **kwargs)
        self.durations.append(time.monotonic() - started)
        return response

    @property
    def slowest(self):
        return max(self.durations, default=0.0)

    def page(self, path):
        response = self._timed(self.client.get, path)
        assert response.status_code == 200, (path, response.status_code)
        return response

    def view(self, *products):
        events = [{"kind": "view", "item": p.pk, "event_id": str(uuid.uuid4())} for p in products]
        response = self._timed(
            self.client.post,
            "/api/recommender/events/",
            {"events": events},
            content_type="application/json",
        )
        assert response.status_code == 201, response.content
        self.sent |= {e["event_id"] for e in events}
        return response.json()

    def recommendations(self):
        response = self._timed(self.client.get, "/api/recommender/recommendations/?limit=6")
        assert response.status_code == 200, response.content
        return response.json()

    def visit_everything(self):
        """Home (personal carousel), a product page (similar + bought together), API, a batch."""
        home = carousels(self.page("/"))
        product = carousels(self.page(f"/p/{self.products[5].slug}/"))
        self.view(self.products[5])
        return home, product, self.recommendations()


def stored(event_ids):
    return Event.objects.filter(event_id__in=list(event_ids)).count()


def test_a_killed_redis_costs_no_page_event_or_api_answer_and_caching_resumes(
    shelf, private_redis, resilient_cache, caplog
):
    products, version = shelf
    shopper = Shopper(products)
    shopper.view(*products[:3])
    home, product, recs = shopper.visit_everything()
    assert home == [{"placement": "home", "source": "model", "version": str(version.pk)}]
    assert {c["placement"] for c in product} == {"product-similar"}  # nobody bought anything yet
    assert recs["source"] == "model"
    redis = private_redis.client()
    assert any(k.startswith(b"faults:1:recommender:") for k in redis.keys()), "nothing was cached"
    assert any(b"sessions" in k for k in redis.keys()), "the session was not cached"

    caplog.set_level(logging.WARNING, logger="recommender.cache")
    private_redis.kill()
    started = time.monotonic()
    for round_ in range(5):
        home, product, recs = shopper.visit_everything()
        assert home == [{"placement": "home", "source": "model", "version": str(version.pk)}]
        assert "product-similar" in {c["placement"] for c in product}
        assert recs["source"] == "model" and recs["items"]
        shopper.view(products[10 + round_])
    outage_seconds = time.monotonic() - started
    assert stored(shopper.sent) == len(shopper.sent) == 14
    # Logged once, not once per request.
    warnings = [r for r in caplog.records if r.name == "recommender.cache"]
    assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()
    assert not resilient_cache.available

    private_redis.start()  # an empty Redis on the same port
    time.sleep(1.1)  # the breaker's period: the next call probes
    shopper.visit_everything()
    assert resilient_cache.available
    assert any(k.startswith(b"faults:1:recommender:") for k in redis.keys()), (
        "caching did not resume"
    )
    assert any(b"sessions" in k for k in redis.keys())
    assert "reachable again" in caplog.text
    assert stored(shopper.sent) == len(shopper.sent)
    print(
        f"\n30 requests with Redis dead took {outage_seconds:.2f} s; slowest request {shopper.slowest * 1000:.0f} ms"
    )


@pytest.mark.parametrize(
    "resilient_cache", [{"RETRY_SECONDS": 2, "socket_timeout": 0.5}], indirect=True
)
def test_a_hung_redis_costs_one_timeout_per_period_and_missed_invalidations_are_replayed(
    shelf, private_redis, resilient_cache, caplog
):
    """SIGSTOP: connects succeed but nothing answers; the data survives the pause."""
    caplog.set_level(logging.WARNING, logger="recommender.cache")
    products, _ = shelf
    shopper = Shopper(products)
    shopper.view(*products[:3])
    before = shopper.recommendations()
    assert shopper.recommendations()["recommendation_id"] == before["recommendation_id"]  # cached
    shown = [item["id"] for item in before["items"]]

    private_redis.pause()
    try:
        shopper.durations = []
        started = time.monotonic()
        first = shopper.recommendations()  # pays the 0.5 s read timeout, then the breaker opens
        # The shopper views what they were shown: that must drop their cached list.
        shopper.view(*[p for p in products if p.pk in shown[:2]])
        for _ in range(10):
            during = shopper.recommendations()
            shopper.page("/")
        outage_seconds = time.monotonic() - started
    finally:
        private_redis.resume()
    assert first["items"]
    slow = [d for d in shopper.durations if d >= 0.4]
    # One timeout when Redis hung, then at most one probe per 2 s period: not one per request.
    assert len(slow) <= 1 + outage_seconds // 2, (len(shopper.durations), shopper.durations)
    assert shopper.slowest < 1.5
    assert not set(shown[:2]) & {item["id"] for item in during["items"]}

    time.sleep(2.1)
    after = shopper.recommendations()
    assert resilient_cache.available
    # Without the replayed delete, Redis (which kept its data) would serve the stale list.
    assert after["recommendation_id"] != before["recommendation_id"]
    assert not set(shown[:2]) & {item["id"] for item in after["items"]}
    assert "1 missed invalidation(s) replayed" in caplog.text
    assert stored(shopper.sent) == len(shopper.sent)


def test_the_resilient_cache_behaves_as_an_empty_cache_while_redis_is_down(
    private_redis, resilient_cache
):
    cache = resilient_cache
    cache.set("a", 1)
    assert cache.get("a") == 1 and cache.incr("a") == 2
    private_redis.kill()
    assert cache.get("a", "default") == "default"
    assert cache.get_many(["a", "b"]) == {}
    assert cache.has_key("a") is False and ("a" in cache) is False
    assert cache.add("n", 1) is True  # stored, then "evicted"
    with pytest.raises(ValueError):
        cache.incr("n")  # like a missing key: a fixed-window throttle starts a window (fails open)
    assert cache.set_many({"x": 1, "y": 2}) == ["x", "y"]
    assert cache.get_or_set("z", 5) == 5
    assert cache.delete("a") is False
    cache.set("b", 2)
    cache.clear()
    private_redis.start()
    time.sleep(1.1)
    assert cache.get("a") is None  # the restarted Redis is empty (no persistence)
    cache.set("c", json.dumps([1]))
    assert cache.get("c") == "[1]"


def test_the_throttle_counter_is_one_round_trip_that_expires_and_fails_open(
    private_redis, resilient_cache
):
    cache = resilient_cache
    assert [cache.incr_with_expiry("hits", 60) for _ in range(3)] == [1, 2, 3]
    raw = cache.make_and_validate_key("hits")
    client = cache._cache.get_client(raw)
    assert client is cache._cache.get_client(raw)  # one redis.Redis per pool, not one per call
    assert 0 < client.ttl(raw) <= 60
    assert cache.incr_with_expiry("brief", 1) == 1
    time.sleep(2.1)
    assert cache.get("brief") is None  # a window's counter does not outlive it
    private_redis.kill()
    assert (
        cache.incr_with_expiry("hits", 60) is None
    )  # unavailable: the throttle lets requests through


# --------------------------------------------------------------------------- worker killed


LONG_TRAINING = {
    **FAST_CONFIG,
    "TRAINING": {**FAST_CONFIG["TRAINING"], "epochs": 500, "patience": 500, "max_seconds": 120},
}
QUICK_TRAINING = {
    **FAST_CONFIG,
    "TRAINING": {**FAST_CONFIG["TRAINING"], "epochs": 2, "patience": 2},
}
HEARTBEAT_TIMEOUT = 3


def wait_until(condition, timeout, what, poll=0.1):
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            print(
                f"[{time.strftime('%H:%M:%S')}] {what.splitlines()[0]}: {time.monotonic() - started:.1f} s"
            )
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_training_fails_the_run_frees_the_lock_and_the_next_run_succeeds(
    private_redis, settings
):
    """SIGKILL the Celery worker (solo pool) in the middle of an epoch, over a real Redis broker.

    The task is acks_late, so the broker still holds the message; a new worker gets it
    again and run_training's claim makes it a no-op. The beat task fails the stale run.
    """
    queue = f"faults-training-{uuid.uuid4().hex[:8]}"
    overrides = {"TRAINING_HEARTBEAT_TIMEOUT": HEARTBEAT_TIMEOUT, "TRAINING_QUEUE": queue}
    settings.RECOMMENDER = {**settings.RECOMMENDER, **overrides}
    make_history(make_catalogue(20), n_shoppers=60, with_users=False)
    serving_version = install_version(list(Product.objects.order_by("pk")), seed=5)
    ModelVersion.objects.filter(pk=serving_version.pk).update(metrics={"valid": {"ndcg@10": 0.0}})
    broker = private_redis.client()

    def send(task, *args):
        with celery_app.connection_for_write(private_redis.url) as conn:
            return task.apply_async(args=list(args), queue=queue, connection=conn).id

    first = Worker(private_redis.url, [queue], overrides).wait_ready()
    try:
        doomed = training.request_training(config=LONG_TRAINING)
        task_id = send(tasks.train, doomed.pk)
        wait_until(
            lambda: ModelVersion.objects.filter(
                pk=doomed.pk, progress__stage="train", progress__epoch__gte=1
            ).exists(),
            90,
            "the run to be an epoch in",
        )
        assert training.fail_stale_runs() == 0  # alive: its heartbeat is fresh
        first.kill()
    finally:
        first.stop()
    killed_at = time.monotonic()
    doomed.refresh_from_db()
    assert (
        doomed.status == "running" and ModelVersion.objects.running().get() == doomed
    )  # the lock is held
    assert broker.hlen("unacked") == 1, "acks_late: the broker keeps the unacknowledged message"

    second = Worker(private_redis.url, [queue], overrides).wait_ready()
    try:
        wait_until(
            lambda: time.monotonic() - killed_at > HEARTBEAT_TIMEOUT + 0.5,
            10,
            "the heartbeat to expire",
        )
        send(tasks.fail_stale_runs)  # what beat sends every 5 minutes
        wait_until(
            lambda: ModelVersion.objects.get(pk=doomed.pk).status == "failed", 30, "the sweeper"
        )
        # The redelivered message reaches the new worker and finds nothing to claim.
        wait_until(
            lambda: f"Task recommender.train[{task_id}] succeeded" in second.output(),
            30,
            f"the redelivered task:\n{second.output()}",
        )
        assert f"Training v{doomed.pk} was already claimed; nothing to do." in second.output()
        doomed.refresh_from_db()
        assert doomed.status == "failed" and "stopped reporting" in doomed.error
        assert not doomed.is_active and ModelVersion.objects.active() == serving_version
        assert not ModelVersion.objects.running().exists()  # the lock is free

        following = training.request_training(config=QUICK_TRAINING)
        send(tasks.train, following.pk)
        following = wait_until(  # ready and decided (promotion is its own transaction), or failed
            lambda: (
                ModelVersion.objects.filter(pk=following.pk)
                .exclude(status="ready", decision="")
                .exclude(status__in=["queued", "running"])
                .first()
            ),
            120,
            "the next run",
        )
        assert following.status == "ready", following.error
        assert following.is_active and ModelVersion.objects.active() == following
        wait_until(
            lambda: broker.hlen("unacked") == 0 and broker.llen(queue) == 0,
            10,
            "the broker to drain",
        )
        doomed.refresh_from_db()
        assert doomed.status == "failed"
    finally:
        second.stop()


@pytest.mark.django_db(transaction=True)
def test_a_live_run_keeps_beating_through_a_long_silent_stage(settings, monkeypatch):
    """Progress comes once per epoch; an epoch longer than the timeout must not look dead."""
    settings.RECOMMENDER = {**settings.RECOMMENDER, "TRAINING_HEARTBEAT_TIMEOUT": 1}
    swept = []

    def long_silent_epoch(version, progress):
        time.sleep(2.5)  # no progress report for 2.5 timeouts
        swept.append(training.fail_stale_runs())
        raise training.TrainingError("stop here")

    monkeypatch.setattr(training, "_train", long_silent_epoch)
    version = training.request_training()
    with pytest.raises(training.TrainingError, match="stop here"):
        training.run_training(version.pk)
    assert swept == [0]
    version.refresh_from_db()
    assert version.status == "failed" and version.error == "TrainingError: stop here"


@pytest.mark.django_db(transaction=True)
def test_a_run_failed_as_stale_while_it_ran_stops_and_promotes_nothing(settings, monkeypatch):
    """A worker cut off (not killed) comes back after the sweeper failed its run."""
    make_history(make_catalogue(20), n_shoppers=60, with_users=False)
    sweep = {"stage": "train"}

    def sweeper_runs_now():
        ModelVersion.objects.filter(status="running").update(status="failed", error="swept")

    def echo(info):
        if info.get("stage") == sweep["stage"]:
            sweeper_runs_now()

    # At a progress report: the run stops there.
    version = training.request_training(config=QUICK_TRAINING)
    with pytest.raises(training.TrainingAbandoned):
        training.run_training(version.pk, echo=echo)
    version.refresh_from_db()
    assert (version.status, version.error, version.is_active) == ("failed", "swept", False)

    # Between the last report and READY (while the artifact is verified): nothing promoted.
    sweep["stage"] = None
    verify = artifact.load_artifact

    def verify_while_swept(*args, **kwargs):
        sweeper_runs_now()
        return verify(*args, **kwargs)

    monkeypatch.setattr(artifact, "load_artifact", verify_while_swept)
    version = training.request_training(config=QUICK_TRAINING)
    with pytest.raises(training.TrainingAbandoned):
        training.run_training(version.pk, echo=echo)
    version.refresh_from_db()
    assert (version.status, version.error, version.is_active) == ("failed", "swept", False)
    assert ModelVersion.objects.active() is None


# --------------------------------------------------------------------------- broken artifacts


class _Exploit:
    """Unpickling this runs ``os.mkdir(marker)``: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))


def _bad_artifacts(good_bytes, marker):
    import io
    import pickle

    import torch

    def torch_saved(obj):
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        return buffer.getvalue()

    exploit = {"magic": artifact.MAGIC, "format_version": 1, "evil": _Exploit(marker)}
    return {
        "truncated": good_bytes[: len(good_bytes) // 2],
        "foreign": torch_saved({"weight": torch.zeros(3)}),
        "malicious pickle": pickle.dumps(exploit),
        "malicious torch file": torch_saved(exploit),
    }


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.django_db
def test_broken_artifacts_are_refused_with_a_clear_error_and_the_previous_version_keeps_serving(
    shelf, settings, tmp_path, caplog
):
    import hashlib

    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    settings.RECOMMENDER = {**settings.RECOMMENDER, "VERSION_CHECK_SECONDS": 0}
    products, good = shelf
    shopper = Shopper(products)
    shopper.view(*products[:3])
    assert shopper.recommendations()["model_version"] == good.pk
    marker = tmp_path / "code-ran"
    good_bytes = default_storage.open(good.artifact).read()

    for label, payload in _bad_artifacts(good_bytes, str(marker)).items():
        name = default_storage.save(
            f"recommender/models/bad-{label.replace(' ', '-')}.pt", ContentFile(payload)
        )
        bad = ModelVersion.objects.create(status="ready", artifact=name, model_name="cnn_dnn")
        bad.activate()  # an admin promotes (or rolls back to) a version whose file is broken
        caplog.clear()
        shopper.view(products[4])  # a fresh answer, not a cached one
        answer = shopper.recommendations()
        assert answer["model_version"] == good.pk and answer["source"] == "model", label
        assert carousels(shopper.page("/"))[0]["version"] == str(good.pk), label
        refusal = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert (
            refusal and "ArtifactError" in refusal[0] and f"v{good.pk} keeps serving" in refusal[0]
        ), label
        bad.refresh_from_db()
        assert bad.error.startswith("Refused by a web process: ArtifactError"), label
        assert not marker.exists(), f"{label}: unpickling ran code"

    # A file replaced in storage after training verified it: refused before unpickling.
    other = install_version(products, seed=9, activate=False)
    swapped = ModelVersion.objects.create(
        status="ready",
        artifact=other.artifact,
        model_name="cnn_dnn",
        artifact_sha256=hashlib.sha256(good_bytes).hexdigest(),
    )
    swapped.activate()
    assert shopper.recommendations()["model_version"] == good.pk
    swapped.refresh_from_db()
    assert "not the one verified at training" in swapped.error

    # A process that starts now (restart, recycled worker) serves the last good version too,
    # not popular items.
    serving.active_model.reset()
    caplog.clear()
    shopper.view(products[6])
    assert shopper.recommendations()["model_version"] == good.pk
    assert f"serving v{good.pk}, the last good version" in caplog.text
    assert not marker.exists()
    # The next good version is picked up at once.
    fixed = install_version(products, seed=11)
    shopper.view(products[7])
    assert shopper.recommendations()["model_version"] == fixed.pk


# --------------------------------------------------------------------------- PostgreSQL restarted


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_events_sent_through_a_database_restart_are_stored_exactly_once():
    """A tracker-like client keeps posting batches while the database connections die.

    gunicorn (2 sync workers) holds persistent connections (CONN_MAX_AGE=60, no health
    checks). The faults: every backend of the test database terminated three times (what
    a restart does to open connections), then a restart window in which new connections
    are refused for 1.5 s. Each batch is retried until stored, with the same event ids.
    """
    import threading

    from django.db import connection

    category = Category.objects.create(name="Pantry", slug="pantry")
    items = [
        Product.objects.create(
            category=category, name=f"Jar {i}", slug=f"jar-{i}", price=Decimal(2), stock=5
        ).pk
        for i in range(12)
    ]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        own_pid = cursor.fetchone()[0]
    server = Gunicorn(workers=2).wait_ready("/")
    faults = DatabaseFaults(connection.settings_dict)
    stop = threading.Event()
    clients = [TrackerClient("127.0.0.1", server.port, items) for _ in range(3)]
    errors = []

    def post_until_stopped(client):
        number = 0
        try:
            while not stop.is_set():
                client.send_batch(number)
                number += 1
        except Exception as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=post_until_stopped, args=(c,)) for c in clients]
    try:
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        for _ in range(3):
            assert faults.terminate(keep_pids=[own_pid]) >= 1  # the workers' persistent connections
            time.sleep(0.7)
        restart_began = time.monotonic()
        faults.refuse()  # restarting: new connections fail ...
        faults.terminate(keep_pids=[own_pid])
        time.sleep(1.5)
        faults.refuse(False)  # ... and then the server is back
        restart_ended = time.monotonic()
        time.sleep(1.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        faults.close()
        log = server.output()
        server.stop()
    assert not errors, errors
    sent = set().union(*(c.sent_ids for c in clients))
    attempts = [a for c in clients for a in c.attempts]
    failed = [a for a in attempts if a[1] != 201]
    print(
        f"\n{len(attempts)} attempts, {len(sent)} events; failed attempts: "
        f"{sorted(collections.Counter(str(a[1]) for a in failed).items())}; {faults.terminated} backends terminated"
    )
    assert failed, "the faults never reached a client"
    # Stored exactly once: every distinct event id is there, and nothing else.
    assert (
        Event.objects.filter(event_id__in=list(sent)).count() == len(sent) == Event.objects.count()
    )
    # The client is told to retry (503 + Retry-After), not shown a crash.
    assert all(a[1] == 503 and a[3] for a in failed), failed
    # A terminated connection costs one request per worker and is then replaced.
    before_restart = [a for a in failed if a[4] + a[2] < restart_began]
    assert 3 <= len(before_restart) <= 3 * server.workers, before_restart
    after_restart = [a for c in clients for a in c.attempts if a[4] > restart_ended + 0.6]
    assert after_restart and all(a[1] == 201 for a in after_restart)
    assert "Internal Server Error" not in log


# --------------------------------------------------------------------------- concurrent promotions


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_promotions_and_rollbacks_leave_exactly_one_active_version():
    """Threads (each its own connection) promote and roll back at random while a checker samples.

    Three "trainers" call ModelVersion.promote, three "admins" call activate() (the
    admin's activate / roll back). The sampled count of active versions must be 1 every
    time; the trainers' promotions must never fail.
    """
    import random
    import threading

    from django.db import IntegrityError, connection, transaction

    versions = [
        ModelVersion.objects.create(
            status="ready", model_name=f"m{i}", metrics={"valid": {"ndcg@10": 0.5}}
        )
        for i in range(6)
    ]
    versions[0].activate()
    stop = threading.Event()
    samples, outcomes, errors = [], collections.Counter(), []

    def checker():
        try:
            with connection.cursor() as cursor:
                while not stop.is_set():
                    cursor.execute("SELECT count(*) FROM recommender_modelversion WHERE is_active")
                    samples.append(cursor.fetchone()[0])
        finally:
            connection.close()

    def switcher(seed, promote):
        rng = random.Random(seed)
        try:
            for _ in range(40):
                version = rng.choice(versions)
                try:
                    if promote:
                        assert version.promote()
                        outcomes["promoted"] += 1
                    else:
                        version.activate()
                        outcomes["activated"] += 1
                except IntegrityError:
                    outcomes[
                        "promote: IntegrityError" if promote else "activate: IntegrityError"
                    ] += 1
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    watcher = threading.Thread(target=checker)
    watcher.start()
    switchers = [threading.Thread(target=switcher, args=(seed, seed % 2 == 0)) for seed in range(6)]
    for thread in switchers:
        thread.start()
    for thread in switchers:
        thread.join(timeout=120)
    stop.set()
    watcher.join(timeout=30)
    print(
        f"\n{sum(outcomes.values())} switches {dict(outcomes)}, {len(samples)} samples "
        f"{dict(collections.Counter(samples))}"
    )
    assert not errors, errors
    assert len(samples) > 100 and set(samples) == {1}, collections.Counter(samples)
    assert outcomes["promoted"] == 120, outcomes
    # activate() retries when it loses a race to the one-active constraint: every switch lands.
    assert outcomes["activated"] == 120, outcomes
    assert ModelVersion.objects.filter(is_active=True).count() == 1

    # The database, not only activate(), forbids a second active version or an unready one.
    active = ModelVersion.objects.get(is_active=True)
    other = next(v for v in versions if v.pk != active.pk)
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.filter(pk=other.pk).update(is_active=True)
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.filter(pk__in=[v.pk for v in versions]).update(is_active=True)
    failed = ModelVersion.objects.create(status="failed")
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.filter(is_active=True).update(is_active=False)
        ModelVersion.objects.filter(pk=failed.pk).update(is_active=True)
    assert list(ModelVersion.objects.filter(is_active=True)) == [active]


# --------------------------------------------------------------------------- lost training messages


@pytest.mark.django_db
def test_a_queued_run_whose_message_was_lost_is_failed_and_frees_the_lock(settings):
    """A Redis broker restarted without persistence loses the queued message: no worker ever claims it."""
    from datetime import timedelta

    from django.utils import timezone

    settings.RECOMMENDER = {**settings.RECOMMENDER, "TRAINING_HEARTBEAT_TIMEOUT": 60}
    lost = training.request_training()  # queued; its message never arrives
    with pytest.raises(training.TrainingInProgress):
        training.request_training()
    ModelVersion.objects.filter(pk=lost.pk).update(
        created_at=timezone.now() - timedelta(seconds=61)
    )
    assert tasks.fail_stale_runs.apply().get() == 1  # the beat task
    lost.refresh_from_db()
    assert lost.status == "failed" and "No worker started the run" in lost.error
    following = training.request_training()  # the lock is free
    # The lost message turning up after all changes nothing.
    assert training.run_training(lost.pk).status == "failed"
    assert ModelVersion.objects.get(pk=following.pk).status == "queued"


@pytest.mark.django_db(transaction=True)
def test_a_run_that_cannot_be_queued_fails_at_once_instead_of_holding_the_lock(monkeypatch, caplog):
    from kombu.exceptions import OperationalError as BrokerDown

    def broker_down(*args, **kwargs):
        raise BrokerDown("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(tasks.train, "apply_async", broker_down)
    version = tasks.queue_training()  # autocommit: sent at once
    version.refresh_from_db()
    assert version.status == "failed" and "Could not be queued" in version.error
    assert "could not be queued" in caplog.text
    training.request_training()  # nothing holds the lock


@pytest.mark.django_db
def test_a_redelivered_beat_message_does_not_start_a_second_training():
    """Beat's train() has no version id: a redelivery (acks_late) must find the run it created."""
    first = tasks.train.apply(task_id="beat-message-1")
    version = ModelVersion.objects.get(task_id="beat-message-1")
    assert isinstance(first.result, training.TrainingError)  # nothing to train on here ...
    assert (
        version.trigger == "schedule" and version.status == "failed" and "events" in version.error
    )
    again = tasks.train.apply(task_id="beat-message-1")  # the same message, delivered again
    assert again.result == version.pk
    assert ModelVersion.objects.count() == 1
    tasks.train.apply(task_id="beat-message-2")  # the next night's message does train again
    assert ModelVersion.objects.count() == 2
