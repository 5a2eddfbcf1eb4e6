"""Serving latency and throughput: recommendations, similar items and product pages, each
beside a plain DRF endpoint measured in the same interleaved rounds.

For each catalogue size (the demo store's ~3,000 products, 54,542 items like Amazon Beauty,
1,000,000 synthetic items) it:

1. seeds a benchmark-only PostgreSQL database (one per size), with ``COPY``: the catalogue,
   2,000 anonymous shoppers with 20 events each (drawn from 1-3 product clusters) and a
   Django session per shopper; the demo size is ``seed_demo --products 3000 --shoppers 500``
   plus the same benchmark shoppers;
2. installs an active model version with random weights of the production shape
   (cnn_dnn, dim 64, max_len 50) whose item embeddings are clustered like trained ones
   (``benchmarks.serving_data``); above ``ANN_MIN_ITEMS`` the IVF index is built once as
   promotion builds it (``ml.pipeline.build_index``, nprobe tuned on 500 validation
   histories that are not the benchmark shoppers') and each worker loads it;
3. serves the demo store with gunicorn (2 sync workers, ``benchmarks.bench_site.settings``:
   DEBUG off, PostgreSQL, Redis cache and sessions, the API throttle on with a rate that
   never cuts) on 127.0.0.1, waits until every worker has loaded the model (and its
   index), and drives it from separate client processes (``benchmarks.loadclient``,
   bounded in requests and time, loopback only), every request carrying a shopper's
   session cookie;
4. measures, in interleaved rounds (the order rotates each round):

   - ``base``: the baseline, a DRF ListAPIView returning 10 products by primary key with a
     small ModelSerializer (what a store pays for any precomputed list);
   - ``miss``: GET /api/recommender/recommendations/ as a shopper whose cached list was
     invalidated just before the round (``serving.invalidate_shopper``, what a new event
     does), each shopper once per round: real-time inference on their latest events;
   - ``hit``: the same endpoint for shoppers whose list was just computed (cache hit);
   - ``similar``: GET /api/recommender/items/<id>/similar/ for items never asked before
     (the list is computed);
   - ``page``: the demo product page GET /p/<slug>/ with its two carousels (similar +
     bought together), for products never shown before (both lists computed), and
     ``page_warm``: the same pages again (both lists cached);

   - ``miss_arm`` (at ``--experiment-sizes``, default 54,542 items): the cache miss again,
     with an experiment running in its placement (``search``: no rules of its own, like
     no placement) between two version arms at 50/50, the active version and a second one
     with the same weights and index in an artifact of its own, so each worker holds
     both and the row measures the experiment's own cost; the benchmark shoppers were assigned
     their arms in set-up (a shopper's first exposure stores one row, once per experiment);

   with every ``miss``/``hit``/``similar``/``page``/``miss_arm`` verified by the number of
   recommendation lists written (1, 0, 1, 2, 1 per request) and the list's source, and the
   experiment's lists counted per arm;
5. measures the model's own share: per request inside the workers (a benchmark-only
   middleware times ``LoadedModel.top_candidates`` / ``similar``: ``X-Bench-Model-Ms``; it
   also reports time spent in the garbage collector, ``X-Bench-GC-Ms``),
   and in process over the same shoppers' histories with the same ``LoadedModel``
   (``serving.load_version``) once the server is stopped; at 1M items also exact scoring,
   and recall@10 of the approximate index against exact scoring on the shopper vectors the
   model makes from the benchmark shoppers' histories, by nprobe.

    .venv/bin/python -m benchmarks.serving [--sizes demo,54542,1000000] [--requests 400]
        [--clients 1,8] [--rounds 3] [--experiment-sizes 54542]
        [--smoke]  (one 2,000-item catalogue served from the index, tiny counts, seconds)

Each size runs in its own Python process (one Django settings/database per process); the
table is printed and written to benchmarks/results/serving.md.
"""

import argparse
import datetime as dt
import json
import os
import platform
import random
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse

from benchmarks import harness
from benchmarks.harness import ROOT, cpu_delta, loadavg, percentile, proc_cpu
from benchmarks.loadclient import LOOPBACK

SETTINGS_MODULE = "benchmarks.bench_site.settings"
RESULTS = ROOT / "benchmarks" / "results" / "serving.md"
# --smoke: one small synthetic catalogue served from the IVF index (ANN_MIN_ITEMS lowered),
# tiny request counts; the same code in seconds (the test suite runs it).
SMOKE = dict(
    sizes="2000",
    ann_min_items=1000,
    requests=6,
    rounds=2,
    clients="1,2",
    shoppers=40,
    events_per_shopper=10,
    model_queries=10,
    workers=1,
    time_limit=60.0,
    worker_timeout=120,
    experiment_sizes="2000",
)
BEAUTY_ITEMS = 54_542
MODEL_HEADER, SERVICE_HEADER, GC_HEADER = "X-Bench-Model-Ms", "X-Bench-Service-Ms", "X-Bench-GC-Ms"
LIMIT = 10

SCENARIOS = {
    # key: (label, lists written per request when verified, JSON source expected)
    "base": ("baseline: DRF ListAPIView, 10 products by pk", 0, None),
    "miss": ("recommendations, cache miss (real-time inference)", 1, "model"),
    "hit": ("recommendations, cache hit", 0, "model"),
    "similar": ("similar items (list computed)", 1, "similar"),
    "page": ("product page, 2 carousels (lists computed)", 2, None),
    "page_warm": ("product page, 2 carousels (lists cached)", 0, None),
    "miss_arm": ("recommendations, cache miss, experiment running (2 version arms)", 1, "model"),
}
CONCURRENT_SCENARIOS = ("base", "miss", "hit")
# The experiment of ``miss_arm`` runs in a placement with no rules of its own, so its
# requests differ from ``miss`` (no placement) by the experiment alone.
EXPERIMENT_PLACEMENT = "search"
EXPERIMENT_NAME = "serving benchmark"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default=f"demo,{BEAUTY_ITEMS},1000000",
        help="catalogue sizes: 'demo' and/or item counts (default demo,54542,1000000)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=400,
        help="measured requests per scenario, per size and client count (default 400)",
    )
    parser.add_argument(
        "--clients", default="1,8", help="concurrent client processes to measure (default 1,8)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--shoppers", type=int, default=2000, help="benchmark shoppers per size (default 2000)"
    )
    parser.add_argument("--events-per-shopper", type=int, default=20)
    parser.add_argument("--demo-products", type=int, default=3000)
    parser.add_argument("--demo-shoppers", type=int, default=500)
    parser.add_argument(
        "--model-queries",
        type=int,
        default=300,
        help="shopper histories for the in-process model timing and recall (default 300)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "BENCH_SERVING_DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/recommender_serving_bench",
        ),
        help="database URL; each size uses it with the suffix _<size>",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_SERVING_REDIS_URL", "redis://127.0.0.1:6379/12"),
        help="Redis for cache and sessions; this database is flushed (default db 12)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--worker-timeout",
        type=int,
        default=600,
        help="gunicorn --timeout: the first request of a worker loads the model and builds the index",
    )
    parser.add_argument(
        "--api-throttle-rate",
        default="1000000/min",
        help="API_THROTTLE_RATE while benchmarking ('none' disables it)",
    )
    parser.add_argument(
        "--var-dir",
        default=os.environ.get(
            "BENCH_SERVING_VAR_DIR", str(Path(tempfile.gettempdir()) / "recommender-serving-bench")
        ),
        help="SHOP_VAR_DIR of the served store: crafted artifacts are kept here between runs",
    )
    parser.add_argument(
        "--ann-min-items",
        type=int,
        default=None,
        help="the served store's ANN_MIN_ITEMS (default: the app's setting)",
    )
    parser.add_argument(
        "--experiment-sizes",
        default=str(BEAUTY_ITEMS),
        help="sizes that also measure miss_arm, with an experiment running (default 54542; '' none)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--time-limit",
        type=float,
        default=300.0,
        help="seconds per size for the HTTP part (default 300)",
    )
    parser.add_argument("--output", default=None, help=f"report file (default {RESULTS})")
    parser.add_argument("--json", help="also write the raw results (JSON) to this path")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, seconds: checks that the benchmark runs"
    )
    parser.add_argument("--one-size", help=argparse.SUPPRESS)
    parser.add_argument("--result-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args(argv)  # explicit options still win over the smoke sizes
    if args.output is None:
        args.output = harness.smoke_output("serving") if args.smoke else str(RESULTS)
    args.size_list = [s.strip() for s in args.sizes.split(",") if s.strip()]
    for size in args.size_list:
        if size != "demo" and not size.isdigit():
            parser.error(f"--sizes: {size!r} is neither 'demo' nor a number of items")
    args.experiment_size_list = [s.strip() for s in args.experiment_sizes.split(",") if s.strip()]
    args.client_list = [int(c) for c in args.clients.split(",") if c.strip()]
    if not args.client_list or min(args.client_list) < 1:
        parser.error("--clients takes positive numbers, comma-separated")
    if args.requests < args.rounds or args.rounds < 1:
        parser.error("--requests must be at least --rounds")
    if args.requests // args.rounds > args.shoppers:
        parser.error(
            "a round asks each shopper at most once for a cache miss: --requests / --rounds <= --shoppers"
        )
    if urlparse(args.database_url).scheme not in ("postgres", "postgresql"):
        parser.error("--database-url must be a PostgreSQL URL")
    if urlparse(args.redis_url).hostname not in LOOPBACK:
        parser.error("--redis-url must be on this machine")
    return args


def size_database_url(base, size):
    parts = urlparse(base)
    return parts._replace(path=f"{parts.path.rstrip('/')}_{size}").geturl()


# ================================================================ one size (child process)


def start_server(args):
    """gunicorn serving this size's store (the environment ``setup_django`` made), with a
    worker timeout long enough to load the model; ready once every worker answers."""
    server = harness.Gunicorn(dict(os.environ), args.workers, timeout=args.worker_timeout)
    try:
        return server.wait_ready("/bench/ping/")
    except BaseException:
        server.stop()
        raise


def setup_django(args, size, database_url):
    env = {
        "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
        "DATABASE_URL": database_url,
        "REDIS_URL": args.redis_url,
        "SHOP_VAR_DIR": str(Path(args.var_dir) / size),
        "BENCH_EVENTS_THROTTLE_RATE": "1000000/min",
        "BENCH_API_THROTTLE_RATE": args.api_throttle_rate,
        "BENCH_MODEL_TIMING": "1",
        "DJANGO_DEBUG": "0",
        "RECOMMENDER_LOG_LEVEL": "WARNING",
    }
    if args.ann_min_items is not None:
        env["BENCH_ANN_MIN_ITEMS"] = str(args.ann_min_items)
    Path(env["SHOP_VAR_DIR"]).mkdir(parents=True, exist_ok=True)
    harness.setup_django(env)


def prepare_data(args, size, bar):
    """Catalogue, shoppers, sessions and the active model version for one size."""
    from benchmarks import serving_data
    from shop_demo.catalog.models import Product

    timings = {}
    t0 = time.monotonic()
    synthetic = size != "demo"
    if synthetic:
        n = int(size)
        bar.set_description(f"{size}: catalogue (COPY {n:,} products)")
        chunk = tqdm_sub(total=n, desc="products", unit="row")
        try:
            created = serving_data.ensure_synthetic_catalogue(n, args.seed, progress=chunk.update)
        finally:
            chunk.close()
    else:
        bar.set_description("demo: seed_demo")
        created = serving_data.ensure_demo_catalogue(args.demo_products, args.demo_shoppers)
    timings["catalogue_s"] = round(time.monotonic() - t0, 1)
    timings["catalogue_created"] = created
    bar.update(1)

    item_pks = list(Product.objects.order_by("pk").values_list("pk", flat=True))
    cluster_of_item, category_of_cluster = serving_data.catalogue_clusters(
        item_pks, args.seed, synthetic
    )
    bar.set_description(f"{size}: {args.shoppers} shoppers × {args.events_per_shopper} events")
    t0 = time.monotonic()
    shoppers = serving_data.write_shoppers(
        args.shoppers, args.events_per_shopper, item_pks, cluster_of_item, args.seed
    )
    timings["shoppers_s"] = round(time.monotonic() - t0, 1)
    bar.update(1)

    bar.set_description(f"{size}: model artifact")
    t0 = time.monotonic()
    version = serving_data.install_model(item_pks, cluster_of_item, category_of_cluster, args.seed)
    timings["artifact_s"] = round(time.monotonic() - t0, 1)
    bar.set_description(f"{size}: approximate index (as promotion builds it)")
    timings["stored_index_s"] = serving_data.store_index_as_promotion_does(
        version, item_pks, cluster_of_item, args.seed, args.events_per_shopper
    )
    bar.update(1)
    experiment = None
    if size in args.experiment_size_list:
        bar.set_description(f"{size}: a second version and an experiment between the two")
        t0 = time.monotonic()
        # The same seed: the same weights and the same tuned index in a version of its own
        # (its own artifact, loaded beside the active one), so the row measures what running
        # an experiment costs, not a second model that happens to search more lists.
        second = serving_data.install_model(
            item_pks, cluster_of_item, category_of_cluster, args.seed, activate=False, copy="-arm"
        )
        serving_data.store_index_as_promotion_does(
            second, item_pks, cluster_of_item, args.seed, args.events_per_shopper
        )
        experiment = start_experiment(version, second)
        timings["experiment_s"] = round(time.monotonic() - t0, 1)
    products = list(Product.objects.filter(is_active=True).values_list("pk", "slug"))
    return SimpleNamespace(
        item_pks=item_pks,
        products=products,
        shoppers=shoppers,
        version=version,
        experiment=experiment,
        timings=timings,
        events=events_total(),
    )


def start_experiment(active, second):
    """A running experiment in EXPERIMENT_PLACEMENT: the active version against ``second``, 50/50.

    Any other running experiment is stopped (the database is reused between runs).
    """
    from django.utils import timezone

    from recommender.models import Arm, Experiment

    Experiment.objects.filter(name=EXPERIMENT_NAME).delete()
    Experiment.objects.filter(status=Experiment.Status.RUNNING).update(
        status=Experiment.Status.STOPPED, stopped_at=timezone.now()
    )
    experiment = Experiment.objects.create(
        name=EXPERIMENT_NAME,
        placements=[EXPERIMENT_PLACEMENT],
        status=Experiment.Status.RUNNING,
        started_at=timezone.now(),
    )
    for name, version in (("active", active), ("second", second)):
        Arm.objects.create(experiment=experiment, name=name, version=version, share=50)
    return experiment


def assign_shoppers(data):
    """Every benchmark shopper's arm, stored and cached as on their first exposure.

    ``miss_arm`` then measures what ``miss`` does: a shopper already known whose list a new
    event invalidated. Returns shoppers per arm.
    """
    from recommender import experiments

    experiment = experiments.read_running().covering(EXPERIMENT_PLACEMENT)
    counts = {}
    for key, _ in data.shoppers:
        arm = experiments.arm_for(experiment, session_key=key)
        counts[arm.name] = counts.get(arm.name, 0) + 1
    return counts


def experiment_lists():
    """Recommendation rows served in the experiment, per arm: {arm: {version, lists}}."""
    from django.db.models import Count

    from recommender.models import Recommendation

    rows = (
        Recommendation.objects.filter(arm__isnull=False)
        .values_list("arm__name", "version_id")
        .annotate(n=Count("id"))
    )
    out = {}
    for arm, version, n in rows:
        out.setdefault(arm, {})[f"v{version}"] = n
    return out


def events_total():
    from recommender.models import Event

    return Event.objects.count()


def tqdm_sub(**kwargs):
    from tqdm import tqdm

    return tqdm(leave=False, **kwargs)


def reset_serving_state(data):
    """Empty cache (Redis db of the benchmark) and recommendation lists; sessions back in cache."""
    from django.core.cache import cache
    from django.db import connection

    from benchmarks import serving_data
    from recommender.models import Recommendation

    cache.clear()
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {Recommendation._meta.db_table}")
    serving_data.cache_sessions(data.shoppers)


def recommendation_lists():
    from recommender.models import Recommendation

    return Recommendation.objects.count()


def wait_for_workers(server, workers, timeout):
    """Ask every worker to load the model (and build its index); return what each loaded."""
    url = f"http://127.0.0.1:{server.port}/bench/serving-warm/"
    ready, errors = {}, []
    deadline = time.monotonic() + timeout

    def ask():
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                info = json.loads(response.read())
            if info.get("ready"):
                ready[info["pid"]] = info
        except OSError as exc:
            errors.append(repr(exc))

    while time.monotonic() < deadline:
        server.check_alive("loading the model")
        pids = set(server.worker_pids())
        if len(pids) >= workers and pids <= set(ready):
            return [ready[pid] for pid in sorted(pids)]
        threads = [threading.Thread(target=ask, daemon=True) for _ in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if errors and len(errors) > 20:
            raise RuntimeError(f"workers did not load the model: {errors[-3:]}\n{server.tail()}")
    raise RuntimeError(f"workers not ready after {timeout} s:\n{server.tail()}")


class Workload:
    """Plans of requests per scenario; knows which shoppers and items are cold or warm."""

    def __init__(self, data, seed):
        self.rng = random.Random(seed + 5)
        self.shoppers = list(data.shoppers)
        self.cookies = {key: f"sessionid={session}" for key, session in self.shoppers}
        self.product_pks = [pk for pk, _ in data.products]
        model_items = set(data.item_pks)
        shown = [(pk, slug) for pk, slug in data.products if pk in model_items]
        self.rng.shuffle(shown)
        half = len(shown) // 2
        self.similar_pool, self.page_pool = [pk for pk, _ in shown[:half]], shown[half:]
        self.similar_next = self.page_next = 0
        self.miss_order = [key for key, _ in self.shoppers]
        self.rng.shuffle(self.miss_order)
        self.miss_next = 0
        self.last_computed, self.last_pages = [], []
        self.experiment = data.experiment is not None
        self.miss_arm_order = list(self.miss_order)
        self.rng.shuffle(self.miss_arm_order)
        self.miss_arm_next = 0
        self.reused_items = 0

    def any_cookie(self):
        return self.cookies[self.rng.choice(self.shoppers)[0]]

    def _take(self, pool, attr, n):
        start = getattr(self, attr)
        if start + n > len(pool):
            self.reused_items += start + n - len(pool)
        picked = [pool[(start + i) % len(pool)] for i in range(n)]
        setattr(self, attr, start + n)
        return picked

    def plan(self, key, n):
        """[(path, cookie)] for n requests, and the shoppers to invalidate before them."""
        invalidate = []
        if key == "base":
            plan = [
                (
                    "/bench/products/?ids="
                    + ",".join(map(str, self.rng.sample(self.product_pks, LIMIT))),
                    self.any_cookie(),
                )
                for _ in range(n)
            ]
        elif key == "miss":
            keys = [self.miss_order[(self.miss_next + i) % len(self.miss_order)] for i in range(n)]
            self.miss_next += n
            invalidate = keys
            self.last_computed = keys
            plan = [("/api/recommender/recommendations/", self.cookies[k]) for k in keys]
        elif key == "miss_arm":
            order = self.miss_arm_order
            keys = [order[(self.miss_arm_next + i) % len(order)] for i in range(n)]
            self.miss_arm_next += n
            invalidate = keys
            path = f"/api/recommender/recommendations/?placement={EXPERIMENT_PLACEMENT}"
            plan = [(path, self.cookies[k]) for k in keys]
        elif key == "hit":
            keys = [self.last_computed[i % len(self.last_computed)] for i in range(n)]
            plan = [("/api/recommender/recommendations/", self.cookies[k]) for k in keys]
        elif key == "similar":
            plan = [
                (f"/api/recommender/items/{pk}/similar/", self.any_cookie())
                for pk in self._take(self.similar_pool, "similar_next", n)
            ]
        elif key == "page":
            pages = self._take(self.page_pool, "page_next", n)
            self.last_pages = pages
            plan = [(f"/p/{slug}/", self.any_cookie()) for _, slug in pages]
        elif key == "page_warm":
            plan = [
                (f"/p/{self.last_pages[i % len(self.last_pages)][1]}/", self.any_cookie())
                for i in range(n)
            ]
        else:
            raise ValueError(key)
        return plan, invalidate


def split(plan, clients):
    return [plan[i::clients] for i in range(clients)]


def run_scenario(pool, server, workload, key, n, clients, deadline_s, bar, measure=True):
    """One batch of one scenario over ``clients`` client processes; returns raw numbers."""
    from recommender import serving

    plan, invalidate = workload.plan(key, n)
    for shopper in invalidate:
        serving.invalidate_shopper(session_key=shopper)
    start_at = time.monotonic() + 0.2
    jobs = [
        {
            "kind": "get",
            "host": "127.0.0.1",
            "port": server.port,
            "plan": part,
            "start_at": start_at,
            "deadline_s": deadline_s,
            "headers": (MODEL_HEADER, SERVICE_HEADER, GC_HEADER),
            "json_field": "source" if SCENARIOS[key][2] else None,
        }
        for part in split(plan, clients)
    ]
    cpu0 = lists0 = workers = None
    if measure:
        workers = server.worker_pids()
        cpu0 = (
            proc_cpu(workers),
            proc_cpu(harness.postgres_backends()),
            proc_cpu(harness.redis_pids()),
        )
        lists0 = recommendation_lists()
    results = pool.run(jobs, bar, deadline_s + 60)
    if not measure:
        return None
    lists = recommendation_lists() - lists0
    cpu1 = (
        proc_cpu(set(workers) | set(server.worker_pids())),
        proc_cpu(set(cpu0[1]) | set(harness.postgres_backends())),
        proc_cpu(harness.redis_pids()),
    )
    out = {
        "latencies": [x for r in results for x in r["latencies"]],
        "wall": max(r["t_end"] for r in results) - min(r["t_start"] for r in results),
        "statuses": {},
        "errors": [],
        "fields": {},
        "lists": lists,
        "model_ms": [v for r in results for v in r["headers"][MODEL_HEADER]],
        "service_ms": [v for r in results for v in r["headers"][SERVICE_HEADER]],
        "gc_ms": [v or 0.0 for r in results for v in r["headers"][GC_HEADER]],
        "cpu": {"client": sum(r["cpu_s"] for r in results)},
    }
    for name, before, after in zip(("gunicorn", "postgres", "redis"), cpu0, cpu1, strict=True):
        out["cpu"][name] = cpu_delta(before, after)
    for r in results:
        out["errors"] += r["errors"]
        for status, count in r["statuses"].items():
            out["statuses"][str(status)] = out["statuses"].get(str(status), 0) + count
        for value, count in r["fields"].items():
            out["fields"][value] = out["fields"].get(value, 0) + count
    return out


def bench_http(args, server, workload, clients, deadline, progress):
    """All scenarios for one client count, interleaved in rounds (order rotates)."""
    keys = list(SCENARIOS) if clients == 1 else list(CONCURRENT_SCENARIOS)
    if not workload.experiment:
        keys = [key for key in keys if key != "miss_arm"]
    per_round = max(clients, args.requests // args.rounds)
    pool = harness.ClientPool(clients)
    try:
        warm_n = max(2 * clients, 20)
        bar = progress(total=warm_n * len(keys), desc=f"{clients} client(s): warm-up")
        for key in keys:  # also leaves computed lists for hit / page_warm
            run_scenario(pool, server, workload, key, warm_n, clients, 120, bar, measure=False)
        bar.close()
        totals = {
            key: {
                "rounds": [],
                "latencies": [],
                "model_ms": [],
                "service_ms": [],
                "gc_ms": [],
                "wall": 0.0,
                "lists": 0,
                "statuses": {},
                "errors": [],
                "fields": {},
                "cpu": {"client": 0.0, "gunicorn": 0.0, "postgres": 0.0, "redis": 0.0},
            }
            for key in keys
        }
        bar = progress(
            total=per_round * args.rounds * len(keys), desc=f"{clients} client(s): measured"
        )
        cut = False
        for r in range(args.rounds):
            order = keys[r % len(keys) :] + keys[: r % len(keys)]
            for key in order:
                remaining = deadline - time.monotonic()
                if remaining < 5:
                    cut = True
                    break
                got = run_scenario(pool, server, workload, key, per_round, clients, remaining, bar)
                total = totals[key]
                n = len(got["latencies"])
                total["rounds"].append(
                    {
                        "p50": percentile(got["latencies"], 50),
                        "rps": n / max(got["wall"], 1e-9),
                        "n": n,
                    }
                )
                for field in ("latencies", "model_ms", "service_ms", "gc_ms", "errors"):
                    total[field] += got[field]
                total["wall"] += got["wall"]
                total["lists"] += got["lists"]
                for name in ("statuses", "fields"):
                    for k, v in got[name].items():
                        total[name][k] = total[name].get(k, 0) + v
                for k, v in got["cpu"].items():
                    total["cpu"][k] += v
                cut |= "deadline reached" in got["errors"]
        bar.close()
        return {key: summarize(key, t) for key, t in totals.items()} | {"_cut": cut}
    finally:
        pool.stop()


def summarize(key, t):
    n = len(t["latencies"])
    ms = [x * 1000 for x in t["latencies"]]
    model = [v for v in t["model_ms"] if v is not None]
    return {
        "requests": n,
        "rps": n / t["wall"] if t["wall"] else None,
        "p50": percentile(ms, 50),
        "p95": percentile(ms, 95),
        "p99": percentile(ms, 99),
        "mean": statistics.fmean(ms) if ms else None,
        "rounds": t["rounds"],
        "model_p50": percentile(model, 50),
        "model_p99": percentile(model, 99),
        "model_calls": len(model),
        "service_p50": percentile(t["service_ms"], 50),
        "service_p99": percentile(t["service_ms"], 99),
        "gc_p99": percentile(t["gc_ms"], 99),
        "gc_max": max(t["gc_ms"], default=None),
        "gc_over_5ms": sum(v > 5 for v in t["gc_ms"]),
        "lists_per_request": t["lists"] / n if n else None,
        "expected_lists": SCENARIOS[key][1],
        "statuses": t["statuses"],
        "fields": t["fields"],
        "errors": t["errors"][:3],
        "cpu_ms": {k: v / n * 1000 for k, v in t["cpu"].items()} if n else {},
    }


# ---------------------------------------------------------------- in process: the model's share


def model_share(args, model, data, bar):
    """Time LoadedModel.top_candidates over benchmark shoppers' histories, as ``recommend`` calls
    it; split into encode (history -> shopper vector) and score + top-k; at 1M items also
    exact scoring, and recall@10 of the IVF index against exact scoring."""
    import torch

    from recommender import serving
    from recommender.conf import recommender_settings

    predictor = model.predictor
    cases = []
    for key, _ in data.shoppers[: args.model_queries]:
        history, purchased = serving.shopper_activity(session_key=key)
        banned = purchased | {pk for pk, _ in history}
        cases.append((history, banned))
    wanted = max(LIMIT * serving.OVERFETCH, LIMIT + 20)
    exact = serving.LoadedModel(model.version_id, predictor, model.categories, index=None)
    out = {
        "queries": len(cases),
        "items": predictor.n_items,
        "torch_threads": torch.get_num_threads(),
        "index": model.index.build_info if model.index is not None else None,
    }

    def timed(fn, repeats=3):
        times = []
        for _ in range(repeats):
            for i in range(len(cases)):
                t0 = time.perf_counter()
                fn(i)
                times.append((time.perf_counter() - t0) * 1000)
            bar.update(1)
        return {"p50": percentile(times, 50), "p99": percentile(times, 99)}

    with torch.no_grad():
        vectors = []
        for history, _ in cases:
            item_seq, kind_seq, _seen = predictor.encode(history)
            vectors.append(predictor.model.shopper_vector(item_seq, kind_seq)[0])
        items = predictor.item_vectors

        def encode(i):
            item_seq, kind_seq, _seen = predictor.encode(cases[i][0])
            predictor.model.shopper_vector(item_seq, kind_seq)

        def score_exact(i):
            scores = items @ vectors[i]
            scores[0] = -torch.inf
            torch.topk(scores, wanted)

        out["top_candidates"] = timed(
            lambda i: model.top_candidates(cases[i][0], wanted, exclude_pks=cases[i][1])
        )
        out["encode"] = timed(encode)
        out["score_exact"] = timed(score_exact)
        if model.index is not None:
            out["search_ann"] = timed(
                lambda i: model.index.search(vectors[i], wanted + len(cases[i][1]))
            )
            out["top_candidates_exact"] = timed(
                lambda i: exact.top_candidates(cases[i][0], wanted, exclude_pks=cases[i][1])
            )
            served = 0
            for history, banned in cases:
                a = [pk for pk, _ in model.top_candidates(history, LIMIT, exclude_pks=banned)]
                b = [pk for pk, _ in exact.top_candidates(history, LIMIT, exclude_pks=banned)]
                served += len(set(a) & set(b))
            out["served_recall_at_10"] = served / (LIMIT * len(cases))
            # Three kinds of query vector, one index: what the served model makes; the model's
            # own history summary (the DNN branch's input to the tower: attention over, or a
            # kind-weighted mean of, the history's events, near what a trained tower outputs); item-like vectors as the index's
            # nprobe tuning makes them (an item plus noise).
            summaries = []
            for history, _ in cases:
                item_seq, kind_seq, _seen = predictor.encode(history)
                summaries.append(predictor.model.net.history_summary(item_seq, kind_seq)[0])
            gen = torch.Generator().manual_seed(args.seed + 11)
            real = items[1:]
            picks = torch.randint(len(real), (len(cases),), generator=gen)
            item_like = (
                real[picks] + torch.randn(len(cases), real.shape[1], generator=gen) * real.std()
            )
            k_search = wanted + statistics.median(len(banned) for _, banned in cases)
            out["recall"] = {
                name: recall_curve(model.index, items, list(queries), int(k_search), bar)
                for name, queries in (
                    ("shopper", vectors),
                    ("summary", summaries),
                    ("item_like", item_like),
                )
            }
            out["recall_at_10"] = next(
                p["recall"] for p in out["recall"]["shopper"] if p["nprobe"] == model.index.nprobe
            )
            # How item-like each kind of query vector is.
            out["query_note"] = {
                name: query_geometry(queries, model.index)
                for name, queries in (
                    ("shopper", vectors),
                    ("summary", summaries),
                    ("item_like", list(item_like)),
                )
            }
        rng = random.Random(args.seed + 9)
        sample = [rng.choice(data.item_pks) for _ in range(len(cases))]
        similar_k = recommender_settings.MAX_LIMIT * serving.OVERFETCH
        model.similar(sample[0], similar_k)  # the unit-norm copy is made on the first call
        out["similar"] = timed(lambda i: model.similar(sample[i], similar_k))
    return out


def query_geometry(vectors, index):
    """Median cosine of query vectors to their nearest IVF centroid (how item-like they are)."""
    import torch
    import torch.nn.functional as F

    q = F.normalize(torch.stack(list(vectors)), dim=1)
    c = F.normalize(index.centroids, dim=1)
    return round(float((q @ c.T).max(1).values.median()), 3)


def exact_top10(items, queries, chunk=32):
    """Exact top-10 item indices for each query, in batches (one BLAS call per batch)."""
    import torch

    truth = []
    for start in range(0, len(queries), chunk):
        block = torch.stack(queries[start : start + chunk])  # [q, d]
        scores = block @ items[1:].T  # [q, N]
        truth += [set(row.tolist()) for row in torch.topk(scores, 10, dim=1).indices + 1]
    return truth


def recall_curve(index, items, queries, k_search, bar):
    """Recall@10 against exact scoring and search time, at the tuned nprobe and a few larger ones."""
    tuned, lists = index.nprobe, len(index.centroids)
    truth = exact_top10(items, queries)
    curve = []
    try:
        for nprobe in sorted({max(1, min(lists, int(tuned * f))) for f in (0.5, 1, 2, 4)}):
            index.nprobe = nprobe
            hits, times = 0, []
            for query, true in zip(queries, truth, strict=True):
                t0 = time.perf_counter()
                index.search(query, k_search)
                times.append((time.perf_counter() - t0) * 1000)
                hits += len(true & set(index.search(query, 10)[0]))
            curve.append(
                {
                    "nprobe": nprobe,
                    "recall": hits / (10 * len(queries)),
                    "p50": percentile(times, 50),
                    "p99": percentile(times, 99),
                }
            )
    finally:
        index.nprobe = tuned
    bar.update(1)
    return curve


def load_in_process(version):
    import inspect

    from recommender import serving

    version.refresh_from_db()
    if "sha256" in inspect.signature(serving.load_version).parameters:
        return serving.load_version(version.pk, version.artifact, sha256=version.artifact_sha256)
    return serving.load_version(version.pk, version.artifact)


def run_size(args, size):
    """Everything for one catalogue size; returns a JSON-able dict."""
    from tqdm import tqdm

    database_url = size_database_url(args.database_url, size)
    result = {"size": size, "database": database_url, "load_before": loadavg()}
    harness.ensure_database(database_url)
    setup_django(args, size, database_url)
    steps = tqdm(
        total=6, desc=f"{size}: set-up", unit="step"
    )  # catalogue, shoppers, model, cache, server
    data = prepare_data(args, size, steps)
    result.update(
        items=len(data.item_pks),
        shoppers=len(data.shoppers),
        events=data.events,
        setup=data.timings,
        version=data.version.pk,
    )
    steps.set_description(f"{size}: flush Redis db, cache sessions")
    reset_serving_state(data)
    if data.experiment is not None:
        steps.set_description(f"{size}: assign the shoppers their arms")
        result["experiment"] = {"shoppers": assign_shoppers(data)}
    steps.update(1)

    steps.set_description(f"{size}: gunicorn up, workers load the model")
    server = start_server(args)
    pidfile = os.environ.get("BENCH_SERVING_PIDFILE")
    try:
        if pidfile:
            Path(pidfile).write_text(str(server.pid))
        t0 = time.monotonic()
        loaded = {}
        warm = threading.Thread(
            target=lambda: loaded.update(
                workers=wait_for_workers(server, args.workers, args.worker_timeout)
            ),
            daemon=True,
        )
        warm.start()
        model = load_in_process(data.version)  # meanwhile: the same code as the workers
        warm.join(args.worker_timeout)
        if "workers" not in loaded:
            raise RuntimeError(f"workers did not load the model:\n{server.tail()}")
        result["workers"] = loaded["workers"]
        result["worker_load_s"] = round(time.monotonic() - t0, 1)
        steps.update(1)
        steps.close()

        workload = Workload(data, args.seed)
        deadline = time.monotonic() + args.time_limit
        result["http"] = {}
        for i, clients in enumerate(args.client_list):
            share_deadline = time.monotonic() + (deadline - time.monotonic()) / (
                len(args.client_list) - i
            )
            result["http"][str(clients)] = bench_http(
                args,
                server,
                workload,
                clients,
                share_deadline,
                lambda **kw: tqdm(unit="req", leave=False, **kw),
            )
        result["reused_items"] = workload.reused_items
        if data.experiment is not None:
            result["experiment"]["lists"] = experiment_lists()
        result["server_command"] = server.command[1:]
    finally:
        server.stop()
        if pidfile:
            Path(pidfile).unlink(missing_ok=True)
    bar = tqdm(total=18, desc=f"{size}: model in process", leave=False)
    result["model"] = model_share(args, model, data, bar)
    bar.close()
    result["load_after"] = loadavg()
    return result


def child_main(args):
    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    result = run_size(args, args.one_size)
    Path(args.result_json).write_text(json.dumps(result))


# ================================================================ parent: sizes, report


def run_child(args, size, argv, workdir):
    out = Path(workdir) / f"{size}.json"
    pidfile = Path(workdir) / f"{size}.gunicorn.pid"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.serving",
        *argv,
        "--one-size",
        size,
        "--result-json",
        str(out),
    ]
    env = {**os.environ, "BENCH_SERVING_PIDFILE": str(pidfile)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    try:
        code = proc.wait()
    except BaseException:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise
    finally:
        kill_leftover_gunicorn(pidfile)
    if code != 0 or not out.exists():
        raise RuntimeError(f"size {size}: the benchmark process failed with exit code {code}")
    return json.loads(out.read_text())


def kill_leftover_gunicorn(pidfile):
    """If a size's process died without stopping its gunicorn, stop that process group."""
    try:
        pid = int(Path(pidfile).read_text())
    except (OSError, ValueError):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"gunicorn" in cmdline:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    Path(pidfile).unlink(missing_ok=True)


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def fmt(value, digits=1):
    return "–" if value is None else f"{value:,.{digits}f}"


def size_label(result):
    return "demo store" if result["size"] == "demo" else f"{result['items']:,} items"


def render(args, results, started, elapsed, load_before):
    lines = []
    add = lines.append
    argv = [shlex.quote(a) for a in sys.argv[1:]]
    add("# Serving benchmark")
    add("")
    add(
        f"- run: {started:%Y-%m-%d %H:%M} UTC, {elapsed:.0f} s, commit {harness.git_commit()}"
        f"; load average before/after: {load_before} / {loadavg()}"
    )
    add(f"- command: `{' '.join(['.venv/bin/python -m benchmarks.serving', *argv])}`")
    add(
        f"- machine: {os.cpu_count()} CPU cores ({cpu_model()}) shared with other work: every figure stands "
        f"beside the baseline measured in the same interleaved rounds. Python {platform.python_version()}, "
        f"Django {django_version()}, torch {torch_version()}, PostgreSQL {postgres_version(args)}, "
        f"Redis at {args.redis_url}."
    )
    add(
        f"- server: gunicorn, {args.workers} sync workers, `benchmarks.bench_site.settings` (DEBUG off, "
        f"PostgreSQL, Redis cache + cached_db sessions, API throttle `{args.api_throttle_rate}`), 1 torch thread "
        f"per worker; clients: separate processes on 127.0.0.1, one new connection per request (sync workers "
        f"close it), every request with a shopper's session cookie; {args.rounds} interleaved rounds per client "
        f"count, the order rotating each round."
    )
    add(
        f"- data: per size, {args.shoppers:,} anonymous shoppers × {args.events_per_shopper} events (1-3 product "
        f"clusters each) with a session each; model: cnn_dnn of the production shape (dim 64, max_len 50, tower "
        f"256), random weights, clustered item embeddings (`benchmarks/serving_data.py`); demo: "
        f"`seed_demo --products {args.demo_products} --shoppers {args.demo_shoppers}` plus the benchmark shoppers. "
        "Above `ANN_MIN_ITEMS` the IVF index is built once as promotion builds it (`ml.pipeline.build_index`: "
        "nprobe tuned on 500 validation histories through the model, not the benchmark shoppers') and loaded by "
        "each worker."
    )
    add(
        "- `miss`: each request is a shopper whose cached list was invalidated (`serving.invalidate_shopper`, what "
        "a new event does) just before the batch, each shopper once per batch; `hit`: the shoppers just computed. "
        "`similar` / `page`: items never asked before (lists computed); `page_warm`: the same pages again. "
        "'lists/req' counts the recommendation rows written per request (the check: 1, 0, 1, 2, 0, 1). "
        f"`miss_arm`: the cache miss in `{EXPERIMENT_PLACEMENT}`, where an experiment runs between the "
        "active version and a second one of the same shape (50/50; every worker holds both), for shoppers "
        "assigned their arm in set-up."
    )
    add("")
    add("## Latency and throughput")
    add("")
    add(
        "| catalogue | clients | scenario | requests | req/s | p50 ms | p95 ms | p99 ms | model ms p50 / p99 "
        "(in worker) | service ms p50 / p99 | GC ms p99 / max | lists/req | CPU ms/req: gunicorn · PostgreSQL · "
        "Redis · client | non-200 or wrong source |"
    )
    add("|---|---:|---|---:|---:|---:|---:|---:|---|---|---|---:|---|---|")
    for result in results:
        for clients, scenarios in result["http"].items():
            for key, s in scenarios.items():
                if key.startswith("_"):
                    continue
                bad = {k: v for k, v in s["statuses"].items() if k != "200"}
                expected_source = SCENARIOS[key][2]
                if expected_source:
                    bad |= {
                        f"source {k}": v for k, v in s["fields"].items() if k != expected_source
                    }
                cpu = " · ".join(
                    fmt(s["cpu_ms"].get(k), 2) for k in ("gunicorn", "postgres", "redis", "client")
                )
                model = (
                    f"{fmt(s['model_p50'], 2)} / {fmt(s['model_p99'], 2)}"
                    if s["model_calls"]
                    else "–"
                )
                service = (
                    f"{fmt(s['service_p50'], 2)} / {fmt(s['service_p99'], 2)}"
                    if s["service_p50"] is not None
                    else "–"
                )
                lists = (
                    fmt(s["lists_per_request"], 2)
                    if s["expected_lists"] or s["lists_per_request"]
                    else "0"
                )
                collect = f"{fmt(s['gc_p99'], 1)} / {fmt(s['gc_max'], 1)}" if s["gc_max"] else "0"
                add(
                    f"| {size_label(result)} | {clients} | {key}: {SCENARIOS[key][0]} | {s['requests']:,} | "
                    f"{fmt(s['rps'], 0)} | {fmt(s['p50'])} | {fmt(s['p95'])} | {fmt(s['p99'])} | {model} | "
                    f"{service} | {collect} | {lists} | {cpu} | {bad or '-'} |"
                )
    add("")
    add("## Targets")
    add("")
    lines.extend(target_lines(results))
    add("")
    add("## The model's own share (in process, same LoadedModel, same shoppers' histories)")
    add("")
    add(
        "`LoadedModel.top_candidates(history, 30, exclude_pks=seen ∪ purchased)` as `recommend` calls it, "
        f"over {args.model_queries} benchmark shoppers × 3 repeats, measured after the server stopped; "
        "the served hybrid ranker (net + item-kNN lists of 50, weight 1): top_candidates scores every item "
        "(exact) or the IVF candidates with the history's kNN neighbours; encode = history → shopper vector "
        "(CNN + DNN); score + top-k = the net's [N, 64] × [64] product and top-30 alone; "
        "similar = `LoadedModel.similar(pk, 150)` (embedding cosine + co-occurrence, standardised). "
        "Served recall@10 = the served list against exhaustive hybrid scoring."
    )
    add("")
    add(
        "| catalogue | top_candidates p50 / p99 ms | encode p50 / p99 | exact score + top-k p50 / p99 | "
        "IVF search p50 / p99 | top_candidates, exact p50 / p99 | similar p50 / p99 | IVF index | recall@10 "
        "(index · served list) |"
    )
    add("|---|---|---|---|---|---|---|---|---|")
    for result in results:
        m = result["model"]

        def pair(name, m=m):
            return f"{fmt(m[name]['p50'], 2)} / {fmt(m[name]['p99'], 2)}" if name in m else "–"

        index = m.get("index")
        index_text = (
            f"{index['lists']} lists, nprobe {index['nprobe']}, built in {index['build_seconds']} s"
            if index
            else "none (exact)"
        )
        recall = (
            f"{m['recall_at_10']:.3f} · {m['served_recall_at_10']:.3f}"
            if "recall_at_10" in m
            else "–"
        )
        add(
            f"| {size_label(result)} | {pair('top_candidates')} | {pair('encode')} | {pair('score_exact')} | "
            f"{pair('search_ann')} | {pair('top_candidates_exact')} | {pair('similar')} | {index_text} | {recall} |"
        )
    for result in results:
        recall = result["model"].get("recall")
        if not recall:
            continue
        notes = result["model"]["query_note"]
        add("")
        add(
            f"### Approximate index, {size_label(result)}: recall@10 against exact scoring by nprobe "
            f"({result['model']['queries']} queries; search of the served size, top-"
            f"{LIMIT * 3}+excluded, p50 / p99 ms)"
        )
        add("")
        nprobes = [point["nprobe"] for point in recall["shopper"]]
        add(
            "| queries | median cosine to nearest centroid | "
            + " | ".join(
                f"nprobe {n}{' (tuned)' if n == result['model']['index']['nprobe'] else ''}"
                for n in nprobes
            )
            + " |"
        )
        add("|---|---:|" + "---|" * len(nprobes))
        labels = {
            "shopper": "shopper vectors of the served model (random CNN + tower)",
            "summary": "the model's history summary (the DNN branch's input to the tower)",
            "item_like": "item + noise (reference)",
        }
        for name, curve in recall.items():
            add(
                f"| {labels[name]} | {notes[name]:.2f} | "
                + " | ".join(
                    f"{p['recall']:.3f} ({fmt(p['p50'], 2)} / {fmt(p['p99'], 2)})" for p in curve
                )
                + " |"
            )
    add("")
    add("## Set-up")
    add("")
    for result in results:
        workers = "; ".join(
            f"pid {w['pid']}: v{w['version']}, {w['items']:,} items"
            + (
                f", IVF {w['index']['lists']} lists nprobe {w['index']['nprobe']} built in "
                f"{w['index']['build_seconds']} s"
                if w.get("index")
                else ""
            )
            + (
                ", arms " + ", ".join(f"{arm}: v{v}" for arm, v in w["arms"].items())
                if w.get("arms")
                else ""
            )
            for w in result["workers"]
        )
        note = ""
        if result.get("experiment"):
            experiment = result["experiment"]
            note = (
                f"; experiment in `{EXPERIMENT_PLACEMENT}`: shoppers per arm "
                + ", ".join(f"{arm} {n}" for arm, n in sorted(experiment["shoppers"].items()))
                + "; lists served per arm and version "
                + (
                    ", ".join(
                        f"{arm} {versions}"
                        for arm, versions in sorted(experiment.get("lists", {}).items())
                    )
                    or "none"
                )
            )
        add(
            f"- {size_label(result)}: database `{harness.redact(result['database'])}`, {result['events']:,} "
            f"events; set-up {result['setup']}; workers ready {result['worker_load_s']} s after start ({workers})"
            f"{note}; load average {result['load_before']} → {result['load_after']}"
            + (
                f"; {result['reused_items']} item requests reused items (not cold)"
                if result["reused_items"]
                else ""
            )
            + (
                " — HTTP part cut short by --time-limit"
                if any(v.get("_cut") for v in result["http"].values())
                else ""
            )
        )
    if results:
        add("")
        add(f"Server: `{' '.join(results[0]['server_command'])}`")
    errors = [
        e
        for r in results
        for sc in r["http"].values()
        for k, s in sc.items()
        if not k.startswith("_")
        for e in s["errors"]
    ][:5]
    if errors:
        add("")
        add("First client errors: " + "; ".join(errors))
    return "\n".join(lines)


def cpu_total(summary):
    return sum(summary["cpu_ms"].values())


def target_lines(results):
    out = []

    def find(size_items, clients, key):
        for r in results:
            if (r["size"] == str(size_items)) and str(clients) in r["http"]:
                return r["http"][str(clients)].get(key)
        return None

    def verdict(ok):
        return "**met**" if ok else "**missed**"

    def ratio_rounds(a, b, field):
        return ", ".join(
            f"{x[field] / y[field]:.2f}"
            for x, y in zip(a["rounds"], b["rounds"], strict=False)
            if x[field] and y[field]
        )

    miss, base, hit = (find(BEAUTY_ITEMS, 1, k) for k in ("miss", "base", "hit"))
    page, page_warm = find(BEAUTY_ITEMS, 1, "page"), find(BEAUTY_ITEMS, 1, "page_warm")
    if miss and base:
        ratio = miss["p50"] / base["p50"]
        out.append(
            f"- 54,542 items, 1 client, cache miss p99 ≤ 15 ms: {fmt(miss['p99'])} ms "
            f"{verdict(miss['p99'] <= 15)}; p50 ≤ 1.5× baseline p50: {fmt(miss['p50'])} vs "
            f"{fmt(base['p50'])} ms = {ratio:.2f}× {verdict(ratio <= 1.5)} (per round: "
            f"{ratio_rounds(miss, base, 'p50')})."
        )
    if hit:
        out.append(
            f"- 54,542 items, 1 client, cache hit p99 ≤ 5 ms: {fmt(hit['p99'])} ms {verdict(hit['p99'] <= 5)}"
            + (f" (baseline p99 {fmt(base['p99'])} ms)" if base else "")
            + "."
        )
    if page:
        out.append(
            f"- 54,542 items, 1 client, product page with two carousels p99 ≤ 40 ms: lists computed "
            f"{fmt(page['p99'])} ms {verdict(page['p99'] <= 40)}"
            + (
                f"; lists cached {fmt(page_warm['p99'])} ms {verdict(page_warm['p99'] <= 40)}"
                if page_warm
                else ""
            )
            + "."
        )
    for clients in sorted({int(c) for r in results for c in r["http"] if int(c) > 1}):
        miss8, base8 = find(BEAUTY_ITEMS, clients, "miss"), find(BEAUTY_ITEMS, clients, "base")
        if miss8 and base8:
            ratio = miss8["rps"] / base8["rps"]
            out.append(
                f"- 54,542 items, {clients} clients, real-time recommendations ≥ 0.6× baseline req/s: "
                f"{fmt(miss8['rps'], 0)} vs {fmt(base8['rps'], 0)} req/s = {ratio:.2f}× {verdict(ratio >= 0.6)}"
                f" (per round: {ratio_rounds(miss8, base8, 'rps')}). CPU per request, all processes "
                f"(gunicorn + PostgreSQL + Redis + client): {cpu_total(miss8):.1f} vs {cpu_total(base8):.1f} ms, "
                f"so a CPU-bound machine caps the ratio near {cpu_total(base8) / cpu_total(miss8):.2f}×."
            )
    for r in results:
        plain, arms = r["http"].get("1", {}).get("miss"), r["http"].get("1", {}).get("miss_arm")
        if plain and arms and plain["p99"] and arms["p99"]:
            ratio = arms["p99"] / plain["p99"]
            out.append(
                f"- {size_label(r)}, 1 client, cache miss with an experiment running (2 version arms) "
                f"p99 within 10 % of the plain cache miss in the same run: {fmt(arms['p99'])} vs "
                f"{fmt(plain['p99'])} ms = {ratio:.2f}× {verdict(ratio <= 1.10)}; p50 "
                f"{fmt(arms['p50'])} vs {fmt(plain['p50'])} ms = {arms['p50'] / plain['p50']:.2f}× "
                f"(per round: {ratio_rounds(arms, plain, 'p50')})."
            )
    big = next((r for r in results if r["size"] == "1000000"), None)
    if big:
        miss1, base1 = big["http"].get("1", {}).get("miss"), big["http"].get("1", {}).get("base")
        m = big["model"]
        if miss1:
            out.append(
                f"- 1,000,000 items, 1 client, cache miss p99 ≤ 30 ms with the IVF index: "
                f"{fmt(miss1['p99'])} ms {verdict(miss1['p99'] <= 30)}"
                + (
                    f" (p50 {fmt(miss1['p50'])} ms; baseline p50 / p99 {fmt(base1['p50'])} / "
                    f"{fmt(base1['p99'])} ms)"
                    if base1
                    else ""
                )
                + "."
            )
        if "recall_at_10" in m:
            out.append(
                f"- 1,000,000 items, recall@10 of the index against exact scoring ≥ 0.95 ({m['queries']} real "
                f"shopper vectors): {m['recall_at_10']:.3f} {verdict(m['recall_at_10'] >= 0.95)}; the served "
                f"top-10 (seen/purchased excluded) vs exact: {m['served_recall_at_10']:.3f}."
            )
        else:
            out.append("- 1,000,000 items: no index was built.")
    beauty = next((r for r in results if r["size"] == str(BEAUTY_ITEMS)), None)
    if beauty and "recall_at_10" in beauty["model"]:
        m = beauty["model"]
        out.append(
            f"- 54,542 items (above ANN_MIN_ITEMS, so also served from the IVF index), recall@10 against exact "
            f"scoring ({m['queries']} real shopper vectors): {m['recall_at_10']:.3f} "
            f"{verdict(m['recall_at_10'] >= 0.95)}; served top-10 vs exact: {m['served_recall_at_10']:.3f}."
        )
    for r in results:
        m = r["model"]
        http_miss = r["http"].get("1", {}).get("miss")
        if http_miss and http_miss["model_calls"]:
            out.append(
                f"- model share, {size_label(r)}: in process top_candidates p50 {fmt(m['top_candidates']['p50'], 2)}"
                f" / p99 {fmt(m['top_candidates']['p99'], 2)} ms; in the workers under load (miss) p50 "
                f"{fmt(http_miss['model_p50'], 2)} / p99 {fmt(http_miss['model_p99'], 2)} ms of a "
                f"{fmt(http_miss['p50'])} / {fmt(http_miss['p99'])} ms request."
            )
    return out


def django_version():
    import django

    return django.get_version()


def torch_version():
    try:
        import importlib.metadata

        return importlib.metadata.version("torch")
    except Exception:  # noqa: BLE001
        return "?"


def postgres_version(args):
    try:
        import psycopg

        parts = urlparse(args.database_url)
        with psycopg.connect(parts._replace(path="/postgres").geturl(), connect_timeout=5) as conn:
            return conn.execute("SHOW server_version").fetchone()[0]
    except Exception:  # noqa: BLE001
        return "?"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.one_size:
        child_main(args)
        return

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    started, t0 = dt.datetime.now(dt.UTC), time.monotonic()
    load_before = loadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as workdir:
        for size in args.size_list:
            results.append(run_child(args, size, argv, workdir))
    report = render(args, results, started, time.monotonic() - t0, load_before)
    print()
    print(report)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
