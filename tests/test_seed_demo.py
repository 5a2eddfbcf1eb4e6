"""``seed_demo`` and the simulation behind it: deterministic, sized, and learnable."""

from collections import Counter
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db.models import Max, Min
from django.utils import timezone

from recommender.models import Event
from shop_demo.catalog.models import Category, Order, Product
from shop_demo.catalog.simulation import build_catalogue, simulate_shopper

SMALL = {"products": 80, "shoppers": 30, "days": 30}


def fixed_now():
    return timezone.now().replace(microsecond=0) - timedelta(minutes=5)


def seed(**options):
    out = StringIO()
    call_command("seed_demo", stdout=out, verbosity=0, **{**SMALL, **options})
    return out.getvalue()


def catalogue_snapshot():
    return list(
        Product.objects.order_by("slug").values_list(
            "slug",
            "name",
            "category__slug",
            "price",
            "stock",
            "is_active",
            "role",
            "companion__slug",
        )
    )


def event_sequence():
    """Every stored event in insertion order, with items and shoppers named, not numbered."""
    return list(
        Event.objects.order_by("id").values_list(
            "event_id",
            "user__username",
            "session_key",
            "item__slug",
            "kind",
            "value",
            "occurred_at",
        )
    )


def catalogue_plan(seed_value, products=120):
    return [
        (p.name, p.slug, p.category, p.role, p.price, p.stock, p.is_active, p.companion)
        for p in build_catalogue(products=products, seed=seed_value).products
    ]


# -- planning, no database ------------------------------------------------------------


def test_catalogue_plan_is_deterministic_and_depends_on_the_seed():
    assert catalogue_plan(1) == catalogue_plan(1)
    assert catalogue_plan(1) != catalogue_plan(2)


def test_catalogue_plan_has_every_role_and_valid_companions():
    catalogue = build_catalogue(products=3000, seed=7)
    products = catalogue.products
    assert len(products) == 3000 and len(catalogue.categories) == 12
    roles = Counter(p.role for p in products)
    assert set(roles) == {"main", "accessory", "consumable", "refill"}
    for product in products:
        expected = {"accessory": "main", "refill": "consumable"}.get(product.role)
        if expected:
            companion = products[product.companion]
            assert companion.role == expected and companion.category == product.category
        else:
            assert product.companion is None
    assert len({p.slug for p in products}) == len(products)
    assert 0.01 < sum(not p.is_active for p in products) / 3000 < 0.05
    assert 0.01 < sum(p.stock == 0 for p in products) / 3000 < 0.05


def test_shopper_histories_are_deterministic_and_in_time_order():
    catalogue = build_catalogue(products=200, seed=4)
    first = [simulate_shopper(catalogue, i, seed=4, days=60) for i in range(40)]
    again = [simulate_shopper(catalogue, i, seed=4, days=60) for i in range(40)]
    other = [simulate_shopper(catalogue, i, seed=5, days=60) for i in range(40)]
    assert [h.events for h in first] == [h.events for h in again]
    assert [h.events for h in first] != [h.events for h in other]
    for history in first:
        ages = [e.seconds_ago for e in history.events]
        assert ages == sorted(ages, reverse=True)
        assert all(0 < age <= 60 * 86400 for age in ages)
        assert bool(history.username) != bool(history.session_key)


def test_simulated_behaviour_is_learnable():
    """Funnel, taste, and the sequential patterns: refills follow consumables, accessories mains."""
    catalogue = build_catalogue(products=300, seed=11)
    products = catalogue.products
    histories = [simulate_shopper(catalogue, i, seed=11, days=60) for i in range(600)]
    kinds = Counter(e.kind for h in histories for e in h.events)
    assert kinds["view"] > 4 * kinds["add_to_cart"] > 0
    assert kinds["add_to_cart"] > kinds["purchase"] > kinds["remove_from_cart"] > 0

    # For each accessory or refill purchase: was its companion bought earlier, and, as the
    # chance baseline, was a decoy (another product of the companion's role and category)?
    followed = {"refill": Counter(), "accessory": Counter()}
    for history in histories:
        bought_at = {}
        for event in history.events:
            if event.kind != "purchase":
                continue
            product = products[event.product]
            if product.role in followed:
                companion = products[product.companion]
                decoy = next(
                    p
                    for p in catalogue.by_category[companion.category] + [None]
                    if p is None or (p.role == companion.role and p is not companion)
                )
                counts = followed[product.role]
                counts["total"] += 1
                counts["companion"] += bought_at.get(companion.index, -1) > event.seconds_ago
                counts["decoy"] += (
                    decoy is not None and bought_at.get(decoy.index, -1) > event.seconds_ago
                )
            bought_at.setdefault(event.product, event.seconds_ago)
    for role, counts in followed.items():
        assert counts["total"] >= 30, role
        assert counts["companion"] / counts["total"] > 0.3, f"{role}: {counts}"
        assert counts["companion"] > 5 * max(1, counts["decoy"]), f"{role}: {counts}"

    # Stable tastes: a registered shopper's views concentrate on few categories.
    shares = []
    for history in histories:
        views = Counter(products[e.product].category for e in history.events if e.kind == "view")
        if sum(views.values()) >= 10:
            shares.append(sum(n for _, n in views.most_common(2)) / sum(views.values()))
    assert sum(shares) / len(shares) > 0.75


def test_refill_is_bought_days_after_its_consumable():
    catalogue = build_catalogue(products=300, seed=11)
    products = catalogue.products
    gaps = []
    for i in range(400):
        history = simulate_shopper(catalogue, i, seed=11, days=60)
        consumable_bought = {}
        for event in history.events:
            if event.kind == "purchase":
                product = products[event.product]
                if product.role == "consumable":
                    consumable_bought.setdefault(product.index, event.seconds_ago)
                elif product.role == "refill" and product.companion in consumable_bought:
                    gaps.append((consumable_bought[product.companion] - event.seconds_ago) / 86400)
    assert gaps and sorted(gaps)[len(gaps) // 2] >= 4


# -- the command, with the database --------------------------------------------------


@pytest.mark.django_db
def test_seed_demo_is_deterministic_under_a_seed():
    now = fixed_now()
    seed(seed=3, now=now)
    catalogue, events = catalogue_snapshot(), event_sequence()
    seed(seed=3, now=now, flush=True)
    assert catalogue_snapshot() == catalogue
    assert event_sequence() == events
    seed(seed=4, now=now, flush=True)
    assert catalogue_snapshot() != catalogue
    assert event_sequence() != events


@pytest.mark.django_db
def test_seed_demo_honours_sizes_and_stays_in_the_window():
    now = fixed_now()
    output = seed(seed=2, now=now)
    assert Product.objects.count() == 80
    assert Category.objects.count() == 4
    shoppers = set(Event.objects.values_list("user__username", "session_key").distinct())
    assert len(shoppers) == 30
    window = Event.objects.aggregate(oldest=Min("occurred_at"), newest=Max("occurred_at"))
    assert now - timedelta(days=30) <= window["oldest"] and window["newest"] <= now
    assert not Event.objects.filter(item__is_active=False).exists()
    assert "products:  80" in output and "admin / admin" in output
    purchases = Event.objects.filter(kind="purchase")
    assert purchases.filter(user__isnull=True).count() == 0, "checkout needs a login"
    assert Order.objects.exists()
    assert sum(
        line for line in Order.objects.values_list("lines__quantity", flat=True) if line
    ) == sum(purchases.values_list("value", flat=True))


@pytest.mark.django_db
def test_seed_demo_creates_accounts_without_personal_data():
    seed(seed=2, now=fixed_now(), shoppers=10)
    User = get_user_model()
    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff and admin.check_password("admin")
    assert User.objects.get(username="demo").check_password("demo")
    shoppers = User.objects.filter(username__startswith="shopper")
    assert shoppers.exists()
    for user in shoppers:
        assert not user.has_usable_password()
        assert (user.email, user.first_name, user.last_name) == ("", "", "")


@pytest.mark.django_db
def test_seed_demo_if_empty_keeps_the_existing_shop():
    now = fixed_now()
    seed(seed=1, now=now)
    catalogue, events = catalogue_snapshot(), event_sequence()
    output = seed(seed=9, now=now, if_empty=True)
    assert "nothing to do" in output
    assert catalogue_snapshot() == catalogue and event_sequence() == events
    with pytest.raises(CommandError, match="not empty"):
        seed(seed=9, now=now)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "options, message",
    [
        ({"days": 400}, "days"),
        ({"now": timezone.now() - timedelta(days=350), "days": 30}, "days"),
        ({"now": timezone.now() + timedelta(days=1)}, "future"),
        ({"products": 0}, "products"),
    ],
)
def test_seed_demo_rejects_impossible_options(options, message):
    with pytest.raises(CommandError, match=message):
        seed(**options)
    assert not Product.objects.exists()


@pytest.mark.django_db
def test_flush_keeps_the_demo_accounts_and_other_users():
    seed(seed=1, now=fixed_now(), shoppers=5)
    get_user_model().objects.create_user("shopper_real_person")
    seed(seed=1, now=fixed_now(), shoppers=5, flush=True)
    names = set(get_user_model().objects.values_list("username", flat=True))
    assert {"admin", "demo", "shopper_real_person"} <= names
