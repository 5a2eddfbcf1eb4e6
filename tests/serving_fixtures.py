"""An active model version over a small catalogue, without training (random weights).

Serving behaviour (rules, caching, fallbacks, version switches) does not depend on how
good the weights are; training quality is tested in test_training.py.
"""

from decimal import Decimal

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from recommender import events
from recommender.ml import artifact, data, nets
from recommender.models import ModelVersion
from shop_demo.catalog.models import Category, Product


def save_version(model, item_ids, kind_names, name, **fields) -> ModelVersion:
    """A ready (not active) version whose artifact is ``model`` over ``item_ids``."""
    payload = artifact.artifact_bytes(
        model_name=model.name,
        model_config=model.config,
        state_dict=model.state_dict(),
        item_ids=list(item_ids),
        kind_names=list(kind_names),
        metrics={},
    )
    stored = default_storage.save(f"recommender/models/{name}.pt", ContentFile(payload))
    fields = {"model_name": model.name, **fields}
    return ModelVersion.objects.create(status="ready", artifact=stored, **fields)


def make_shelf():
    """30 sellable products in 3 categories, then one inactive (``shelf[30]``, slug
    ``secret``) and one sold out (``shelf[31]``, slug ``sold-out``)."""
    cats = [Category.objects.create(name=f"C{i}", slug=f"c{i}") for i in range(3)]
    products = [
        Product.objects.create(
            category=cats[i % 3], name=f"P{i}", slug=f"p{i}", price=Decimal("1.00"), stock=5
        )
        for i in range(30)
    ]
    products.append(
        Product.objects.create(
            category=cats[0], name="Secret launch", slug="secret", price=1, stock=5, is_active=False
        )
    )
    products.append(
        Product.objects.create(category=cats[0], name="Sold out", slug="sold-out", price=1, stock=0)
    )
    return products


def views(session, products):
    """Session ``session`` viewed ``products``, in order."""
    events.record_many([{"kind": "view", "item": p.pk} for p in products], session_key=session)


def install_version(products, *, seed=0, activate=True, max_len=50):
    import torch

    torch.manual_seed(seed)
    kinds = data.kind_vocabulary(data.KNOWN_KINDS)
    # Untrained: the attention summary's random weights over unscaled item vectors still
    # make lists follow the history (an untrained transformer stack answers nearly alike
    # for every history, and scaled item vectors swamp the untrained CNN's features).
    model = nets.build_model(
        "cnn_dnn",
        len(products),
        len(kinds),
        dim=16,
        tower_hidden=32,
        max_len=max_len,
        summary="attention",
        scale_items=False,
    )
    version = save_version(
        model,
        [p.pk for p in products],
        kinds,
        f"test-{seed}",
        metrics={"valid": {"ndcg@10": 0.1}},
    )
    if activate:
        version.activate()
    return version
