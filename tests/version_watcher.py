"""A stand-in web process: prints the version it serves, every 0.1 s, for 30 s at most."""

import os
import sys
import time

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

from recommender.serving import active_model  # noqa: E402

deadline = time.monotonic() + float(sys.argv[1] if len(sys.argv) > 1 else 30)
while time.monotonic() < deadline:
    loaded = active_model.get()
    print(loaded.version_id if loaded else 0, flush=True)
    time.sleep(0.1)
