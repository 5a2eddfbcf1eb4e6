"""Stores whose items are keyed by a UUID or a slug work end to end, like integer-keyed ones.

``RECOMMENDER_ITEM_MODEL`` is fixed by migrations, so each store is its own project
(``tests/keyed_stores``) run in a subprocess with its own database: events over the API
and ``record_many``, training, every serving path, the admin, export and re-import and
forgetting a shopper (``scenario.py``, which checks each step and reports every failure).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "tests" / "keyed_stores"
ITEM_MODELS = {"uuid": "keyedshop.Gadget", "slug": "keyedshop.Tea"}
STEPS = [
    "check",
    "record_many",
    "api_events",
    "popular_without_model",
    "train",
    "recommendations",
    "similar",
    "bought_together",
    "popular",
    "template_tags",
    "admin",
    "evaluate",
    "export_import",
    "forget",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store_runs(tmp_path_factory):
    """Both stores' scenarios, run side by side (each takes 10-20 s, mostly importing torch)."""
    base = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE",)}
    base["PYTHONPATH"] = os.pathsep.join([str(STORE), str(ROOT)])
    if settings.SERVICES["postgres"]:
        base["KEYED_DATABASE_URL"] = settings.POSTGRES_URL
    runs = {}
    for key, model in ITEM_MODELS.items():
        env = {
            **base,
            "KEYED_ITEM_MODEL": model,
            "KEYED_VAR_DIR": str(tmp_path_factory.mktemp(f"{key}-store")),
        }
        runs[key] = subprocess.Popen(
            [sys.executable, str(STORE / "scenario.py")],
            cwd=STORE,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    done = {}
    for key, process in runs.items():
        try:
            out, err = process.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        done[key] = (process.returncode, out, err)
    return done


@pytest.mark.parametrize("key", list(ITEM_MODELS))
def test_a_store_keyed_by_uuid_or_slug_records_trains_serves_exports_and_forgets(store_runs, key):
    code, out, err = store_runs[key]
    assert code == 0, err[-3000:]
    found = json.loads(out.strip().splitlines()[-1])
    assert found["pk_field"] == {"uuid": "UUIDField", "slug": "SlugField"}[key]
    expected_database = "postgresql" if settings.SERVICES["postgres"] else "sqlite"
    assert found["database"] == expected_database
    failed = "\n\n".join(f"--- {name}: {why}" for name, why in found["failures"].items())
    assert not found["failures"], f"{key}-keyed store, steps failed:\n{failed}"
    assert found["passed"] == STEPS
