"""``simulate_shoppers`` against the demo served for real (gunicorn on the test database).

The shoppers browse over HTTP as browsers do; what they did must be in the database as the
shop and the tracker record it: impressions on the lists shown, clicks attributed to
those lists, carts and purchases of the clicked products, orders of the logged-in ones.
"""

import http.server
import io
import json
import subprocess
import sys
import threading
import time

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db.models import Sum
from django.utils import timezone

from recommender.models import Event, Recommendation
from shop_demo.catalog import live_shoppers
from shop_demo.catalog.models import Order, Product
from shop_demo.catalog.simulation import build_catalogue

from .faults.processes import _test_env
from .live_demo import seed_small_demo, served
from .serving_fixtures import install_version


@pytest.fixture
def served_demo(transactional_db):
    """A small seeded demo with an active model version, served by gunicorn."""
    seed_small_demo()
    install_version(list(Product.objects.order_by("pk")), seed=5)
    with served() as server:
        yield server


@pytest.mark.postgres
@pytest.mark.slow
def test_simulated_shoppers_are_recorded_against_the_lists_they_were_shown(served_demo):
    started = timezone.now()
    summary = live_shoppers.run(served_demo.url, shoppers=60, rate=20, seed=3, concurrency=4)

    assert summary.errors == 0, summary.error_messages
    assert summary.shoppers == 60 and summary.throttled == 0
    assert summary.logins > 0 and summary.pages > 40
    assert min(summary.impressions, summary.clicks, summary.carts, summary.purchases) > 0, summary

    # Every list the shoppers saw counted its impression, and nothing else did.
    lists = Recommendation.objects.all()
    assert lists.aggregate(n=Sum("impressions"))["n"] == summary.impressions
    new = Event.objects.filter(received_at__gte=started)

    # Each carousel click is attributed to a list that was shown, held the item and was seen.
    clicks = list(new.filter(kind="click", recommendation_id__isnull=False))
    assert 0 < len(clicks) <= summary.clicks
    assert len(clicks) >= 0.9 * summary.clicks  # a repeat click on a list is not credited twice
    shown = {rec.pk: rec for rec in lists}
    for click in clicks:
        rec = shown[click.recommendation_id]
        assert click.item_id in rec.items and rec.impressions >= 1
        assert click.placement == rec.placement and click.page.startswith("/")
    assert {shown[c.recommendation_id].source for c in clicks} >= {"model"}

    # The shop recorded the carts, removals and purchases, and the orders of the logged in.
    assert new.filter(kind="add_to_cart").count() == summary.carts
    assert new.filter(kind="remove_from_cart").count() == summary.removals
    assert new.filter(kind="purchase").count() == summary.purchases
    assert Order.objects.filter(created_at__gte=started).count() == summary.orders
    assert not new.filter(kind="purchase", user__isnull=True).exists()
    assert new.filter(kind="view").count() > 0

    # Carts and purchases of products the same shopper clicked in a list: what an
    # experiment credits to the list.
    def shopper(event):
        return event.user_id or event.session_key

    clicked = {(shopper(c), c.item_id) for c in clicks}
    followed = {
        kind: sum((shopper(e), e.item_id) in clicked for e in new.filter(kind=kind))
        for kind in ("add_to_cart", "purchase")
    }
    assert followed["add_to_cart"] > 0 and followed["purchase"] > 0, followed


@pytest.mark.postgres
@pytest.mark.slow
def test_the_command_as_a_subprocess_prints_its_summary_as_json(served_demo):
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "simulate_shoppers",
            "--url",
            served_demo.url,
            "--shoppers",
            "6",
            "--rate",
            "20",
            "--seed",
            "9",
            "--json",
        ],
        env=_test_env(DJANGO_SETTINGS_MODULE="tests.settings"),
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["shoppers"] == 6 and summary["errors"] == 0
    assert summary["pages"] > 6 and summary["impressions"] > 0
    assert set(summary) >= {"clicks", "carts", "purchases", "click_through", "rate"}


# -- what the browser reads from the demo's pages -----------------------------------------


@pytest.mark.django_db
def test_the_browser_reads_carousels_views_and_forms_as_the_tracker_and_a_shopper_do(client):
    seed_small_demo()
    home = live_shoppers.ShopPageParser()
    home.feed(client.get("/").content.decode())
    (carousel,) = home.carousels
    rec = Recommendation.objects.get(pk=carousel.recommendation)
    assert carousel.placement == rec.placement == "home"
    assert [int(card.item) for card in carousel.cards] == rec.items[: len(carousel.cards)]
    assert all(card.href.startswith("/p/") for card in carousel.cards)
    # The featured and new products are cards too, but no recommendation.
    assert home.cards and not {c.item for c in home.cards} & {c.item for c in carousel.cards}
    assert home.tracker["data-endpoint"] == "/api/recommender/events/"
    assert home.tracker["data-impressions-endpoint"] == "/api/recommender/impressions/"
    assert home.tracker["data-csrf-token"] and home.views == []

    product = Product.objects.sellable().first()
    page = live_shoppers.LoadedPage(
        "http://testserver" + product.get_absolute_url(), live_shoppers.ShopPageParser()
    )
    page.parsed.feed(client.get(product.get_absolute_url()).content.decode())
    assert page.parsed.views == [str(product.pk)]
    form = page.form(css_class="add-to-cart")
    assert form.action == "/cart/" and form.fields["action"] == "add"
    assert form.fields["product"] == str(product.pk) and form.fields["csrfmiddlewaretoken"]

    # Logged in, every page has the header's "Log out" form; checkout picks its own.
    client.force_login(get_user_model().objects.get(username="demo"))
    client.post("/cart/", {"action": "add", "product": product.pk, "quantity": 1})
    page = live_shoppers.LoadedPage("http://testserver/checkout/", live_shoppers.ShopPageParser())
    page.parsed.feed(client.get("/checkout/").content.decode())
    assert page.parsed.forms[0].action == "/accounts/logout/"
    assert page.form(to_itself=True) is not page.parsed.forms[0]
    assert page.form(to_itself=True).fields.keys() == {"csrfmiddlewaretoken"}


class TrackerStandIn(http.server.BaseHTTPRequestHandler):
    """A page with one carousel and the tracker's tag; records posts, throttles impressions."""

    PAGE = (
        '<html><body><section data-rec-placement="home" data-rec-recommendation="{rid}">'
        '<link rel="stylesheet" href="/c.css"><ol><li><a href="/p/{slug}/" data-rec-item="7">'
        "<img src='/i.svg'></a></li></ol></section>"
        '<script src="/t.js" data-endpoint="/events/" data-impressions-endpoint="/seen/" '
        'data-csrf-token="masked-token"></script></body></html>'
    )
    posts = []

    def do_GET(self):
        body = self.PAGE.format(rid=RID, slug=self.server.slug).encode()
        self.send_response(200)
        self.send_header("Set-Cookie", "csrftoken=cookie-token; Path=/")
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.posts.append((self.path, dict(self.headers), body))
        self.send_response(429 if self.path == "/seen/" else 201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


RID = "5f0c2a9e-1b7d-4c3e-9a51-0d6f2b8e4c17"


def test_the_tracker_posts_as_tracker_js_and_a_throttled_impression_is_counted_not_fatal():
    product = build_catalogue(products=40, seed=1).products[0]
    TrackerStandIn.posts = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TrackerStandIn)
    server.slug = product.slug
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        browser = live_shoppers.ShopBrowser(url, {product.slug: product})
        seen = browser.home()
        assert seen.carousels == [[product]] and seen.product is None
        assert browser.stats["throttled"] == 1 and browser.stats["impressions"] == 0
        browser.click(0, 0)
        browser.close()
    finally:
        server.shutdown()
        server.server_close()
    (impressions, _, shown), (events, headers, sent) = [
        (path, headers, body) for path, headers, body in TrackerStandIn.posts
    ][:2]
    assert (impressions, shown) == (
        "/seen/",
        {"csrf_token": "masked-token", "recommendations": [RID]},
    )
    assert events == "/events/" and sent["csrf_token"] == "masked-token"
    (click,) = sent["events"]
    assert click["kind"] == "click" and click["item"] == "7" and click["page"] == "/"
    assert click["placement"] == "home" and click["recommendation_id"] == RID
    assert abs(click["occurred_at"] / 1000 - time.time()) < 60 and len(click["event_id"]) == 36
    assert headers["Cookie"] == "csrftoken=cookie-token" and headers["Origin"] == url
    assert headers["Content-Type"] == "application/json"


# -- refusals ------------------------------------------------------------------------------


def simulate(*args):
    out = io.StringIO()
    call_command("simulate_shoppers", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--url", "ftp://example.com"], r"--url must be an http\(s\) address"),
        (["--url", "127.0.0.1:8000"], r"--url must be an http\(s\) address"),
        (["--shoppers", "0"], "must be at least 1"),
        (["--concurrency", "0"], "must be at least 1"),
    ],
)
def test_bad_options_are_refused_with_a_reason(args, message):
    with pytest.raises(CommandError, match=message):
        simulate(*args)


def test_a_bad_rate_is_refused_by_the_parser():
    with pytest.raises(CommandError, match="--rate"):
        simulate("--rate", "0")


@pytest.mark.django_db
def test_an_empty_catalogue_is_refused():
    with pytest.raises(CommandError, match="seed the demo first"):
        simulate("--url", "http://127.0.0.1:9")


@pytest.mark.django_db
def test_a_catalogue_of_another_seed_is_refused():
    seed_small_demo()
    with pytest.raises(CommandError, match="pass the --demo-seed it was seeded with"):
        simulate("--url", "http://127.0.0.1:9", "--demo-seed", "7")


@pytest.mark.django_db
def test_an_unreachable_shop_is_refused_before_any_account_is_touched():
    seed_small_demo()
    User = get_user_model()
    before = list(User.objects.order_by("pk").values_list("username", "password"))
    # Port 9 (discard) on this machine: nothing listens there.
    with pytest.raises(CommandError, match="cannot be reached"):
        simulate("--url", "http://127.0.0.1:9", "--shoppers", "5")
    assert list(User.objects.order_by("pk").values_list("username", "password")) == before
