"""Data for the serving benchmark: catalogues, shoppers with histories, a crafted model.

Serving cost does not depend on how good the weights are, so the model is not trained:
the hybrid ranker a store is served, over a ``cnn_dnn`` network of the production shape
(dim 64, max_len 50, tower 256) with its default random initialisation, whose item
embeddings are replaced by vectors with the structure trained embeddings have (see
``clustered_embeddings``), and item-kNN lists of ``KNN_K`` neighbours from each item's
own cluster (``cluster_neighbours``), blended at weight 1. The approximate index's
recall does depend on that structure, which is why it is not isotropic noise.

Everything is written with PostgreSQL ``COPY`` into a benchmark-only database, and is
idempotent: a catalogue of the right size is kept between runs; the benchmark shoppers,
their events and sessions are rewritten each run (a few seconds).
"""

import datetime as dt
import hashlib
import random
import secrets
import uuid
from decimal import Decimal
from importlib import import_module

GEOMETRY_VERSION = 2  # 2: the served hybrid ranker (net + item-kNN lists)
KNN_K = 50  # neighbours per item (item-kNN fits 100 by default; 50 keeps 1M items at 400 MB)
N_CATEGORIES = 50
ITEMS_PER_CLUSTER = 500
SHOPPER_PREFIX = "sbench-"
# Kinds of the benchmark shoppers' events, roughly a store's mix.
KIND_WEIGHTS = {"view": 0.70, "click": 0.10, "add_to_cart": 0.12, "purchase": 0.08}


# ---------------------------------------------------------------- geometry


def cluster_layout(n_items, seed):
    """Item -> cluster for a synthetic catalogue; cluster -> category.

    ``n_items / 500`` clusters (at least 50) with Zipf-like sizes (exponent 0.7): a few
    big product families and a long tail, as in a real catalogue. Each cluster belongs
    to one of 50 categories. Items are in random order (primary keys say nothing).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    n_clusters = max(N_CATEGORIES, n_items // ITEMS_PER_CLUSTER)
    weights = 1.0 / torch.arange(1, n_clusters + 1, dtype=torch.float64) ** 0.7
    cluster_of_item = torch.multinomial(weights, n_items, replacement=True, generator=gen)
    category_of_cluster = torch.randint(N_CATEGORIES, (n_clusters,), generator=gen)
    return cluster_of_item, category_of_cluster


def clustered_embeddings(cluster_of_item, category_of_cluster, seed, dim=64):
    """Item vectors [n, dim]: category centre + cluster centre + item noise, times a norm.

    Per-dimension standard deviations 0.10 (category), 0.07 (cluster), 0.05 (item), so
    an item is nearer its own cluster than any other but clusters of a category overlap;
    each vector is scaled by a log-normal factor (sigma 0.15), as popular items get longer
    vectors in trained models. Nearest-neighbour structure, varying cluster sizes and
    norms are what make inner-product search with an IVF index hard or easy.
    """
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    n_categories = int(category_of_cluster.max()) + 1
    top = torch.randn(n_categories, dim, generator=gen) * 0.10
    sub = torch.randn(len(category_of_cluster), dim, generator=gen) * 0.07
    centres = top[category_of_cluster] + sub
    items = centres[cluster_of_item] + torch.randn(len(cluster_of_item), dim, generator=gen) * 0.05
    scale = torch.exp(torch.randn(len(cluster_of_item), 1, generator=gen) * 0.15)
    return (items * scale).float()


# ---------------------------------------------------------------- catalogue


def _truncate(cursor, *tables):
    cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")


def ensure_demo_catalogue(products, shoppers, progress=None):
    """The demo store as ``seed_demo --products P --shoppers S`` makes it (kept when present)."""
    from django.core.management import call_command

    from shop_demo.catalog.models import Product

    if Product.objects.exists():
        return False
    call_command("seed_demo", products=products, shoppers=shoppers, verbosity=0)
    return True


def ensure_synthetic_catalogue(n_items, seed, progress=None):
    """``n_items`` active products (pk 1..n) in 50 categories, written with COPY."""
    from django.db import connection, transaction

    from shop_demo.catalog.models import Category, Product

    marker = f"sb{seed}-"
    if (
        Product.objects.count() == n_items
        and Product.objects.filter(pk=n_items, slug=f"{marker}{n_items - 1}").exists()
    ):
        return False
    cluster_of_item, category_of_cluster = cluster_layout(n_items, seed)
    category_of_item = category_of_cluster[cluster_of_item].tolist()
    rng = random.Random(seed)
    roles = list(Product.Role.values)
    now = dt.datetime.now(dt.UTC)
    with transaction.atomic(), connection.cursor() as cursor:
        _truncate(
            cursor,
            Product._meta.db_table,
            Category._meta.db_table,
            "recommender_event",
            "recommender_recommendation",
        )
        categories = Category.objects.bulk_create(
            [
                Category(name=f"Category {i}", slug=f"category-{i}", hue=i * 37 % 360)
                for i in range(N_CATEGORIES)
            ]
        )
        category_pk = [category.pk for category in categories]
        columns = "name, slug, description, price, stock, is_active, role, category_id, created_at"
        with cursor.copy(f"COPY {Product._meta.db_table} ({columns}) FROM STDIN") as copy:
            for i in range(n_items):
                copy.write_row(
                    (
                        f"Product {i}",
                        f"{marker}{i}",
                        "",
                        Decimal(rng.randint(100, 20000)) / 100,
                        rng.randint(0, 50) if rng.random() < 0.9 else 0,
                        True,
                        roles[i % len(roles)],
                        category_pk[category_of_item[i]],
                        now,
                    )
                )
                if progress is not None and i % 10_000 == 9_999:
                    progress(10_000)
        cursor.execute(f"ANALYZE {Product._meta.db_table}")
    return True


def catalogue_clusters(item_pks, seed, synthetic):
    """Cluster of each item (aligned with ``item_pks``) and the cluster -> category table."""
    import torch

    if synthetic:
        return cluster_layout(len(item_pks), seed)
    from shop_demo.catalog.models import Product

    category = dict(Product.objects.values_list("pk", "category_id"))
    keys = sorted(set(category.values()))
    index = {key: i for i, key in enumerate(keys)}
    cluster_of_item = torch.tensor([index[category[pk]] for pk in item_pks])
    return cluster_of_item, torch.arange(len(keys)) % N_CATEGORIES


# ---------------------------------------------------------------- shoppers


def synthetic_histories(n_shoppers, events_per_shopper, item_pks, cluster_of_item, seed):
    """``[[(item pk, kind), ...]]``, oldest first: each shopper keeps to 1-3 product clusters,
    picked in proportion to cluster size."""
    import torch

    rng = random.Random(seed)
    order = torch.argsort(cluster_of_item, stable=True)
    counts = torch.bincount(cluster_of_item)
    offsets = [0, *torch.cumsum(counts, 0).tolist()]
    members = order.tolist()
    clusters = [c for c in range(len(counts)) if counts[c] > 0]
    cluster_weights = [int(counts[c]) for c in clusters]
    kinds, kind_weights = list(KIND_WEIGHTS), list(KIND_WEIGHTS.values())
    histories = []
    for _ in range(n_shoppers):
        interests = rng.choices(clusters, weights=cluster_weights, k=rng.randint(1, 3))
        history = []
        for _ in range(events_per_shopper):
            c = rng.choice(interests)
            history.append(
                (
                    item_pks[members[rng.randrange(offsets[c], offsets[c + 1])]],
                    rng.choices(kinds, weights=kind_weights)[0],
                )
            )
        histories.append(history)
    return histories


def write_shoppers(n_shoppers, events_per_shopper, item_pks, cluster_of_item, seed):
    """Anonymous shoppers ``sbench-*`` with histories drawn from 1-3 product clusters.

    Returns ``[(shopper key, session id)]``: each shopper has a Django session holding its
    anonymous key, as ``recommender.shoppers`` keeps it, so requests carrying the session
    cookie are that shopper's. Previous benchmark shoppers, their events and all sessions
    of this (benchmark-only) database are replaced.
    """
    from django.conf import settings
    from django.contrib.sessions.models import Session
    from django.db import connection, transaction

    from recommender.models import Event
    from recommender.shoppers import SESSION_FIELD

    now = dt.datetime.now(dt.UTC)
    histories = synthetic_histories(
        n_shoppers, events_per_shopper, item_pks, cluster_of_item, seed + 2
    )
    rng = random.Random(seed + 4)
    shoppers = []
    store = import_module(settings.SESSION_ENGINE).SessionStore
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {Event._meta.db_table} WHERE session_key LIKE %s", [SHOPPER_PREFIX + "%"]
        )
        cursor.execute(f"TRUNCATE {Session._meta.db_table}")
        columns = (
            "event_id, session_key, item_id, kind, value, occurred_at, received_at, placement, page"
        )
        with cursor.copy(f"COPY {Event._meta.db_table} ({columns}) FROM STDIN") as copy:
            for s, history in enumerate(histories):
                key = f"{SHOPPER_PREFIX}{s:06d}-{secrets.token_hex(4)}"
                when = now - dt.timedelta(hours=rng.uniform(2, 120))
                for item, kind in history:
                    value = 1.0 if kind in ("add_to_cart", "purchase") else None
                    when += dt.timedelta(seconds=rng.uniform(5, 300))
                    copy.write_row((uuid.uuid4(), key, item, kind, value, when, when, "", ""))
                session_id = secrets.token_hex(16)
                shoppers.append((key, session_id))
        Session.objects.bulk_create(
            [
                Session(
                    session_key=session_id,
                    session_data=store().encode({SESSION_FIELD: key}),
                    expire_date=now + dt.timedelta(days=1),
                )
                for key, session_id in shoppers
            ],
            batch_size=1000,
        )
        cursor.execute(f"ANALYZE {Event._meta.db_table}")
    return shoppers


def cache_sessions(shoppers):
    """Load every benchmark session once, so cached_db sessions are in Redis as a browsing
    shopper's would be (the cache was flushed)."""
    from django.conf import settings

    store = import_module(settings.SESSION_ENGINE).SessionStore
    for _, session_id in shoppers:
        store(session_key=session_id).load()


# ---------------------------------------------------------------- model


def install_model(
    item_pks,
    cluster_of_item,
    category_of_cluster,
    seed,
    dim=64,
    max_len=50,
    activate=True,
    copy="",
):
    """A ModelVersion (active unless ``activate`` is false) whose artifact has the production
    shape and clustered items.

    The artifact is written to the artifact storage once per catalogue (its name carries a
    hash of the item ids and geometry) and reused by later runs. ``copy`` names a second
    artifact of the same weights: a version of its own that a process loads separately.
    """
    from django.core.files.storage import storages

    from recommender.conf import recommender_settings
    from recommender.ml import artifact, data
    from recommender.models import ModelVersion

    tag = hashlib.sha256(
        f"{GEOMETRY_VERSION}:{seed}:{dim}:{max_len}:{len(item_pks)}:{item_pks[:100]}:{item_pks[-100:]}".encode()
    ).hexdigest()[:12]
    name = f"{recommender_settings.ARTIFACT_PATH}/serving-bench-{len(item_pks)}-{tag}{copy}.pt"
    storage = storages[recommender_settings.ARTIFACT_STORAGE]
    if not storage.exists(name):
        kinds = data.kind_vocabulary(data.KNOWN_KINDS)
        model = served_ranker(cluster_of_item, category_of_cluster, seed, dim, max_len)
        payload = artifact.artifact_bytes(
            model_name=model.name,
            model_config=model.config,
            state_dict=model.state_dict(),
            item_ids=list(item_pks),
            kind_names=kinds,
            metrics={},
            extra={"benchmark": "serving", "geometry": GEOMETRY_VERSION},
        )
        del model
        from django.core.files.base import ContentFile

        saved = storage.save(name, ContentFile(payload))
        if saved != name:
            raise RuntimeError(f"artifact stored as {saved}, expected {name}")
        del payload
    with storage.open(name, "rb") as stored:
        digest = hashlib.sha256()
        for block in iter(lambda: stored.read(1 << 20), b""):
            digest.update(block)
    sha256 = digest.hexdigest()
    version = ModelVersion.objects.filter(artifact=name, status="ready").first()
    if version is not None and version.artifact_sha256 != sha256:
        ModelVersion.objects.filter(pk=version.pk).update(artifact_sha256=sha256)
    if version is None:
        version = ModelVersion.objects.create(
            status="ready",
            artifact=name,
            artifact_sha256=sha256,
            model_name="cnn_dnn",
            metrics={"valid": {"ndcg@10": 0.0}},
            decision="serving benchmark: random weights, clustered item embeddings",
        )
    if activate:
        version.activate()
    return version


def served_ranker(cluster_of_item, category_of_cluster, seed, dim=64, max_len=50):
    """The benchmark's model in memory: the hybrid ranker over a ``cnn_dnn`` of the
    production shape with clustered item vectors and in-cluster kNN lists, weight 1."""
    import torch

    from recommender.ml import data, hybrid, nets

    torch.manual_seed(seed)
    n_items, n_kinds = len(cluster_of_item), len(data.kind_vocabulary(data.KNOWN_KINDS))
    net = nets.build_model("cnn_dnn", n_items, n_kinds, dim=dim, max_len=max_len)
    with torch.no_grad():
        net.item_emb.weight[0].zero_()
        net.item_emb.weight[1:] = clustered_embeddings(
            cluster_of_item, category_of_cluster, seed, dim
        )
    model = hybrid.HybridRanker(
        n_items,
        n_kinds,
        net="cnn_dnn",
        net_config=net.config,
        k=KNN_K,
        weight=1.0,
        similar="blend",
    )
    model.net.load_state_dict(net.state_dict())
    model.neighbours, model.similarity = cluster_neighbours(cluster_of_item, KNN_K, seed)
    return model.eval()


def cluster_neighbours(cluster_of_item, k, seed):
    """Item-kNN lists as co-occurrence within clusters makes them: ``k`` items of the
    item's own cluster (fewer in a small one), similarities in (0, 0.5], best first.
    Returns (neighbours [N+1, k] int32, similarity [N+1, k]); row 0 is padding."""
    import torch

    gen = torch.Generator().manual_seed(seed + 5)
    n = len(cluster_of_item)
    order = torch.argsort(cluster_of_item, stable=True)
    counts = torch.bincount(cluster_of_item)
    starts = torch.cumsum(counts, 0) - counts
    mine = cluster_of_item[:, None]  # [N, 1]
    picks = (torch.rand(n, k, generator=gen) * counts[mine]).long()  # [N, k] within cluster
    neighbours = order[starts[mine] + picks] + 1  # item indices
    similarity = torch.sort(torch.rand(n, k, generator=gen) * 0.5, dim=1, descending=True).values
    similarity[neighbours == torch.arange(1, n + 1)[:, None]] = 0.0  # never its own neighbour
    neighbours[similarity == 0] = 0
    pad = torch.zeros(1, k)
    return (
        torch.cat([pad.int(), neighbours.int()]),
        torch.cat([pad, similarity.clamp_min(0.0)]),
    )


class _Histories:
    """The part of ``ml.data.SplitPart`` that ``pipeline.build_index`` reads: item and kind indices."""

    def __init__(self, items, kinds):
        self.items, self.kinds = items, kinds

    def __len__(self):
        return len(self.items)


def store_index_as_promotion_does(
    version, item_pks, cluster_of_item, seed, events_per_shopper, queries=500
):
    """Above ``ANN_MIN_ITEMS``, build the IVF index once and store it beside the artifact, as
    promotion does (``ml.pipeline.build_index``: nprobe tuned on validation shoppers' vectors
    through the model). The validation histories are drawn like the benchmark shoppers' but
    are not theirs, so recall is measured on shoppers the tuning never saw.

    Returns the seconds it took, or None when the catalogue is below the threshold or this
    version of the app has no stored index (web processes then build it when they load).
    """
    import time

    from django.core.files.storage import storages

    from recommender.conf import recommender_settings
    from recommender.ml.artifact import load_artifact

    if len(item_pks) <= recommender_settings.ANN_MIN_ITEMS:
        return None
    try:
        from recommender.artifacts import index_name, save_index
        from recommender.ml.pipeline import build_index
    except ImportError:
        return None
    started = time.monotonic()
    storage = storages[recommender_settings.ARTIFACT_STORAGE]
    with storage.open(version.artifact, "rb") as stored:
        art = load_artifact(stored)
    model = art.build_model()
    index_of = {pk: i for i, pk in enumerate(art.item_ids, start=1)}
    kind_of = {name: i for i, name in enumerate(art.kind_names)}
    histories = synthetic_histories(
        queries, events_per_shopper, item_pks, cluster_of_item, seed + 3
    )
    part = _Histories(
        [[index_of[pk] for pk, _ in history] for history in histories],
        [[kind_of[kind] for _, kind in history] for history in histories],
    )
    if storage.exists(index_name(version.artifact)):
        storage.delete(index_name(version.artifact))
    save_index(version.artifact, build_index(model, part, int(art.model_config.get("max_len", 50))))
    return round(time.monotonic() - started, 1)
