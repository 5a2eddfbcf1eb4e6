"""A promoted version is served by every web process within 5 s, without restarts."""

import os
import subprocess
import sys
import threading
import time
from decimal import Decimal

import pytest
from django.conf import settings
from django.db import connection

from shop_demo.catalog.models import Category, Product

from .serving_fixtures import install_version

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


class Watcher:
    """A process running tests/version_watcher.py; remembers the last version it printed."""

    def __init__(self):
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "RECOMMENDER_TEST_DB_NAME": connection.settings_dict["NAME"],
            "RECOMMENDER_TEST_VAR_DIR": str(settings.VAR_DIR),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.version_watcher", "60"],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.last = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.last = int(line)

    def wait_for(self, version_id, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.last == version_id:
                return True
            time.sleep(0.05)
        return False

    def stop(self):
        self.process.kill()
        self.process.wait()


def test_two_processes_switch_to_a_promoted_version_within_five_seconds():
    category = Category.objects.create(name="C", slug="c")
    products = [
        Product.objects.create(
            category=category, name=f"P{i}", slug=f"p{i}", price=Decimal(1), stock=3
        )
        for i in range(10)
    ]
    first = install_version(products, seed=1)
    watchers = [Watcher(), Watcher()]
    try:
        assert all(w.wait_for(first.pk, 60) for w in watchers), (
            "the watchers never served the first version"
        )
        second = install_version(products, seed=2)
        promoted = time.monotonic()
        assert all(w.wait_for(second.pk, 5) for w in watchers)
        switch_seconds = time.monotonic() - promoted
        first.activate()  # and a rollback, just as fast
        assert all(w.wait_for(first.pk, 5) for w in watchers)
    finally:
        for w in watchers:
            w.stop()
    assert switch_seconds < 5
