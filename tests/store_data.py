"""Synthetic store histories for training tests: shoppers walk the catalogue in order.

Shopper s views items start, start+1, start+2, ... one day apart, so "the next item"
is perfectly learnable while popularity is flat: a trained model must beat it clearly.
"""

import random
import uuid
from datetime import timedelta
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.utils import timezone

from recommender.models import Event
from shop_demo.catalog.models import Category, Product


def make_catalogue(n_items=40):
    category = Category.objects.create(name="Chain", slug="chain")
    return [
        Product.objects.create(
            category=category,
            name=f"Chain item {i}",
            slug=f"chain-{i}",
            price=Decimal("5.00"),
            stock=100,
        )
        for i in range(n_items)
    ]


def make_history(products, n_shoppers=150, length=12, seed=0, with_users=True):
    rng = random.Random(seed)
    now = timezone.now()
    users = []
    if with_users:
        users = [
            get_user_model().objects.create_user(
                f"walker{i}",
                email=f"walker{i}@example.com",
                first_name="Secret",
                last_name=f"Name{i}",
            )
            for i in range(n_shoppers // 2)
        ]
    events = []
    for s in range(n_shoppers):
        start = rng.randrange(len(products))
        end_day = rng.uniform(0, 12)  # the last event falls within the last 12 days
        user = users[s] if s < len(users) else None
        for step in range(length):
            events.append(
                Event(
                    event_id=uuid.uuid4(),
                    user=user,
                    session_key="" if user else f"anon{s:05d}",
                    item=products[(start + step) % len(products)],
                    kind="purchase" if step % 5 == 4 else "view",
                    occurred_at=now - timedelta(days=end_day + (length - 1 - step)),
                )
            )
    Event.objects.bulk_create(events)
    return events


# Small and quick: a few epochs of a tiny model.
FAST_CONFIG = {
    "MODEL_CONFIG": {"dim": 16, "tower_hidden": 32, "dropout": 0.1, "emb_dropout": 0.1},
    "TRAINING": {"epochs": 12, "patience": 4, "max_seconds": 60, "batch_size": 64, "lr": 0.01},
    "CLEANING": {"min_item_count": 1, "min_shopper_count": 2},
    "HOLDOUT_DAYS": 4,
    "MIN_TRAINING_EVENTS": 100,
    # A small test store: let its ~25 validation shoppers decide between the candidates.
    "MIN_VALIDATION_SHOPPERS": 10,
}
# A candidate that learns nothing: one epoch at learning rate 0 leaves the random weights.
UNTRAINED = {**FAST_CONFIG, "TRAINING": {**FAST_CONFIG["TRAINING"], "epochs": 1, "lr": 0.0}}
