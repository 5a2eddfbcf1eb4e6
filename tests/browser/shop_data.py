"""A demo-looking shop whose shoppers each stay in one department.

The catalogue is made the way ``seed_demo`` makes one (real-looking names, pictures,
prices, some sold out or inactive). The history is simpler than the demo's simulation on
purpose: every shopper browses a single category, in no particular order, and every
category has as many shoppers, so the one thing a model can learn from it is category
affinity, and popularity alone cannot tell which category a new shopper wants.
"""

import random
import uuid
from datetime import timedelta

from django.utils import timezone

from recommender import training
from recommender.models import Event
from shop_demo.catalog.models import Product
from shop_demo.catalog.simulation import build_catalogue, write_catalogue

from ..store_data import FAST_CONFIG

# FAST_CONFIG with many more, smaller steps (an epoch is only ~240 windows) and one torch
# thread (on a busy 2-core machine more threads make it several times slower): a few
# seconds, after which every department's items lead the list for a shopper who browsed
# it, whatever the initial weights (checked over 20 seeds; fewer steps failed for some).
BROWSER_TRAINING = {
    **FAST_CONFIG,
    "TRAINING": {
        **FAST_CONFIG["TRAINING"],
        "batch_size": 8,
        "lr": 0.03,
        "epochs": 8,
        "patience": 8,
        "num_threads": 1,
    },
}


def build_shop(n_products=120, seed=3):
    """Six departments of 20 products each; returns the stored products."""
    return write_catalogue(build_catalogue(products=n_products, seed=seed))


def department_history(n_shoppers=240, length=10, seed=0):
    """Anonymous shoppers who each view (and sometimes cart) items of one category only."""
    rng = random.Random(seed)
    by_category = {}
    for pk, category_id in (
        Product.objects.filter(is_active=True).order_by("pk").values_list("pk", "category_id")
    ):
        by_category.setdefault(category_id, []).append(pk)
    categories = sorted(by_category)
    now = timezone.now()
    events = []
    for s in range(n_shoppers):
        items = by_category[categories[s % len(categories)]]
        last_day = rng.uniform(0.1, 10)  # ends in the last 10 days: some fall in the holdout
        for step in range(length):
            events.append(
                Event(
                    event_id=uuid.uuid4(),
                    session_key=f"history{s:05d}",
                    item_id=rng.choice(items),
                    kind="add_to_cart" if rng.random() < 0.1 else "view",
                    occurred_at=now - timedelta(days=last_day + (length - 1 - step) * 0.7),
                )
            )
    Event.objects.bulk_create(events)
    return events


def train_first_version():
    """A real, small model trained in this process and promoted (no version was active).

    The model's initial weights come from torch's global generator (training seeds its own
    only after building the model), so it is seeded here: the same model every run.
    """
    import torch

    torch.manual_seed(0)
    version = training.run_training(training.request_training(config=BROWSER_TRAINING).pk)
    assert version.status == "ready" and version.is_active, version.error or version.decision
    return version
