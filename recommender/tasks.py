"""Celery tasks: thin, idempotent, they take ids and call ``recommender.training``.

Every task here runs on RECOMMENDER["TRAINING_QUEUE"]: training.request_training and the
beat entries (schedule.py) name it when they send, and a store routes ``recommender.*``
there for anything else that sends them (``recommender_status`` checks both).
"""

from celery import shared_task

from . import serving, training


@shared_task(
    bind=True,
    name="recommender.train",
    acks_late=True,
    reject_on_worker_lost=False,
    ignore_result=True,
)
def train(self, version_id=None):
    """Train the queued version ``version_id``; without one (beat), queue and run a new one.

    acks_late: a message whose worker died is delivered again. With an id, run_training's
    claim makes that a no-op. Without one, the run that this very message created (found
    by its task id) is the one to claim, so a redelivered beat message never starts a
    second training.
    """
    if version_id is None:
        task_id = self.request.id or ""
        mine = training.ModelVersion.objects.filter(task_id=task_id).first() if task_id else None
        if mine is not None:
            version_id = mine.pk
        else:
            try:
                version = training.request_training(
                    training.ModelVersion.Trigger.SCHEDULE, enqueue=False, task_id=task_id
                )
            except training.TrainingInProgress:
                return None
            version_id = version.pk
    training.run_training(version_id)
    return version_id


@shared_task(name="recommender.fail_stale_runs", ignore_result=True)
def fail_stale_runs():
    """Periodic: mark runs whose worker died as failed, which frees the training lock."""
    return training.fail_stale_runs()


@shared_task(name="recommender.delete_old_recommendations", ignore_result=True)
def delete_old_recommendations():
    """Periodic: keep the Recommendation table to RECOMMENDATION_RETENTION_DAYS."""
    return serving.delete_old_recommendations()
