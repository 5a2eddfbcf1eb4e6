"""Responsive shoppers: hidden tastes, how they answer a carousel, and what a ranker earns.

Pure planning (no database, no HTTP): the visits run against a shop held in memory.
"""

from collections import Counter

import numpy as np
import pytest

from shop_demo.catalog.simulation import (
    Page,
    ResponsiveShopper,
    ShopperSimulator,
    build_catalogue,
    simulate_shopper,
    visit,
)

SEED = 42


@pytest.fixture(scope="module")
def catalogue():
    return build_catalogue(products=600, seed=SEED)


class MemoryShop:
    """A shop held in memory that shows the same carousels on every page.

    ``carousels(shopper)`` gives a shopper's carousels (lists of ProductSpecs); the shop
    keeps the cart and counts what it was asked to do.
    """

    def __init__(self, shopper, carousels):
        self.carousels = carousels
        self.cart = []
        self.calls = Counter()

    def page(self, product=None):
        return Page(carousels=self.carousels, product=product, buyable=product is not None)

    def start(self, login):
        self.calls["login" if login else "home"] += 1
        return self.page()

    def home(self):
        self.calls["home"] += 1
        return self.page()

    def browse(self, category, product):
        assert product.category == category
        self.calls["browse"] += 1
        return self.page(product)

    def click(self, which, position):
        self.calls["click"] += 1
        return self.page(self.carousels[which][position])

    def add_to_cart(self, quantity):
        self.calls["cart"] += 1
        return self.page()

    def remove_from_cart(self, product):
        self.calls["remove"] += 1
        return self.page()

    def checkout(self):
        self.calls["checkout"] += 1
        return []


def run_visit(catalogue, index, carousels, *, visit_seed=0, registered=None):
    shopper = ResponsiveShopper(
        catalogue, index, seed=SEED, visit_seed=visit_seed, registered=registered
    )
    shop = MemoryShop(shopper, carousels(shopper) if callable(carousels) else carousels)
    return shopper, shop, visit(shopper, shop)


def by_fit(shopper, catalogue):
    buyable = [p for p in catalogue.products if p.buyable]
    return sorted(buyable, key=lambda p: (-shopper.fit(p), p.index))


# -- tastes and fit ----------------------------------------------------------------------


def test_live_shoppers_have_the_tastes_of_the_seeded_shoppers(catalogue):
    for index in range(30):
        live = ResponsiveShopper(catalogue, index, seed=SEED, visit_seed=7)
        seeded = ShopperSimulator(catalogue, index, seed=SEED, days=60, registered=True)
        assert live.favourites == seeded.favourites
        assert live.price_level == seeded.price_level
        history = simulate_shopper(catalogue, index, seed=SEED)
        assert live.registered == bool(history.username)
        if history.username:
            assert live.username == history.username


def test_fit_is_in_range_and_follows_category_kind_and_price(catalogue):
    shopper = ResponsiveShopper(catalogue, 3, seed=SEED)
    fits = [shopper.fit(p) for p in catalogue.products]
    assert 0.0 <= min(fits) and max(fits) <= 1.0
    assert shopper.fit(None) == 0.0

    favourite = shopper.favourites[0]
    other = next(c.index for c in catalogue.categories if c.index not in shopper.favourites)
    mains = {
        c: [p for p in catalogue.by_category[c] if p.role == "main"] for c in (favourite, other)
    }
    assert np.mean([shopper.fit(p) for p in mains[favourite]]) > 3 * np.mean(
        [shopper.fit(p) for p in mains[other]]
    )
    # Nearer their price level fits better, all else equal.
    closest = max(mains[favourite], key=shopper.price_affinity)
    farthest = min(mains[favourite], key=shopper.price_affinity)
    assert shopper.fit(closest) > shopper.fit(farthest)


def test_an_accessory_fits_once_its_main_product_is_owned_or_in_the_cart(catalogue):
    shopper = ResponsiveShopper(catalogue, 5, seed=SEED)
    accessory = next(
        p
        for p in catalogue.products
        if p.role == "accessory" and p.category == shopper.favourites[0]
    )
    alone = shopper.fit(accessory)
    shopper.in_cart[accessory.companion] = 1
    assert shopper.fit(accessory) > 2 * alone
    shopper.in_cart.clear()
    owner = ResponsiveShopper(catalogue, 5, seed=SEED, owned={accessory.companion})
    assert owner.fit(accessory) == pytest.approx(shopper.fit(accessory) * 1 / 0.4)


def test_clicks_rise_with_fit_and_fall_with_position(catalogue):
    shopper = ResponsiveShopper(catalogue, 8, seed=SEED)
    ranked = by_fit(shopper, catalogue)
    best, worst = ranked[0], ranked[-1]
    assert shopper.click_probability(best, 1) > 5 * shopper.click_probability(worst, 1)
    assert (
        shopper.click_probability(best, 1)
        > shopper.click_probability(best, 5)
        > shopper.click_probability(best, 10)
    )
    assert shopper.expected_click_probability(ranked[:10]) > shopper.expected_click_probability(
        list(reversed(ranked[:10]))
    )
    assert shopper.expected_click_probability([]) == 0.0


# -- visits ------------------------------------------------------------------------------


def test_a_visit_is_the_same_for_the_same_seeds_and_pages(catalogue):
    def logs(visit_seed):
        return [
            run_visit(catalogue, i, lambda s: [by_fit(s, catalogue)[:10]], visit_seed=visit_seed)[2]
            for i in range(40)
        ]

    first, again, other = logs(1), logs(1), logs(2)
    assert first == again
    assert first != other
    assert any(log.clicked for log in first) and any(log.carted for log in first)


def test_shoppers_click_cart_and_buy_what_fits_them(catalogue):
    """The same shoppers shown their ten best-fitting products, or ten poor fits."""
    totals = {}
    for name, pick in (
        ("good", lambda s: [by_fit(s, catalogue)[:10]]),
        ("poor", lambda s: [by_fit(s, catalogue)[-10:]]),
    ):
        counts = Counter()
        for index in range(150):
            shopper, shop, log = run_visit(catalogue, index, pick, registered=True)
            counts["clicks"] += len(log.clicked)
            # Cart and purchase after a click on the carousel (not on their own browsing).
            clicked = {product.index for _, _, product in log.clicked}
            counts["carts"] += sum(p.index in clicked for p in log.carted)
            counts["kept"] += sum(p.index in clicked for p in log.carted if p not in log.removed)
            counts["checkouts"] += shop.calls["checkout"]
        totals[name] = counts
    good, poor = totals["good"], totals["poor"]
    assert good["clicks"] > 3 * poor["clicks"], totals
    assert good["carts"] > 5 * max(1, poor["carts"]), totals
    assert good["kept"] > 5 * max(1, poor["kept"]), totals


def test_anonymous_shoppers_leave_their_cart_and_registered_ones_log_in(catalogue):
    calls = Counter()
    for index in range(60):
        shopper, shop, log = run_visit(catalogue, index, lambda s: [by_fit(s, catalogue)[:10]])
        calls.update(shop.calls)
        if not shopper.registered:
            assert shop.calls["login"] == 0 and shop.calls["checkout"] == 0
            assert not log.bought and not log.removed
        else:
            assert shop.calls["login"] == 1
    assert calls["login"] and calls["checkout"] and calls["remove"]


# -- a ranker that learned the history earns more clicks than popular items ---------------


def test_item_knn_trained_on_the_seeded_history_earns_more_clicks_than_popularity():
    """Expected click probability of the lists each ranker would show, shopper by shopper.

    Both rankers see the seeded history (as training does); lists leave out what the
    shopper already saw and what cannot be bought, and hold at most three products per
    category (the demo's home placement rule).
    """
    import torch

    from recommender.ml.baselines import ItemKNN
    from recommender.models import Event

    catalogue = build_catalogue(products=600, seed=SEED)
    products = catalogue.products
    histories = [simulate_shopper(catalogue, i, seed=SEED) for i in range(500)]
    sequences = [np.array([e.product + 1 for e in h.events]) for h in histories if h.events]
    knn = ItemKNN(len(products), max_len=50).fit_sequences(sequences)
    weights = {Event.Kind.VIEW: 1, Event.Kind.ADD_TO_CART: 3, Event.Kind.PURCHASE: 5}
    popularity = Counter()
    for history in histories:
        for event in history.events:
            popularity[event.product] += weights.get(event.kind, 0)
    popular_order = [index for index, _ in sorted(popularity.items(), key=lambda x: (-x[1], x[0]))]

    def shown(order, seen, limit=10):
        per_category, chosen = Counter(), []
        for index in order:
            if len(chosen) >= limit:
                break
            product = products[index]
            if index in seen or not product.buyable or per_category[product.category] >= 3:
                continue
            per_category[product.category] += 1
            chosen.append(product)
        return chosen

    rates = {"itemknn": [], "popularity": []}
    fits = {"itemknn": [], "popularity": []}
    for history in histories[:300]:
        if not history.events:
            continue
        owned = {e.product for e in history.events if e.kind == "purchase"}
        shopper = ResponsiveShopper(catalogue, history.index, seed=SEED, owned=owned)
        seen = {e.product for e in history.events}
        scores = knn.full_sort_predict(torch.tensor([[e.product + 1 for e in history.events]]))[0]
        ranked = [int(i) - 1 for i in torch.argsort(scores, descending=True) if scores[i] > 0]
        knn_list = shown(ranked, seen)
        knn_list += shown(popular_order, seen | {p.index for p in knn_list}, 10 - len(knn_list))
        popular_list = shown(popular_order, seen)
        assert len(knn_list) == len(popular_list) == 10
        for name, shown_list in (("itemknn", knn_list), ("popularity", popular_list)):
            rates[name].append(shopper.expected_click_probability(shown_list))
            fits[name].append(np.mean([shopper.fit(p) for p in shown_list]))
    knn_rate, popular_rate = np.mean(rates["itemknn"]), np.mean(rates["popularity"])

    assert len(rates["itemknn"]) >= 200
    assert knn_rate > 1.5 * popular_rate, (knn_rate, popular_rate)
    assert np.mean(fits["itemknn"]) > 1.5 * np.mean(fits["popularity"])
    # Shopper by shopper, not only on average.
    wins = np.mean(np.array(rates["itemknn"]) > np.array(rates["popularity"]))
    assert wins > 0.85, wins
