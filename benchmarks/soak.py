"""Soak: the demo store under steady mixed traffic while a retrain runs and is promoted halfway.

The store runs as in production: gunicorn (2 sync workers) serving ``shop_demo.settings``
with DEBUG off, PostgreSQL, Redis (cache, sessions, throttles, Celery broker; the soak
starts a redis-server of its own unless --redis-url is given) and a Celery worker on the
training queue. Separate client processes play anonymous shoppers at a steady total rate:
the home page (personal carousel), product pages (similar and bought-together carousels),
tracker batches with event ids (retried like tracker.js on a 5xx, a 429 or a dropped
connection) and the recommendations API. At 30 % of the run a retrain is queued; it is
promoted when it finishes, about halfway.

Reported: requests served, errors (any non-2xx answer or failed connection, retried or not;
target 0), p50/p99 latency before the retrain, during it (until 30 s after the promotion)
and after, events sent vs stored (target: equal), how soon every web process served the
new version, and the RSS of the gunicorn workers after warm-up and at the end (target:
growth under 10 %). Prints the table and writes benchmarks/results/soak.md.

    .venv/bin/python -m benchmarks.soak [--minutes 10] [--rate 20] [--clients 4]
        [--database-url postgres://postgres@127.0.0.1:5432/recommender_soak] [--redis-url URL]
        [--smoke]  (a small store in recommender_soak_smoke, 18 s of traffic)

The database is created, migrated and seeded (``seed_demo``) when empty; it is a
benchmark-only database. Each run first trains a deliberately weak version (one epoch at
learning rate 0) and activates it, so that the retrain is promoted over it.
"""

import argparse
import datetime as dt
import http.client
import json
import multiprocessing
import os
import platform
import queue
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import loadavg, percentile, rss_kib
from benchmarks.loadclient import LOOPBACK, Shopper

RESULTS = harness.ROOT / "benchmarks" / "results" / "soak.md"
SETTINGS_MODULE = "shop_demo.settings"
EVENTS_PATH = "/api/recommender/events/"
RECS_PATH = "/api/recommender/recommendations/?limit=8&placement=home"
SWITCH_GRACE_S = 30.0  # "during" lasts until this long after the promotion
WEAK = {"TRAINING": {"epochs": 1, "lr": 0.0, "max_seconds": 60, "num_threads": 1}}
# --smoke: a small store, a short run and a short retrain; the same code in seconds (the
# test suite runs it).
SMOKE = dict(
    minutes=0.3,
    rate=6.0,
    clients=2,
    workers=1,
    train_at=0.2,
    train_seconds=2.0,
    seed_products=300,
    seed_shoppers=150,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--minutes", type=float, default=10.0, help="length of the run (default 10)"
    )
    parser.add_argument(
        "--rate", type=float, default=20.0, help="requests per second, all clients (default 20)"
    )
    parser.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers (default 2)")
    parser.add_argument(
        "--train-at",
        type=float,
        default=0.3,
        help="when the retrain is queued, as a share of the run",
    )
    parser.add_argument(
        "--train-seconds",
        type=float,
        default=None,
        help="the retrain's epoch budget (default: 15 %% of the run, so it is promoted about halfway)",
    )
    parser.add_argument(
        "--train-threads", type=int, default=1, help="torch threads of the retrain (default 1)"
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="benchmark-only database (default $SOAK_DATABASE_URL or "
        "postgres://postgres@127.0.0.1:5432/recommender_soak, with _smoke for --smoke)",
    )
    parser.add_argument(
        "--seed-products", type=int, default=None, help="seed_demo --products for an empty store"
    )
    parser.add_argument(
        "--seed-shoppers", type=int, default=None, help="seed_demo --shoppers for an empty store"
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("SOAK_REDIS_URL", ""),
        help="use this Redis instead of starting a private redis-server",
    )
    parser.add_argument(
        "--var-dir",
        default=os.environ.get(
            "SOAK_VAR_DIR", str(Path(tempfile.gettempdir()) / "recommender-soak")
        ),
        help="media (model artifacts) of the benchmark store",
    )
    parser.add_argument("--output", default=None, help=f"report file (default {RESULTS})")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, seconds: checks that the benchmark runs"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args(argv)  # explicit options still win over the smoke sizes
    if args.output is None:
        args.output = harness.smoke_output("soak") if args.smoke else str(RESULTS)
    if args.database_url is None:  # a smoke run seeds a small store: not the real run's
        args.database_url = os.environ.get(
            "SOAK_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/recommender_soak"
        ) + ("_smoke" if args.smoke else "")
    if args.minutes <= 0 or args.rate <= 0 or args.clients < 1:
        parser.error("--minutes and --rate must be positive, --clients at least 1")
    args.duration = args.minutes * 60.0
    if args.train_seconds is None:
        args.train_seconds = max(20.0, 0.15 * args.duration)
    return args


# ---------------------------------------------------------------- clients


class Recorder:
    """What one client saw: (wall time, kind, status or error name, latency s, model version)."""

    def __init__(self):
        self.requests = []
        self.errors = []
        self.sent_ids, self.accepted_ids = set(), set()
        self.pages_with_carousel = 0
        self.pages = 0

    def record(self, started, kind, status, latency, version=None, detail=""):
        self.requests.append((started, kind, status, latency, version))
        if status not in (200, 201) and len(self.errors) < 10:
            self.errors.append(f"{kind} {status} {detail}"[:300])


def _timed(recorder, kind, call, *args):
    started, t0 = time.time(), time.perf_counter()
    try:
        status, data = call(*args)
    except (http.client.HTTPException, OSError) as exc:
        recorder.record(
            started, kind, type(exc).__name__, time.perf_counter() - t0, detail=repr(exc)
        )
        return None, None
    recorder.record(
        started, kind, status, time.perf_counter() - t0, detail=data[:200] if status >= 300 else ""
    )
    return status, data


def _page(recorder, shopper, path, kind):
    status, data = _timed(recorder, kind, shopper.request, "GET", path)
    if status == 200:
        recorder.pages += 1
        recorder.pages_with_carousel += b'class="rec-carousel"' in data
    return status


def _send_events(recorder, shopper, events, tries=6):
    """Like tracker.js: the same batch (same event ids) again on a 5xx, a 429 or a dropped connection."""
    recorder.sent_ids.update(e["event_id"] for e in events)
    delay = 0.2
    for _ in range(tries):
        status, _ = _timed(recorder, "events", shopper.post_json, EVENTS_PATH, {"events": events})
        if status == 201:
            recorder.accepted_ids.update(e["event_id"] for e in events)
            return True
        if status is not None and 400 <= status < 500 and status != 429:
            return False
        time.sleep(delay)
        delay *= 2
    return False


def client_main(job, results):
    """Process entry point: play shoppers at ``job['rate']`` requests/s until ``job['end_at']``."""
    if job["host"] not in LOOPBACK:
        raise ValueError("the soak client only talks to the loopback interface")
    rng = random.Random(job["seed"])
    recorder = Recorder()
    products = job["products"]  # [(pk, slug)]
    interval = 1.0 / job["rate"]
    next_at = job["start_at"]
    shopper, cycles_left = None, 0

    def pace():
        nonlocal next_at
        now = time.time()
        if next_at > now:
            time.sleep(next_at - now)
        elif now - next_at > 1.0:  # fell behind: do not burst to catch up
            next_at = now
        next_at += interval
        return time.time() < job["end_at"]

    try:
        while pace():
            if shopper is None or cycles_left == 0:
                if shopper is not None:
                    shopper.close()
                started, t0 = time.time(), time.perf_counter()
                try:
                    shopper = Shopper(
                        job["host"], job["port"], "/"
                    )  # the home page, for the CSRF cookie
                except (http.client.HTTPException, OSError, RuntimeError) as exc:
                    recorder.record(
                        started,
                        "page",
                        type(exc).__name__,
                        time.perf_counter() - t0,
                        detail=repr(exc),
                    )
                    shopper = None
                    continue
                recorder.record(started, "page", 200, time.perf_counter() - t0)
                recorder.pages += 1
                cycles_left = job["cycles_per_shopper"]
                continue
            cycles_left -= 1
            a, b = rng.sample(products, 2)
            now_ms = int(time.time() * 1000)
            _page(recorder, shopper, f"/p/{a[1]}/", "page")
            if not pace():
                break
            _send_events(
                recorder,
                shopper,
                [
                    {
                        "kind": "view",
                        "item": a[0],
                        "event_id": str(uuid.uuid4()),
                        "occurred_at": now_ms,
                        "page": f"/p/{a[1]}/",
                    }
                ],
            )
            if not pace():
                break
            status, data = _timed(recorder, "api", shopper.request, "GET", RECS_PATH)
            if status == 200:
                answer = json.loads(data)
                recorder.requests[-1] = (*recorder.requests[-1][:4], answer.get("model_version"))
                shown = [item["id"] for item in answer.get("items", [])]
                if shown and rng.random() < 0.5:
                    if not pace():
                        break
                    _send_events(
                        recorder,
                        shopper,
                        [
                            {
                                "kind": "click",
                                "item": rng.choice(shown),
                                "event_id": str(uuid.uuid4()),
                                "placement": "home",
                                "recommendation_id": answer.get("recommendation_id"),
                                "occurred_at": int(time.time() * 1000),
                            }
                        ],
                    )
            if not pace():
                break
            _page(recorder, shopper, "/", "page")
            if not pace():
                break
            _page(recorder, shopper, f"/p/{b[1]}/", "page")
    finally:
        if shopper is not None:
            shopper.close()
    results.put(
        {
            "requests": recorder.requests,
            "errors": recorder.errors,
            "sent": sorted(recorder.sent_ids),
            "accepted": sorted(recorder.accepted_ids),
            "pages": recorder.pages,
            "pages_with_carousel": recorder.pages_with_carousel,
        }
    )


# ---------------------------------------------------------------- the store


def setup_django(args, env):
    harness.setup_django(env)
    from django.core.management import call_command

    from shop_demo.catalog.models import Product

    if not Product.objects.exists():
        print("Seeding the benchmark store (seed_demo) ...", flush=True)
        sizes = {"products": args.seed_products, "shoppers": args.seed_shoppers}
        call_command("seed_demo", verbosity=0, **{k: v for k, v in sizes.items() if v})


def sellable_products(limit=400):
    from shop_demo.catalog.models import Product

    return list(Product.objects.sellable().order_by("pk").values_list("pk", "slug")[:limit])


def weak_baseline():
    """Train (in this process) and activate a version that a real retrain will beat."""
    from recommender import training
    from recommender.models import ModelVersion

    # A benchmark-only database: runs left queued or running by an interrupted soak are over.
    ModelVersion.objects.running().update(
        status="failed", error="Abandoned by an interrupted soak run."
    )
    version = training.request_training(config=WEAK)
    version = training.run_training(version.pk)
    version.activate()
    return version


def retrain_config(args):
    return {
        "TRAINING": {
            "max_seconds": args.train_seconds,
            "epochs": 60,
            "patience": 4,
            "num_threads": args.train_threads,
        }
    }


def stored_count(event_ids):
    from recommender.models import Event

    ids = list(event_ids)
    return sum(
        Event.objects.filter(event_id__in=ids[i : i + 2000]).count()
        for i in range(0, len(ids), 2000)
    )


# ---------------------------------------------------------------- report


def summarise(requests):
    latencies = [r[3] * 1000 for r in requests]
    errors = sum(1 for r in requests if r[2] not in (200, 201))
    return {
        "requests": len(requests),
        "errors": errors,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "max": max(latencies, default=None),
    }


def ms(value):
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def build_report(args, run):
    t0, t_end = run["t0"], run["t_end"]
    requests = sorted(r for c in run["clients"] for r in c["requests"])
    trained_at, promoted_at = run["train_requested"], run.get("promoted")
    during_end = (promoted_at + SWITCH_GRACE_S) if promoted_at else t_end
    warm = t0 + run["warmup"]
    phases = [
        ("warm-up (workers import torch, load the model)", t0, warm),
        ("before the retrain", warm, trained_at),
        ("during (retrain running → promotion + 30 s)", trained_at, during_end),
        ("after", during_end, t_end),
        ("whole run", t0, t_end + 60),
    ]
    rows = []
    for label, start, end in phases:
        chunk = [r for r in requests if start <= r[0] < end]
        rows.append((label, f"{start - t0:.0f}–{min(end, t_end) - t0:.0f}", summarise(chunk)))
    kinds = [
        (kind, summarise([r for r in requests if r[1] == kind]))
        for kind in ("page", "events", "api")
    ]
    sent = set().union(*(set(c["sent"]) for c in run["clients"]))
    accepted = set().union(*(set(c["accepted"]) for c in run["clients"]))
    errors_seen = [e for c in run["clients"] for e in c["errors"]][:10]
    pages = sum(c["pages"] for c in run["clients"])
    carousels = sum(c["pages_with_carousel"] for c in run["clients"])
    rss0, rss1 = run["rss_start"], run["rss_end"]
    total0, total1 = sum(rss0.values()), sum(v for v in rss1.values() if v)
    growth = (total1 - total0) / total0 * 100 if total0 else float("nan")
    total = summarise(requests)
    versions = run["versions"]

    lines = [
        "# Soak: steady mixed traffic through a retrain and its promotion",
        "",
        f"- run: {run['started']:%Y-%m-%d %H:%M} UTC, {args.minutes:g} min of traffic, commit {run['commit']}, "
        f"{os.cpu_count()} CPU cores shared with other work; load average before/after: {run['load_before']} / {run['load_after']}",
        f"- command: `{run['command']}`",
        f"- Python {platform.python_version()}, Django {run['django']}; gunicorn {args.workers} sync workers serving "
        f"`{SETTINGS_MODULE}` (DEBUG off, persistent PostgreSQL connections, `ResilientRedisCache`, cached_db sessions, "
        f"default throttles); PostgreSQL `{args.database_url}`; Redis {run['redis']}; one Celery worker (solo pool) on "
        f"the training queue",
        f"- traffic: {args.clients} client processes, {args.rate:g} requests/s in all, anonymous shoppers "
        "(home page with the personal carousel, product pages with similar and bought-together carousels, "
        "tracker batches with event ids retried like tracker.js, the recommendations API); a new shopper every "
        "3 visits",
        f"- retrain: queued at {trained_at - t0:.0f} s ({', '.join(f'{k}={v}' for k, v in retrain_config(args)['TRAINING'].items())}) "
        f"over a deliberately weak active version v{versions['weak']}; "
        + (
            f"v{versions['retrain']} promoted at {promoted_at - t0:.0f} s ({run['decision']})"
            if promoted_at
            else f"v{versions['retrain']} NOT promoted: {run['retrain_status']} {run['decision'] or run['retrain_error']}"
        ),
        "",
        "| phase | seconds | requests | errors | p50 ms | p99 ms | max ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, window, s in rows:
        lines.append(
            f"| {label} | {window} | {s['requests']:,} | {s['errors']} | {ms(s['p50'])} | {ms(s['p99'])} | {ms(s['max'])} |"
        )
    lines += [
        "",
        "| request kind | requests | errors | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, s in kinds:
        lines.append(
            f"| {kind} | {s['requests']:,} | {s['errors']} | {ms(s['p50'])} | {ms(s['p99'])} | {ms(s['max'])} |"
        )
    switch = run.get("switch")
    lines += [
        "",
        f"- requests served: **{total['requests'] - total['errors']:,}** of {total['requests']:,}; "
        f"errors: **{total['errors']}** (target 0){'; first: ' + '; '.join(errors_seen) if errors_seen else ''}",
        f"- events: **{len(sent):,} sent, {len(accepted):,} acknowledged, {run['stored_sent']:,} stored** "
        f"(target: stored = sent: {'met' if run['stored_sent'] == len(sent) else 'MISSED'}); "
        f"events table grew by {run['events_growth']:,}",
        f"- pages: {pages:,}, {carousels:,} with a recommendation carousel",
        "- version switch: "
        + (
            f"first API answer from v{versions['retrain']} {switch['first'] - promoted_at:.1f} s after the promotion, "
            f"last answer from the old version {switch['last_old'] - promoted_at:+.1f} s after it"
            if switch and promoted_at
            else "not observed"
        ),
        f"- gunicorn workers' RSS after {run['warmup']:.0f} s warm-up: "
        + ", ".join(f"{v / 1024:.0f} MiB" for v in rss0.values())
        + f" (total {total0 / 1024:.0f} MiB); at the end: "
        + ", ".join(f"{v / 1024:.0f} MiB" if v else "gone" for v in rss1.values())
        + f" (total {total1 / 1024:.0f} MiB): growth **{growth:+.1f} %** (target under 10 %: {'met' if growth < 10 else 'MISSED'}); "
        f"peak during the run {run['rss_peak'] / 1024:.0f} MiB",
    ]
    if run.get("notes"):
        lines += ["", *[f"- {note}" for note in run["notes"]]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


def main(argv=None):
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    load_before = loadavg()
    log_dir = tempfile.mkdtemp(prefix="soak-logs-")
    services = []
    redis_server = None
    run = {
        "started": started,
        "load_before": load_before,
        "notes": [],
        "command": " ".join(
            [".venv/bin/python -m benchmarks.soak", *(argv if argv is not None else sys.argv[1:])]
        ),
    }
    try:
        if args.redis_url:
            redis_url, run["redis"] = args.redis_url, f"`{args.redis_url}`"
        else:
            binary = shutil.which("redis-server")
            if binary is None:
                raise SystemExit("redis-server is not installed; pass --redis-url")
            port = harness.free_port()
            redis_server = harness.Service(
                "redis",
                harness.redis_server_command(binary, port, log_dir),
                dict(os.environ),
                log_dir=log_dir,
            )
            redis_url = f"redis://127.0.0.1:{port}/0"
            run["redis"] = f"a private redis-server ({redis_url})"
            time.sleep(0.5)
        harness.ensure_database(args.database_url)
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
            "DATABASE_URL": args.database_url,
            "REDIS_URL": redis_url,
            "DJANGO_DEBUG": "0",
            "SHOP_VAR_DIR": args.var_dir,
            "RECOMMENDER_LOG_LEVEL": "WARNING",
        }
        setup_django(args, env)
        import django
        from django.db import connection

        from recommender import tasks
        from recommender.models import Event, ModelVersion

        run["django"] = django.get_version()
        run["commit"] = harness.git_commit()
        print("Training the weak starting version ...", flush=True)
        weak = weak_baseline()
        products = sellable_products()
        connection.close()

        worker = harness.CeleryWorker(
            env, ["recommender-training", "celery"], loglevel="WARNING", log_dir=log_dir
        )
        services.append(worker)
        web = harness.Gunicorn(env, args.workers, timeout=60, log_dir=log_dir)
        services.append(web)
        web.wait_ready("/", timeout=90)
        web_port = web.port
        worker_pids = web.worker_pids()
        events_before = Event.objects.count()

        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()
        t0 = time.time() + 2.0
        t_end = t0 + args.duration
        run.update(t0=t0, t_end=t_end)
        clients = [
            ctx.Process(
                target=client_main,
                args=(
                    {
                        "host": "127.0.0.1",
                        "port": web_port,
                        "seed": 1000 + i,
                        "products": products,
                        "rate": args.rate / args.clients,
                        "start_at": t0 + i * 0.05,
                        "end_at": t_end,
                        "cycles_per_shopper": 3,
                    },
                    results,
                ),
                daemon=True,
            )
            for i in range(args.clients)
        ]
        for client in clients:
            client.start()

        warmup = min(30.0, 0.05 * args.duration)
        train_at = t0 + args.train_at * args.duration
        run["warmup"] = warmup
        rss_start, rss_peak, retrain = None, 0, None
        next_report = t0
        print(
            f"Soak: {args.minutes:g} min at {args.rate:g} requests/s against http://127.0.0.1:{web_port}/ "
            f"(logs in {log_dir})",
            flush=True,
        )
        while time.time() < t_end:
            now = time.time()
            rss = {pid: rss_kib(pid) for pid in worker_pids}
            rss_peak = max(rss_peak, sum(v for v in rss.values() if v))
            if rss_start is None and now >= t0 + warmup:
                rss_start = rss
            if retrain is None and now >= train_at:
                retrain = tasks.queue_training(
                    ModelVersion.Trigger.ADMIN, config=retrain_config(args)
                )
                run["train_requested"] = time.time()
                print(f"  {now - t0:5.0f} s: retrain v{retrain.pk} queued", flush=True)
            if retrain is not None and "promoted" not in run:
                retrain.refresh_from_db()
                if retrain.is_active:
                    run["promoted"] = retrain.activated_at.timestamp()
                    print(f"  {run['promoted'] - t0:5.0f} s: v{retrain.pk} promoted", flush=True)
                elif (
                    retrain.status in ("ready", "failed")
                    and retrain.decision + retrain.error
                    and "settled" not in run
                ):
                    run["settled"] = True
                    print(
                        f"  {now - t0:5.0f} s: v{retrain.pk} {retrain.status}, not promoted: "
                        f"{retrain.decision or retrain.error}",
                        flush=True,
                    )
            if now >= next_report:
                print(
                    f"  {now - t0:5.0f} s: gunicorn RSS {sum(v for v in rss.values() if v) / 1024:.0f} MiB, "
                    f"load {loadavg()}",
                    flush=True,
                )
                next_report += 60
            for service in services:
                if not service.alive():
                    raise RuntimeError(f"{service.name} exited during the soak:\n{service.tail()}")
            connection.close()  # one short connection per poll: the parent holds none while it sleeps
            time.sleep(1.0)
        run["rss_end"] = {pid: rss_kib(pid) for pid in worker_pids}
        run["rss_start"] = rss_start or run["rss_end"]
        run["rss_peak"] = rss_peak
        if "train_requested" not in run:
            run["train_requested"] = t_end
        client_results = []
        deadline = time.monotonic() + 120
        while len(client_results) < len(clients):
            try:
                client_results.append(results.get(timeout=max(1.0, deadline - time.monotonic())))
            except queue.Empty:
                raise RuntimeError("the soak clients did not report") from None
        for client in clients:
            client.join(timeout=10)
        run["clients"] = client_results
        run["load_after"] = loadavg()
        sent = set().union(*(set(c["sent"]) for c in client_results))
        run["stored_sent"] = stored_count(sent)
        run["events_growth"] = Event.objects.count() - events_before
        if retrain is not None:
            retrain.refresh_from_db()
            run["decision"], run["retrain_error"], run["retrain_status"] = (
                retrain.decision,
                retrain.error,
                retrain.status,
            )
        run["versions"] = {"weak": weak.pk, "retrain": retrain.pk if retrain else None}
        if run.get("promoted"):
            answers = sorted(
                (r[0], r[4])
                for c in client_results
                for r in c["requests"]
                if r[1] == "api" and r[4]
            )
            new = [t for t, v in answers if v == retrain.pk]
            old = [t for t, v in answers if v != retrain.pk and t >= run["train_requested"]]
            if new:
                run["switch"] = {"first": new[0], "last_old": max(old) if old else run["promoted"]}
        report = build_report(args, run)
        print("\n" + report)
        Path(args.output).write_text(report)
        print(f"Written to {args.output}")
    finally:
        for service in reversed(services):
            service.stop()
        if redis_server is not None:
            redis_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
