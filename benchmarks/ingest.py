"""Ingest throughput: ``events.record_many`` and the events endpoint, each beside its bare minimum.

1. In process, against PostgreSQL: batches of 100 through ``record_many`` beside a raw
   ``Event.objects.bulk_create`` of the same rows (new event ids each time), interleaved
   in rounds (ABBA order) so that noise from other work on the machine hits both alike.
2. Over HTTP: gunicorn (2 sync workers, then 2 gthread workers) serving the demo store
   (benchmarks.bench_site.settings: DEBUG off, PostgreSQL, Redis cache/sessions/throttle, no
   throttle cut-off) and a bounded client in separate processes acting as
   anonymous browser shoppers (page GET for the CSRF cookie, then POSTs with the session
   cookie, X-CSRFToken, Origin and Referer). Single events and batches of 100 to
   POST /api/recommender/events/, beside a bare Django view that inserts one row with
   ``objects.create``. Scenarios are interleaved in rounds, too.

Besides rates it reports CPU per request of each process group (client, gunicorn workers,
PostgreSQL backends) read from /proc, which says where the time goes and is far less
disturbed by other work on the machine than the wall-clock rates.

    .venv/bin/python -m benchmarks.ingest [--events 50000] [--requests 3000]
        [--concurrency 4] [--database-url postgres://postgres@127.0.0.1:5432/recommender_bench]
        [--worker-class sync,gthread] [--throttle-rate none] [--skip-http | --skip-record-many]
        [--smoke]  (tiny sizes, seconds; the report goes to a temporary directory)

It creates and migrates the database, seeds a catalogue when there is none, empties the
events and sessions tables of that (benchmark-only) database, and writes the table to
benchmarks/results/ingest.md.
"""

import argparse
import datetime as dt
import os
import platform
import random
import secrets
import shlex
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

from benchmarks import harness, loadclient
from benchmarks.harness import cpu_delta, percentile, proc_cpu, proc_cpu_seconds

SETTINGS_MODULE = "benchmarks.bench_site.settings"
RESULTS = harness.ROOT / "benchmarks" / "results" / "ingest.md"
BATCH = 100
# --smoke: tiny sizes through the same code, in seconds (the test suite runs it).
SMOKE = dict(
    events=1000,
    requests=24,
    batch_requests=4,
    concurrency=2,
    rounds=1,
    products=200,
    time_limit=60.0,
    worker_class="sync",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events", type=int, default=50_000, help="events per side in part 1 (default 50000)"
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=3000,
        help="requests per single-event HTTP scenario (default 3000)",
    )
    parser.add_argument(
        "--batch-requests",
        type=int,
        default=None,
        help="requests of 100 events to the API (default: --requests / 10)",
    )
    parser.add_argument("--concurrency", type=int, default=4, help="client processes (default 4)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds of HTTP scenarios (default 3)"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/recommender_bench"
        ),
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
    )
    parser.add_argument(
        "--products", type=int, default=3000, help="catalogue size to seed (default 3000)"
    )
    parser.add_argument(
        "--worker-class",
        default="sync,gthread",
        help="gunicorn worker classes to measure, comma-separated (default sync,gthread)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4, help="threads per gthread worker")
    parser.add_argument(
        "--throttle-rate",
        default="1000000/min",
        help="EVENTS_THROTTLE_RATE while benchmarking; 'none' disables the throttle",
    )
    parser.add_argument(
        "--requests-per-shopper",
        type=int,
        default=50,
        help="POSTs per simulated browser session before a new shopper starts",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=240.0,
        help="deadline in seconds for the HTTP part as a whole",
    )
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-record-many", action="store_true")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile record_many and print the top functions"
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
        args.output = harness.smoke_output("ingest") if args.smoke else str(RESULTS)
    if args.batch_requests is None:
        args.batch_requests = max(args.requests // 10, args.concurrency * args.rounds)
    args.worker_classes = [w.strip() for w in args.worker_class.split(",") if w.strip()]
    if not args.worker_classes or set(args.worker_classes) - {"sync", "gthread"}:
        parser.error("--worker-class takes sync, gthread or both, comma-separated")
    if urlparse(args.database_url).scheme not in ("postgres", "postgresql"):
        parser.error("--database-url must be a PostgreSQL URL")
    return args


# ---------------------------------------------------------------- set-up


def setup_django(args):
    harness.setup_django(
        {
            "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
            "DATABASE_URL": args.database_url,
            "REDIS_URL": args.redis_url,
            "BENCH_EVENTS_THROTTLE_RATE": args.throttle_rate,
            "DJANGO_DEBUG": "0",
        }
    )


def seed_catalogue(n_products):
    """A few thousand active products in 20 categories; returns their primary keys."""
    from decimal import Decimal

    from shop_demo.catalog.models import Category, Product

    missing = n_products - Product.objects.filter(is_active=True).count()
    if missing > 0:
        rng = random.Random(7)
        categories = [
            Category.objects.get_or_create(
                slug=f"bench-{i}", defaults={"name": f"Bench {i}", "hue": i * 17 % 360}
            )[0]
            for i in range(20)
        ]
        start = Product.objects.count()
        Product.objects.bulk_create(
            [
                Product(
                    category=rng.choice(categories),
                    name=f"Bench product {i}",
                    slug=f"bench-product-{i}-{secrets.token_hex(3)}",
                    price=Decimal(rng.randint(100, 20000)) / 100,
                    stock=rng.randint(0, 50),
                    role=rng.choice(list(Product.Role.values)),
                )
                for i in range(start, start + missing)
            ],
            batch_size=1000,
        )
    return list(
        Product.objects.filter(is_active=True)
        .order_by("pk")
        .values_list("pk", flat=True)[:n_products]
    )


def reset_events():
    from django.db import connection

    from recommender.models import Event

    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {Event._meta.db_table} RESTART IDENTITY")
        cursor.execute("TRUNCATE django_session")
        cursor.execute(f"VACUUM ANALYZE {Event._meta.db_table}")


def event_count():
    from recommender.models import Event

    return Event.objects.count()


# ---------------------------------------------------------------- part 1: record_many


def make_rows(rng, items, n_events):
    """Fresh rows in batches of 100, one anonymous shopper per batch."""
    now = dt.datetime.now(dt.UTC)
    kinds = loadclient.KINDS
    batches = []
    for start in range(0, n_events, BATCH):
        session = secrets.token_hex(16)
        rows = []
        for _ in range(min(BATCH, n_events - start)):
            kind = rng.choice(kinds)
            rows.append(
                (
                    uuid.uuid4(),
                    session,
                    rng.choice(items),
                    kind,
                    float(rng.randint(1, 3)) if kind in ("add_to_cart", "purchase") else None,
                    now - dt.timedelta(milliseconds=rng.randint(0, 600_000)),
                )
            )
        batches.append(rows)
    return batches


def as_payload(rows):
    """The event dicts a tracker would send: ids as strings, times as epoch milliseconds."""
    events = []
    for event_id, _session, item, kind, value, when in rows:
        event = {
            "kind": kind,
            "item": item,
            "event_id": str(event_id),
            "occurred_at": int(when.timestamp() * 1000),
        }
        if value is not None:
            event["value"] = value
        events.append(event)
    return rows[0][1], events


def bench_record_many(args, items, progress):
    from recommender import events as recorder
    from recommender.models import Event

    rng = random.Random(11)
    rounds = 10 if args.events >= 10 * BATCH else 1
    warm = 3
    rm_batches = [as_payload(rows) for rows in make_rows(rng, items, args.events + warm * BATCH)]
    raw_batches = make_rows(rng, items, args.events + warm * BATCH)
    pg_pid = harness.own_backend_pid()

    def run_record_many(batches):
        for session, events in batches:
            recorder.record_many(events, session_key=session)
            progress.update(1)

    def run_raw(batches):
        for rows in batches:
            Event.objects.bulk_create(
                [
                    Event(event_id=e, session_key=s, item_id=i, kind=k, value=v, occurred_at=w)
                    for e, s, i, k, v, w in rows
                ]
            )
            progress.update(1)

    sides = {
        "record_many": (run_record_many, rm_batches[warm:]),
        "raw": (run_raw, raw_batches[warm:]),
    }
    run_record_many(rm_batches[:warm])
    run_raw(raw_batches[:warm])
    totals = {
        name: {"wall": 0.0, "py": 0.0, "pg": 0.0, "events": 0, "rounds": []} for name in sides
    }
    totals["n_rounds"] = rounds
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
    before = event_count()
    for r in range(rounds):
        order = ["record_many", "raw"] if r % 2 == 0 else ["raw", "record_many"]
        for name in order:
            run, batches = sides[name]
            chunk = batches[r::rounds]
            pg0, py0, t0 = proc_cpu_seconds([pg_pid]), time.process_time(), time.perf_counter()
            if profiler is not None and name == "record_many":
                profiler.enable()
            run(chunk)
            if profiler is not None:
                profiler.disable()
            wall = time.perf_counter() - t0
            total = totals[name]
            total["wall"] += wall
            total["py"] += time.process_time() - py0
            total["pg"] += proc_cpu_seconds([pg_pid]) - pg0
            events = sum(len(b[1]) if name == "record_many" else len(b) for b in chunk)
            total["events"] += events
            total["rounds"].append(events / wall)
    stored = event_count() - before
    expected = totals["record_many"]["events"] + totals["raw"]["events"]
    if stored != expected:
        raise RuntimeError(f"part 1 stored {stored} rows, expected {expected}")
    if profiler is not None:
        import pstats

        progress.write("cProfile of record_many (top 25 by cumulative time):")
        pstats.Stats(profiler, stream=_TqdmStream(progress)).sort_stats("cumulative").print_stats(
            25
        )
    return totals


class _TqdmStream:
    def __init__(self, bar):
        self.bar = bar

    def write(self, text):
        if text.strip():
            self.bar.write(text.rstrip("\n"))

    def flush(self):
        pass


# ---------------------------------------------------------------- part 2: HTTP


def start_server(args, worker_class):
    """gunicorn serving the benchmark store, ready (every worker forked and answering)."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
        "DATABASE_URL": args.database_url,
        "REDIS_URL": args.redis_url,
        "BENCH_EVENTS_THROTTLE_RATE": args.throttle_rate,
        "DJANGO_DEBUG": "0",
    }
    server = harness.Gunicorn(env, args.workers, worker_class, args.threads, timeout=60)
    try:
        return server.wait_ready("/bench/ping/")
    except BaseException:
        server.stop()
        raise


SCENARIOS = [
    # key, label, path, events per request, wrapped in {"events": [...]}
    ("bare", "bare view, 1 event (objects.create)", "/bench/bare-event/", 1, False),
    ("single", "API, 1 event", "/api/recommender/events/", 1, False),
    ("batch", "API, batch of 100", "/api/recommender/events/", BATCH, True),
]


def bench_http(args, items, clients, worker_class, time_limit, progress_factory):
    """All scenarios against one gunicorn, interleaved in rounds; stops early at ``time_limit``."""
    server = start_server(args, worker_class)
    try:
        counts = {
            key: args.requests if batch == 1 else args.batch_requests
            for key, _, _, batch, _ in SCENARIOS
        }
        per_round = {key: max(args.concurrency, counts[key] // args.rounds) for key in counts}
        deadline = time.monotonic() + time_limit
        seed = iter(range(10**6))

        def jobs_for(key, n_requests, job_deadline):
            _, _, path, batch, wrap = next(s for s in SCENARIOS if s[0] == key)
            share = [
                n_requests // args.concurrency + (i < n_requests % args.concurrency)
                for i in range(args.concurrency)
            ]
            start_at = time.monotonic() + 0.3
            return [
                {
                    "host": "127.0.0.1",
                    "port": server.port,
                    "path": path,
                    "page_path": "/bench/page/",
                    "batch_size": batch,
                    "wrap": wrap,
                    "requests": n,
                    "items": items,
                    "seed": next(seed),
                    "requests_per_shopper": args.requests_per_shopper,
                    "start_at": start_at,
                    "deadline_s": job_deadline,
                }
                for n in share
            ]

        # Warm-up: lazy imports, DB/Redis connections and first sessions in every worker.
        warm_bar = progress_factory(
            total=len(SCENARIOS) * 4 * args.concurrency, desc=f"{worker_class} warm-up"
        )
        for key, *_ in SCENARIOS:
            clients.run(jobs_for(key, 4 * args.concurrency, 30), warm_bar, 60)
        warm_bar.close()

        totals = {
            key: {
                "latencies": [],
                "wall": 0.0,
                "requests": 0,
                "events": 0,
                "statuses": {},
                "errors": [],
                "cpu": {"client": 0.0, "gunicorn": 0.0, "postgres": 0.0, "redis": 0.0},
            }
            for key, *_ in SCENARIOS
        }
        totals["_meta"] = {"command": server.command, "cut": False}
        bar = progress_factory(
            total=sum(per_round[k] * args.rounds for k in counts), desc=f"{worker_class} HTTP"
        )
        redis = harness.redis_pids()
        keys = [s[0] for s in SCENARIOS]
        for r in range(args.rounds):
            order = keys[r % len(keys) :] + keys[: r % len(keys)]
            for key in order:
                remaining = deadline - time.monotonic()
                if remaining < 2:
                    totals["_meta"]["cut"] = True
                    break
                workers = server.worker_pids()
                cpu0 = (
                    proc_cpu(workers),
                    proc_cpu(harness.postgres_backends()),
                    proc_cpu(redis),
                )
                before = event_count()
                results = clients.run(jobs_for(key, per_round[key], remaining), bar, remaining + 30)
                stored = event_count() - before
                cpu1 = (
                    proc_cpu(set(workers) | set(server.worker_pids())),
                    proc_cpu(set(cpu0[1]) | set(harness.postgres_backends())),
                    proc_cpu(redis),
                )
                total = totals[key]
                total["wall"] += max(x["t_end"] for x in results) - min(
                    x["t_start"] for x in results
                )
                for x in results:
                    total["latencies"] += x["latencies"]
                    total["requests"] += len(x["latencies"])
                    total["events"] += x["events"]
                    total["cpu"]["client"] += x["cpu_s"]
                    total["errors"] += x["errors"]
                    totals["_meta"]["cut"] |= "deadline reached" in x["errors"]
                    for status, n in x["statuses"].items():
                        total["statuses"][status] = total["statuses"].get(status, 0) + n
                for name, before_cpu, after_cpu in zip(
                    ("gunicorn", "postgres", "redis"), cpu0, cpu1, strict=True
                ):
                    total["cpu"][name] += cpu_delta(before_cpu, after_cpu)
                if stored != sum(x["events"] for x in results):
                    raise RuntimeError(
                        f"{key}: clients got 201 for {sum(x['events'] for x in results)} "
                        f"events but {stored} rows were stored"
                    )
        bar.close()
        return totals
    finally:
        server.stop()


# ---------------------------------------------------------------- report


def render(args, part1, part2, started, elapsed, load_before):
    lines = []
    add = lines.append
    argv = [shlex.quote(a) for a in sys.argv[1:]]
    add("# Ingest benchmark")
    add("")
    add(
        f"- run: {started:%Y-%m-%d %H:%M} UTC, {elapsed:.0f} s, commit {harness.git_commit()}, "
        f"{os.cpu_count()} CPU cores shared with other work; load average before/after: {load_before} / {harness.loadavg()}"
    )
    add(f"- command: `{' '.join(['.venv/bin/python -m benchmarks.ingest', *argv])}`")
    add(
        f"- Python {platform.python_version()}, Django {_version('django')}, PostgreSQL at {harness.redact(args.database_url)}, "
        f"Redis at {args.redis_url}"
    )
    add(
        "- CPU columns are CPU time per event/request of each process group (from /proc), less disturbed by "
        "other work on the machine than the rates; every rate stands beside its baseline measured in the same "
        "interleaved rounds."
    )
    add("")
    if part1:
        rm, raw = part1["record_many"], part1["raw"]
        add(
            f"## 1. `record_many` vs raw `bulk_create` (in process, PostgreSQL, batches of {BATCH}, "
            f"{rm['events']:,} events each, {part1['n_rounds']} interleaved rounds)"
        )
        add("")
        add(
            "| path | events/s | median of rounds, events/s | Python CPU µs/event | PostgreSQL CPU µs/event |"
        )
        add("|---|---:|---:|---:|---:|")
        for name, label in (
            ("record_many", "`events.record_many`"),
            ("raw", "`Event.objects.bulk_create` (raw)"),
        ):
            t = part1[name]
            add(
                f"| {label} | {t['events'] / t['wall']:,.0f} | {statistics.median(t['rounds']):,.0f} | "
                f"{t['py'] / t['events'] * 1e6:.1f} | {t['pg'] / t['events'] * 1e6:.1f} |"
            )
        ratio = (rm["events"] / rm["wall"]) / (raw["events"] / raw["wall"])
        round_ratio = statistics.median(
            a / b for a, b in zip(rm["rounds"], raw["rounds"], strict=True)
        )
        rate = rm["events"] / rm["wall"]
        add("")
        add(
            f"record_many / raw: **{ratio:.2f}×** (median of rounds {round_ratio:.2f}×; target ≥ 0.8×: "
            f"{'met' if ratio >= 0.8 else 'missed'}). record_many: **{rate:,.0f} events/s** "
            f"(target ≥ 20,000: {'met' if rate >= 20_000 else 'missed'})."
        )
        add("")
    if part2:
        add(f"## 2. HTTP: gunicorn, {args.workers} workers, {args.concurrency} client processes")
        add("")
        add(
            f"Anonymous shoppers through their session: GET a page for the CSRF cookie, then POSTs with the "
            f"cookies, X-CSRFToken, Origin and Referer; a new shopper every {args.requests_per_shopper} POSTs. "
            f"{args.rounds} interleaved rounds per server. Events throttle: `{args.throttle_rate}` (Redis). "
            f"DEBUG off."
        )
        add("")
        add(
            "Bare view: Django's CSRF middleware (not exempt), the shopper's key from the session, "
            "`json.loads`, one `Event.objects.create` (autocommit). API: DRF `EventIngestView` "
            "(session authentication, events throttle, CSRF check, `record_many` with its item check, "
            "duplicate check, transaction and cache invalidation)."
        )
        add("")
        add(
            "| server | scenario | requests | requests/s | events/s | p50 ms | p99 ms | "
            "CPU ms/request: client · gunicorn · PostgreSQL · Redis | non-201 |"
        )
        add("|---|---|---:|---:|---:|---:|---:|---|---|")
        summaries = []
        for worker_class, totals in part2.items():
            server = worker_class + (
                f" ×{args.threads} threads" if worker_class == "gthread" else ""
            )
            for key, label, *_ in SCENARIOS:
                t = totals[key]
                n = t["requests"]
                if not n:
                    add(f"| {server} | {label} | 0 | – | – | – | – | – | {t['statuses'] or '-'} |")
                    continue
                cpu = " · ".join(
                    f"{t['cpu'][k] / n * 1000:.2f}"
                    for k in ("client", "gunicorn", "postgres", "redis")
                )
                bad = {k: v for k, v in t["statuses"].items() if k != 201}
                add(
                    f"| {server} | {label} | {n:,} | {n / t['wall']:,.0f} | {t['events'] / t['wall']:,.0f} | "
                    f"{percentile(t['latencies'], 50) * 1000:.1f} | {percentile(t['latencies'], 99) * 1000:.1f} | "
                    f"{cpu} | {bad or '-'} |"
                )
            single, bare = totals["single"], totals["bare"]
            if single["requests"] and bare["requests"]:
                ratio = (single["requests"] / single["wall"]) / (bare["requests"] / bare["wall"])
                cpu_ratio = (single["cpu"]["gunicorn"] / single["requests"]) / max(
                    bare["cpu"]["gunicorn"] / bare["requests"], 1e-9
                )
                summaries.append(
                    f"- {worker_class}: API single event / bare view = **{ratio:.2f}×** requests/s "
                    f"(target ≥ 0.8×: {'met' if ratio >= 0.8 else 'missed'}); gunicorn CPU per request "
                    f"{cpu_ratio:.2f}× the bare view's."
                    + (" Cut short by --time-limit." if totals["_meta"]["cut"] else "")
                )
        add("")
        lines.extend(summaries)
        add("")
        for worker_class, totals in part2.items():
            add(f"`{worker_class}` server: `{' '.join(totals['_meta']['command'][1:])}`")
            add("")
        errors = [
            e for totals in part2.values() for key, *_ in SCENARIOS for e in totals[key]["errors"]
        ][:5]
        if errors:
            add("First client errors: " + "; ".join(errors))
            add("")
    return "\n".join(lines)


def _version(module):
    try:
        return __import__(module).get_version()
    except Exception:  # noqa: BLE001
        return "?"


def main(argv=None):
    args = parse_args(argv)
    from tqdm import tqdm

    started, t0 = dt.datetime.now(dt.UTC), time.monotonic()
    load_before = harness.loadavg()

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    harness.ensure_database(args.database_url)
    setup_django(args)
    items = seed_catalogue(args.products)
    reset_events()
    part1, part2 = None, {}
    if not args.skip_record_many:
        with tqdm(
            total=2 * (args.events // BATCH + 3), desc="record_many vs raw", unit="batch"
        ) as bar:
            part1 = bench_record_many(args, items, bar)
    if not args.skip_http:
        clients = harness.ClientPool(args.concurrency)
        try:
            limit_end = time.monotonic() + args.time_limit
            for i, worker_class in enumerate(args.worker_classes):
                share = (limit_end - time.monotonic()) / (len(args.worker_classes) - i)
                part2[worker_class] = bench_http(
                    args, items, clients, worker_class, share, lambda **kw: tqdm(unit="req", **kw)
                )
        finally:
            clients.stop()
    report = render(args, part1, part2, started, time.monotonic() - t0, load_before)
    print()
    print(report)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report + "\n")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
