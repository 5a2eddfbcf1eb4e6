"""Celery tasks take ids, claim their run once, and go to the training queue."""

from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from recommender import tasks, training
from recommender.conf import recommender_settings
from recommender.models import ModelVersion
from recommender.schedule import periodic_tasks

from .store_data import FAST_CONFIG, make_catalogue, make_history

TINY = {**FAST_CONFIG, "TRAINING": {**FAST_CONFIG["TRAINING"], "epochs": 1}}


def test_the_task_trains_the_version_whose_id_it_is_given(db):
    make_history(make_catalogue())
    with override_settings(RECOMMENDER=TINY):
        queued = training.request_training()
        other = ModelVersion.objects.create()  # queued too, but not this task's
        result = tasks.train.apply(args=[queued.pk])
    assert result.get() == queued.pk
    queued.refresh_from_db()
    other.refresh_from_db()
    assert queued.status == ModelVersion.Status.READY and queued.is_active
    assert other.status == ModelVersion.Status.QUEUED


@pytest.mark.parametrize("status", ["running", "ready", "failed"])
def test_a_redelivered_task_finds_its_run_claimed_and_does_nothing(db, status):
    version = ModelVersion.objects.create(status=status, progress={"stage": "as it was"})
    tasks.train.apply(args=[version.pk]).get()
    version.refresh_from_db()
    assert version.status == status and version.progress == {"stage": "as it was"}


def test_a_redelivered_beat_message_claims_the_run_it_created_not_a_second_one(db):
    # Too few events: the run fails, which is enough to see which run the message owns.
    first = tasks.train.apply(task_id="beat-1")
    again = tasks.train.apply(task_id="beat-1")
    assert isinstance(first.result, training.TrainingError)
    assert again.successful()
    runs = ModelVersion.objects.filter(task_id="beat-1")
    assert runs.count() == 1 and runs.get().trigger == ModelVersion.Trigger.SCHEDULE
    assert ModelVersion.objects.count() == 1


def test_beat_starts_nothing_while_a_run_is_queued(db):
    ModelVersion.objects.create()
    assert tasks.train.apply(task_id="beat-2").get() is None
    assert ModelVersion.objects.count() == 1


def test_the_sweeper_task_fails_runs_that_stopped_reporting(db):
    old = timezone.now() - timedelta(seconds=recommender_settings.TRAINING_HEARTBEAT_TIMEOUT + 5)
    dead = ModelVersion.objects.create(status="running", heartbeat_at=old)
    assert tasks.fail_stale_runs.apply().get() == 1
    dead.refresh_from_db()
    assert dead.status == ModelVersion.Status.FAILED


@pytest.mark.parametrize("queue", [None, "gpu-training"])
def test_runs_are_sent_by_id_to_the_training_queue(
    db, monkeypatch, django_capture_on_commit_callbacks, queue
):
    sent = []

    class Result:
        id = "celery-task-1"

    def apply_async(**kwargs):
        sent.append(kwargs)
        return Result()

    monkeypatch.setattr(tasks.train, "apply_async", apply_async)
    with override_settings(RECOMMENDER={"TRAINING_QUEUE": queue} if queue else {}):
        with django_capture_on_commit_callbacks(execute=True):
            version = tasks.queue_training()
        expected = queue or "recommender-training"
        assert sent == [{"args": [version.pk], "queue": expected}]
        assert periodic_tasks()["recommender-train"]["options"] == {"queue": expected}
    version.refresh_from_db()
    assert version.task_id == "celery-task-1"
