"""Tests of ``recommender.ml``: pure PyTorch + NumPy, no Django, no database, no cache.

They run with no Django settings and no services: ``pytest tests/ml -p no:django``.
"""

import numpy as np
import pytest
import torch

from recommender.ml import data, nets


@pytest.fixture(autouse=True)
def _clear_cache():
    """Replaces tests/conftest.py's cache clearing: nothing here uses a cache."""
    yield


@pytest.fixture(autouse=True)
def _fresh_serving_state():
    """Replaces tests/conftest.py's serving reset: nothing here imports Django's serving."""
    yield


def chain_sequences(n_users=120, n_items=30, seed=0, min_len=5, max_len=9) -> data.Sequences:
    """Synthetic shoppers walking a chain i -> i+1 (mod n): the next item is predictable."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        start = int(rng.integers(0, n_items))
        length = int(rng.integers(min_len, max_len + 1))
        for t in range(length):
            item = f"p{(start + t) % n_items}"
            kind = "purchase" if t % 4 == 3 else "view"
            rows.append((f"u{u}", item, kind, None, 1000.0 * u + 100.0 * t))
    return uncleaned_sequences(rows)


def uncleaned_sequences(rows) -> data.Sequences:
    """``rows`` as sequences with every cleaning rule off: synthetic data stays as written."""
    cfg = data.CleaningConfig(
        burst_window_seconds=None,
        max_events_per_minute=None,
        min_item_count=None,
        min_shopper_count=None,
    )
    return data.build_sequences(rows, cfg)


@pytest.fixture
def chain_split():
    torch.manual_seed(0)
    return data.leave_one_out(chain_sequences())


def small_net(split, name="cnn_dnn"):
    """A seeded net small enough to train on ``chain_split`` in a second."""
    torch.manual_seed(0)
    return nets.build_model(
        name,
        split.n_items,
        split.n_kinds,
        dim=16,
        max_len=8,
        tower_hidden=32,
        dropout=0.1,
        emb_dropout=0.1,
    )
