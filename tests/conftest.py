"""Fixtures of the Django tests. Tests of ``recommender.ml`` need none of them and run
without Django settings or services: ``pytest tests/ml -p no:django`` (tests/ml/conftest.py
turns this file's autouse fixtures off there)."""

import os

import pytest
from django.conf import settings

REQUIRE_SERVICES = os.environ.get("RECOMMENDER_REQUIRE_SERVICES") == "1"


def pytest_configure(config):
    # Without the django plugin (``pytest tests/ml -p no:django``) no service is used.
    if REQUIRE_SERVICES and config.pluginmanager.hasplugin("django"):
        missing = [name for name, up in settings.SERVICES.items() if not up]
        if missing:
            raise pytest.UsageError(
                f"RECOMMENDER_REQUIRE_SERVICES=1 but not reachable: {', '.join(missing)} "
                "(see tests/settings.py for the URLs)."
            )


def pytest_collection_modifyitems(config, items):
    for item in items:
        for service in ("postgres", "redis"):
            if item.get_closest_marker(service) and not settings.SERVICES[service]:
                item.add_marker(pytest.mark.skip(reason=f"{service} is not reachable"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (RECOMMENDER_REQUIRE_SERVICES=1) nothing may be skipped: a skip is a failure."""
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_SERVICES and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"Skipped in CI, where every test must run: {report.longrepr}"


@pytest.fixture(autouse=True)
def _clear_cache():
    """Each test starts with an empty cache: this run's keys only, not the shared database's
    (other test runs on the machine use the same Redis database under their own prefix)."""
    from django.core.cache import caches
    from django.core.cache.backends.redis import RedisCache

    for alias in settings.CACHES:
        cache = caches[alias]
        if isinstance(cache, RedisCache) and cache.key_prefix:
            client = cache._cache.get_client(write=True)
            keys = list(client.scan_iter(match=f"{cache.key_prefix}:*", count=1000))
            if keys:
                client.delete(*keys)
        else:
            cache.clear()
    yield


@pytest.fixture(autouse=True)
def _fresh_serving_state():
    """Each test starts as a new web process would: no model version loaded yet, and no
    snapshot of running experiments."""
    from recommender import experiments, serving

    def reset():
        serving.active_model.reset()
        serving.arm_models.reset()
        experiments.running_experiments.reset()

    reset()
    yield
    reset()


@pytest.fixture
def catalog(db):
    """A small catalogue: two categories, eight products (one inactive, one out of stock)."""
    from decimal import Decimal

    from shop_demo.catalog.models import Category, Product

    cats = [
        Category.objects.create(name=n, slug=n.lower(), hue=h)
        for n, h in (("Coffee", 30), ("Garden", 120))
    ]
    products = []
    for i in range(8):
        products.append(
            Product.objects.create(
                category=cats[i % 2],
                name=f"Product {i}",
                slug=f"product-{i}",
                price=Decimal("10.00") + i,
                stock=0 if i == 6 else 10,
                is_active=i != 7,
            )
        )
    return products


@pytest.fixture
def shelf(db):
    """The serving tests' catalogue (``serving_fixtures.make_shelf``): 30 sellable
    products, one inactive and one sold out. Some test files keep a shelf of their own."""
    from .serving_fixtures import make_shelf

    return make_shelf()


@pytest.fixture
def history(db):
    """The store_data catalogue with its shoppers' history (enough to train on)."""
    from .store_data import make_catalogue, make_history

    products = make_catalogue()
    make_history(products)
    return products


@pytest.fixture
def private_redis():
    """A redis-server of this test's own, which it may kill (skips without redis-server)."""
    from .faults.services import PrivateRedis

    server = PrivateRedis().start()
    yield server
    server.stop()
