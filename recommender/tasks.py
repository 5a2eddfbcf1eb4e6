"""Celery tasks: thin, idempotent, they take ids and call ``recommender.training``."""

from celery import shared_task

from . import training


@shared_task(name="recommender.train", acks_late=True, reject_on_worker_lost=False, ignore_result=True)
def train(version_id=None):
    """Train the queued version ``version_id``; without one (beat), queue and run a new one."""
    if version_id is None:
        try:
            version = training.request_training(training.ModelVersion.Trigger.SCHEDULE, enqueue=False)
        except training.TrainingInProgress:
            return None
        version_id = version.pk
    training.run_training(version_id)
    return version_id


@shared_task(name="recommender.fail_stale_runs", ignore_result=True)
def fail_stale_runs():
    """Periodic: mark runs whose worker died as failed, which frees the training lock."""
    return training.fail_stale_runs()
