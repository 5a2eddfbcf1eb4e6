"""``recommender.ml`` is pure PyTorch + NumPy, and so are its tests: they run with no
Django settings and no services (``make test-ml``)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ml_tests_run_without_django_settings_or_services():
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    # Even where CI demands every service, these tests ask for none.
    env["RECOMMENDER_REQUIRE_SERVICES"] = "1"
    env["TEST_POSTGRES_URL"] = "postgres://postgres@127.0.0.1:1/unreachable"
    env["TEST_REDIS_URL"] = "redis://127.0.0.1:1/0"
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/ml/test_metrics.py", "-q", "-p", "no:django"]
        + ["-p", "no:cacheprovider"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert " passed" in out.stdout
