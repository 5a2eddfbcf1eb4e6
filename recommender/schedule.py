"""Celery beat entries of the recommender, for a store's Celery app.

In the store's ``celery.py``::

    @app.on_after_configure.connect
    def add_recommender_schedule(sender, **kwargs):
        from recommender.schedule import periodic_tasks
        sender.conf.beat_schedule.update(periodic_tasks())
"""

from celery.schedules import crontab

from .conf import recommender_settings


def periodic_tasks():
    """Nightly retraining (RECOMMENDER["TRAIN_SCHEDULE"]), the stale-run sweeper, and the
    daily deletion of recommendation lists older than RECOMMENDATION_RETENTION_DAYS.

    All go to TRAINING_QUEUE, the one queue the documented worker consumes: a sweeper on
    the default queue never runs there, and a dead run then keeps the lock forever.
    """
    queue = {"queue": recommender_settings.TRAINING_QUEUE}
    return {
        "recommender-train": {
            "task": "recommender.train",
            "schedule": crontab(**recommender_settings.TRAIN_SCHEDULE),
            "options": queue,
        },
        "recommender-fail-stale-runs": {
            "task": "recommender.fail_stale_runs",
            "schedule": crontab(minute="*/5"),
            "options": queue,
        },
        "recommender-delete-old-recommendations": {
            "task": "recommender.delete_old_recommendations",
            "schedule": crontab(minute="45", hour="4"),
            "options": queue,
        },
    }
