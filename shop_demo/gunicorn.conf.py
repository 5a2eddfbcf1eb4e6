"""gunicorn settings of the demo store: ``gunicorn -c shop_demo/gunicorn.conf.py``.

Each worker loads the active model as soon as it starts (``post_worker_init``), so no
shopper waits for torch and the model after a deploy or a worker restart. Command-line
options (``--bind``, ``--workers``) override these.
"""

import os

wsgi_app = "shop_demo.wsgi:application"
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
timeout = 30


def post_worker_init(worker):
    """Load the model before this worker accepts requests (the app is loaded by now)."""
    from django.db import connections

    from recommender.serving import warm_up

    try:
        version = warm_up()
    except Exception:  # the database may be down: the first request loads the model instead
        worker.log.exception("Worker %s could not load the model at start", worker.pid)
        return
    finally:
        connections.close_all()  # not held idle until the first request
    if version is None:
        worker.log.info("Worker %s: no active model version (popular items)", worker.pid)
    else:
        worker.log.info(
            "Worker %s: serving model version v%s, loaded at start", worker.pid, version
        )
