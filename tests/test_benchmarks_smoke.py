"""Every benchmark's ``--smoke`` run: tiny sizes through the same code, so that the test suite
catches a benchmark that no longer runs (the serving benchmark once died at 54,542 items on a
model attribute the app had dropped, and nothing noticed until the README's table could not
be reproduced).

The six runs start together (most of their time is process start-up and paced traffic)
and each test waits for its own. They use throwaway PostgreSQL databases of this test
process, a private redis-server, and write their reports under pytest's temporary directory.
"""

import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from django.conf import settings

from benchmarks.harness import ROOT
from tests.faults.services import PrivateRedis

pytestmark = pytest.mark.slow
SERVICES = [pytest.mark.postgres, pytest.mark.redis]
TIMEOUT_S = 600  # a generous bound for a loaded machine; each run takes seconds when idle

# benchmark: (report file name or None for stdout, what the report must show)
EXPECTED = {
    "quality": (
        "quality.md",
        [
            "| CNN+DNN |",
            "| CNN+DNN + α·item-kNN (served) |",
            "| CNN + attention (`cnn_dnn`) |",  # the --ablation table
        ],
    ),
    "train_step": (None, ["| 512 | 1024 sampled negatives |"]),
    "reasons": (None, ["| history events |", "| 50 |"]),
    "ingest": ("ingest.md", ["record_many / raw:", "| sync | API, batch of 100 |"]),
    # The summary row comes from model_share's IVF branch, where the attribute error was.
    # miss_arm: the cache miss with an experiment running (--smoke runs one at 2,000 items).
    "serving": (
        "serving.md",
        [
            "| 2,000 items | 1 | miss:",
            "the model's history summary",
            "| 2,000 items | 1 | miss_arm:",
            "cache miss with an experiment running (2 version arms) p99 within 10 %",
        ],
    ),
    "soak": ("soak.md", ["# Soak", "- events: **"]),
}


def _database_url(name):
    return urlparse(settings.POSTGRES_URL)._replace(path=f"/{name}").geturl()


def _drop_databases(prefix):
    import psycopg
    from psycopg import sql

    with psycopg.connect(_database_url("postgres"), autocommit=True) as conn:
        names = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", [prefix + "%"]
        ).fetchall()
        for (name,) in names:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Start every benchmark's smoke run at once; {name: (process, report path, log path)}."""
    work = tmp_path_factory.mktemp("bench-smoke")
    with_services = all(settings.SERVICES.values())
    prefix = f"bench_smoke_{os.getpid()}_"
    redis = PrivateRedis().start() if with_services else None
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    options = {
        "quality": ["--ablation"],
        "train_step": [],
        "reasons": [],
        "ingest": ["--database-url", _database_url(prefix + "ingest")],
        "serving": [
            "--database-url",
            _database_url(prefix + "serving"),
            "--var-dir",
            str(work / "serving-var"),
        ],
        "soak": [
            "--database-url",
            _database_url(prefix + "soak"),
            "--var-dir",
            str(work / "soak-var"),
        ],
    }
    runs = {}
    try:
        for name, extra in options.items():
            if extra and not with_services:
                continue
            report = work / f"{name}.md"
            if name in ("ingest", "serving"):
                extra += ["--redis-url", redis.url]
            if EXPECTED[name][0] is not None:
                extra += ["--out" if name == "quality" else "--output", str(report)]
            log = work / f"{name}.log"
            with open(log, "wb") as out:
                process = subprocess.Popen(
                    [sys.executable, "-m", f"benchmarks.{name}", "--smoke", *extra],
                    cwd=ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            runs[name] = (process, report, log)
        yield runs
    finally:
        for process, _, _ in runs.values():
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if redis is not None:
            redis.stop()
        if with_services:
            _drop_databases(prefix)


@pytest.mark.parametrize(
    "name",
    [
        "quality",
        "train_step",
        "reasons",
        *(pytest.param(name, marks=SERVICES) for name in ("ingest", "serving", "soak")),
    ],
)
def test_the_benchmark_runs_in_smoke_mode(smoke_runs, name):
    process, report, log = smoke_runs[name]
    started = time.monotonic()
    try:
        code = process.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"{name} --smoke still running after {TIMEOUT_S} s:\n{_tail(log)}")
    assert code == 0, f"{name} --smoke exited with {code}:\n{_tail(log)}"
    text = report.read_text() if EXPECTED[name][0] else Path(log).read_text(errors="replace")
    for expected in EXPECTED[name][1]:
        assert expected in text, f"{name}: {expected!r} not in the report:\n{text[-3000:]}"
    print(f"{name} --smoke done {time.monotonic() - started:.0f} s after this test began waiting")


def _tail(log, lines=60):
    return "\n".join(Path(log).read_text(errors="replace").splitlines()[-lines:])


def test_a_quality_run_cut_short_keeps_a_partial_report(tmp_path):
    """The report written after each model says what is still to run; the last one does not."""
    from types import SimpleNamespace

    from benchmarks import quality

    args = SimpleNamespace(
        out=str(tmp_path / "q.md"), data="x.txt", threads=1, seed=0, refit=False, ablation=True
    )
    seqs = type("Seqs", (), {"n_items": 3, "n_events": 9, "__len__": lambda self: 2})()
    row = ("item-kNN", 0.5, 0.25, 0.5, 0.25, 0.9, 60.0, "-", None)
    table = quality.results_table([row], {}, args)  # no net trained yet: no ablation rows
    quality.write_report(args, [], seqs, table, ["log line"], pending=["cnn_dnn"])
    partial = Path(args.out).read_text()
    assert "Partial: still to run: cnn_dnn" in partial and "| item-kNN | 0.5000 |" in partial
    quality.write_report(args, [], seqs, table, ["log line"])
    assert "Partial" not in Path(args.out).read_text()
