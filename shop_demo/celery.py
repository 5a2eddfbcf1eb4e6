"""The demo store's Celery app: configured from Django settings (CELERY_*)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop_demo.settings")

app = Celery("shop_demo")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def add_recommender_schedule(sender, **kwargs):
    from recommender.schedule import periodic_tasks

    sender.conf.beat_schedule.update(periodic_tasks())
