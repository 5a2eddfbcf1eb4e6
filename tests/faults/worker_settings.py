"""Settings of a Celery worker started by a fault test: the test settings, a private broker.

Environment (set by tests/faults/processes.py): FAULTS_BROKER_URL, the test's own
redis-server; FAULTS_RECOMMENDER, JSON merged over RECOMMENDER (a short heartbeat timeout).
Unacknowledged messages become visible again after 4 s, so a message whose worker was
killed is redelivered within the test instead of after kombu's default hour.
"""

import json
import os

from tests.settings import *  # noqa: F403
from tests.settings import RECOMMENDER

CELERY_BROKER_URL = os.environ["FAULTS_BROKER_URL"]
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": 4,
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
}
RECOMMENDER = {**RECOMMENDER, **json.loads(os.environ.get("FAULTS_RECOMMENDER") or "{}")}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"recommender": {"handlers": ["console"], "level": "INFO"}},
}
