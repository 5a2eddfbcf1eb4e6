"""`recommender` installs from a wheel into a different Django project and works there."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOOKSHOP = ROOT / "tests" / "other_store"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return next(out.glob("*.whl"))


def test_the_wheel_carries_migrations_templates_and_static_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "recommender/migrations/0001_initial.py" in names
    assert "recommender/static/recommender/tracker.js" in names
    assert "recommender/ml/nets.py" in names
    assert not any(name.startswith(("shop_demo/", "tests/", "benchmarks/")) for name in names)


def test_a_bookshop_installs_migrates_records_events_and_sees_the_admin(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    work = tmp_path / "bookshop"
    shutil.copytree(BOOKSHOP, work, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")}
    # Only the installed wheel and the bookshop are importable, not this checkout.
    env.update(PYTHONPATH=f"{site}{os.pathsep}{work}", BOOKSHOP_DIR=str(work))
    done = subprocess.run(
        [sys.executable, str(work / "smoke.py")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["recommender_file"].startswith(str(site))
    assert found["api_status"] == 201 and found["api_body"] == {"stored": 2, "duplicates": 0}
    assert found["bad_status"] == 400
    assert found["stored"] == [["purchase", "9780140449136"], ["view", "9780140449136"]]
    assert found["admin_lists_recommender"] and found["events_page"] == 200
