"""Staff retrain from the admin in a real browser; a real Celery worker trains the version."""

import json
import os
import re
import subprocess
import tempfile
import time

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.test import override_settings

from benchmarks.harness import celery_worker_command
from recommender.models import ModelVersion

from .conftest import check_and_capture, sign_in_to_admin
from .shop_data import BROWSER_TRAINING, build_shop, department_history, train_first_version

pytestmark = [
    pytest.mark.browser,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]

CHANGELIST = "/admin/recommender/modelversion/"

# Records what the progress panel shows each time it changes, from the page's first paint.
WATCH_PROGRESS = """
document.addEventListener("DOMContentLoaded", () => {
  const panel = document.getElementById("recommender-progress");
  if (!panel) { return; }
  const seen = window.recProgressSeen = [];
  const text = (id) => document.getElementById(id).textContent.trim();
  const snapshot = () => {
    const now = {status: text("rec-progress-status"), stage: text("rec-progress-stage"),
                 epoch: text("rec-progress-epoch"), percent: document.getElementById("rec-progress-bar").value,
                 done: !document.getElementById("rec-progress-done").hidden};
    if (JSON.stringify(now) !== JSON.stringify(seen[seen.length - 1])) { seen.push(now); }
  };
  snapshot();
  new MutationObserver(snapshot).observe(panel, {subtree: true, childList: true, characterData: true, attributes: true});
});
"""


@pytest.fixture
def training_worker():
    """A Celery worker on a queue of this run's own, training with small, fast settings."""
    queue = f"recommender-browser-test-{os.getpid()}"
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete(queue)  # nothing left over from an interrupted run with this pid
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "RECOMMENDER_TEST_DB_NAME": connection.settings_dict["NAME"],
        "RECOMMENDER_TEST_VAR_DIR": str(settings.VAR_DIR),
        "RECOMMENDER_TEST_SETTINGS": json.dumps(BROWSER_TRAINING),
    }
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    output = tempfile.TemporaryFile()
    process = subprocess.Popen(
        celery_worker_command([queue], "WARNING", ["--without-heartbeat"]),
        env=env,
        cwd=settings.BASE_DIR,
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    process.output = output
    with override_settings(RECOMMENDER={**settings.RECOMMENDER, "TRAINING_QUEUE": queue}):
        yield process
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    broker.delete(queue)
    output.close()


def worker_output(process):
    process.output.seek(0)
    return process.output.read().decode(errors="replace")[-5000:]


def test_staff_retrain_watch_the_progress_and_read_the_new_version(page, training_worker):
    build_shop()
    department_history()
    first = train_first_version()
    sign_in_to_admin(page)
    page.click(f"a[href='{CHANGELIST}']")
    assert (
        page.locator("#recommender-active-version")
        .inner_text()
        .startswith(f"Serving: ★ v{first.pk}")
    )

    page.context.add_init_script(WATCH_PROGRESS)
    with page.expect_navigation():
        page.click("#recommender-retrain")
    match = re.search(rf"{CHANGELIST}(\d+)/change/$", page.url)
    assert match, page.url
    version_id = int(match.group(1))
    assert version_id != first.pk
    assert f"Queued training v{version_id}" in page.locator(".messagelist").inner_text()
    page.evaluate("window.samePage = true")

    # The panel's poller updates it in place until the worker has finished the run.
    deadline = time.monotonic() + 180
    while page.locator("#rec-progress-status").inner_text().strip() not in ("ready", "failed"):
        if training_worker.poll() is not None:
            pytest.fail(f"The worker exited:\n{worker_output(training_worker)}")
        if time.monotonic() > deadline:
            pytest.fail(
                f"v{version_id} did not finish in 180 s: {ModelVersion.objects.get(pk=version_id).progress}\n"
                f"{worker_output(training_worker)}"
            )
        page.wait_for_timeout(250)
    version = ModelVersion.objects.get(pk=version_id)
    assert version.status == "ready", version.error
    assert page.evaluate("window.samePage") is True  # no reload
    seen = page.evaluate("window.recProgressSeen")
    assert seen[0]["status"] in ("queued", "running") and seen[0]["percent"] < 100, seen
    epochs = f"{len(version.curve)} / {BROWSER_TRAINING['TRAINING']['epochs']}"
    assert seen[-1] == {
        "status": "ready",
        "stage": "done",
        "epoch": epochs,
        "percent": 100,
        "done": True,
    }, seen
    percents = [s["percent"] for s in seen]
    assert percents == sorted(percents), seen
    assert not page.js_errors

    # The run's own page, reloaded: a summary and its charts as inline SVG.
    with page.expect_navigation():
        page.click("#rec-progress-done a")
    assert page.locator("#recommender-progress").count() == 0
    assert page.locator("#recommender-curves svg.rec-chart").count() == 2
    assert page.locator("#recommender-offline-metrics svg.rec-chart").count() == 1
    assert (
        page.locator("#recommender-curves svg.rec-loss-chart circle").count()
        == len(version.curve)
        > 0
    )
    assert f"v{first.pk}" in page.locator("#recommender-offline-metrics").inner_text()
    check_and_capture(page, "admin-version")

    # The history lists the new version next to the first; the button is ready again.
    page.goto(CHANGELIST)
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 2
    assert (
        page.locator(f"#result_list a[href$='/{version_id}/change/']")
        .inner_text()
        .startswith(f"v{version_id}")
    )
    new_row = rows.filter(has=page.locator(f"a[href$='/{version_id}/change/']"))
    assert new_row.locator(".rec-badge.rec-status-ready").count() == 1
    assert page.locator("#recommender-retrain").is_enabled()
    assert page.locator("#recommender-retrain").inner_text().strip().lower() == "retrain now"
    check_and_capture(page, "admin-versions")
    assert not page.js_errors
