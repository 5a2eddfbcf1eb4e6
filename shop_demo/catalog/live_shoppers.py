"""Responsive shoppers visiting a running demo shop over HTTP, as browsers would.

Each shopper gets a ``ShopBrowser``: a cookie jar of its own (its session and CSRF
cookie), the pages a browser would load, the forms it would submit (with their CSRF
tokens), and what ``recommender/static/recommender/tracker.js`` would send from those
pages: an impression for each carousel (``data-rec-recommendation``) to the impressions
endpoint, a ``view`` for each ``data-rec-view`` and a ``click`` for each clicked
``data-rec-item`` (with the carousel's placement and list id) to the events endpoint,
both posted as the tracker's ``navigator.sendBeacon`` posts them (JSON with the page's
``csrf_token`` in the body). Carts and purchases are recorded by the shop itself, as for
any shopper. The decisions are the shopper's (``simulation.ResponsiveShopper`` and
``simulation.visit``); this module only browses, with the standard library.

The database is used before the first request only: to rebuild the catalogue plan the
demo was seeded from (the shoppers' tastes refer to it), and to give the seeded shopper
accounts the simulator plays a password of its own, so it can log in through the login
form like anyone else.
"""

import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.cookiejar import CookieJar

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.utils.crypto import salted_hmac

from recommender.models import Event

from . import simulation
from .models import Product

USER_AGENT = "shop-demo-simulator/1 (+shop_demo.catalog.live_shoppers)"
PRODUCT_PATH = re.compile(r"/p/([^/]+)/$")
ORDER_PATH = re.compile(r"/orders/\d+/$")
MAX_ERROR_MESSAGES = 10


class SetupError(Exception):
    """The run cannot start: the shop is unreachable or not the one in this database."""


class ShopError(Exception):
    """A request of a visit failed (HTTP error status, connection error, unexpected page)."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status  # the HTTP status, when the shop answered one


# --------------------------------------------------------------------------- pages


@dataclass
class Card:
    item: str  # data-rec-item: the item's primary key as the page gives it
    href: str


@dataclass
class Carousel:
    placement: str
    recommendation: str  # the list's id; "" when the list was not stored
    cards: list = field(default_factory=list)


@dataclass
class Form:
    action: str
    method: str
    css_class: str
    fields: dict = field(default_factory=dict)


class ShopPageParser(HTMLParser):
    """What the tracker and a shopper find in a page: carousels, cards, views, forms.

    A carousel is an element with ``data-rec-recommendation`` (the template puts the
    placement on the same element); cards are elements with ``data-rec-item`` inside it,
    other cards (grids, cart lines) are kept apart.
    """

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.carousels, self.cards, self.views, self.forms = [], [], [], []
        self.tracker = None
        self._carousel, self._depth, self._form = None, 0, None

    def handle_starttag(self, tag, attrs):
        attributes = {name: value or "" for name, value in attrs}
        if self._carousel is not None and tag not in self.VOID:
            self._depth += 1
        elif "data-rec-recommendation" in attributes and tag not in self.VOID:
            self._carousel = Carousel(
                attributes.get("data-rec-placement", ""), attributes["data-rec-recommendation"]
            )
            self.carousels.append(self._carousel)
            self._depth = 1
        if "data-rec-view" in attributes:
            self.views.append(attributes["data-rec-view"])
        if "data-rec-item" in attributes:
            card = Card(attributes["data-rec-item"], attributes.get("href", ""))
            (self._carousel.cards if self._carousel is not None else self.cards).append(card)
        if tag == "script" and "data-endpoint" in attributes:
            self.tracker = attributes
        if tag == "form":
            self._form = Form(
                attributes.get("action", ""),
                attributes.get("method", "get").lower(),
                attributes.get("class", ""),
            )
            self.forms.append(self._form)
        elif tag in ("input", "select", "textarea") and self._form is not None:
            if attributes.get("name"):
                self._form.fields[attributes["name"]] = attributes.get("value", "")

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if self._carousel is not None and tag not in self.VOID:
            self._depth -= 1
            if self._depth == 0:
                self._carousel = None
        if tag == "form":
            self._form = None


@dataclass
class LoadedPage:
    url: str
    parsed: ShopPageParser

    @property
    def path(self):
        return urllib.parse.urlsplit(self.url).path

    def form(self, *, css_class=None, to_itself=False, **fields):
        """The first POST form with ``css_class`` among its classes and these field values;
        ``to_itself``: one that posts back to this page (no action, or this page's path)."""
        for form in self.parsed.forms:
            if form.method != "post":
                continue
            if css_class is not None and css_class not in form.css_class.split():
                continue
            if to_itself and form.action not in ("", self.path):
                continue
            if all(form.fields.get(name) == value for name, value in fields.items()):
                return form
        return None


# --------------------------------------------------------------------------- one browser


class ShopBrowser:
    """One shopper's browser: cookies, pages, forms and the tracker's posts.

    Implements the browser ``simulation.visit`` drives. ``plan`` maps product slugs to
    the catalogue plan's products, ``category_slugs`` its categories' slugs by index;
    ``stats`` counts what was loaded and sent.
    """

    def __init__(
        self,
        base_url,
        plan,
        category_slugs=(),
        *,
        username="",
        password="",
        timeout=30.0,
        tracking=True,
    ):
        self.base_url = base_url.rstrip("/") + "/"
        parts = urllib.parse.urlsplit(self.base_url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.plan, self.category_slugs = plan, category_slugs
        self.username, self.password = username, password
        self.timeout = timeout
        self.tracking = tracking  # False: a look at the shop that must leave no trace
        self.jar = CookieJar()
        # No proxy from the environment: the shop is reached directly, as the tests and a
        # local demo need (a proxy would not know 127.0.0.1).
        self.opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPCookieProcessor(self.jar)
        )
        self.stats = Counter()
        self.page = None
        self.queue = []  # the tracker's events of the current page, sent when it is left
        self.slug_of_item = {}

    # -- HTTP ----------------------------------------------------------------------

    def _url(self, target):
        """A link or form action of the current page, as the browser resolves it."""
        return urllib.parse.urljoin(self.page.url if self.page else self.base_url, target)

    def _site(self, path):
        """A page of the shop by its path under the shop's address (typed, not clicked)."""
        return urllib.parse.urljoin(self.base_url, path)

    def _send(self, method, url, body=None, headers=None):
        """(final URL after redirects, body bytes); ShopError on an error status or no answer."""
        request = urllib.request.Request(url, data=body, method=method)
        request.add_header("User-Agent", USER_AGENT)
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        if method == "POST":
            request.add_header("Origin", self.origin)
            if self.page is not None:
                request.add_header("Referer", self.page.url)
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                return response.geturl(), response.read()
        except urllib.error.HTTPError as exc:
            exc.close()
            raise ShopError(
                f"{method} {urllib.parse.urlsplit(url).path}: HTTP {exc.code}", exc.code
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ShopError(f"{method} {urllib.parse.urlsplit(url).path}: {reason}") from None

    def _load(self, url, form_fields=None):
        """Leave the current page (the tracker flushes), load ``url``, see it."""
        self.flush()
        body, headers = None, {"Accept": "text/html"}
        if form_fields is not None:
            body = urllib.parse.urlencode(form_fields).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        final_url, content = self._send("POST" if body is not None else "GET", url, body, headers)
        parser = ShopPageParser()
        parser.feed(content.decode("utf-8", errors="replace"))
        parser.close()
        self.page = LoadedPage(final_url, parser)
        self.stats["pages"] += 1
        for card in [*parser.cards, *(c for carousel in parser.carousels for c in carousel.cards)]:
            if match := PRODUCT_PATH.search(urllib.parse.urlsplit(card.href).path):
                self.slug_of_item[card.item] = match.group(1)
        self._on_load()
        return self.as_seen()

    def _submit(self, form, what, **values):
        if form is None:
            raise ShopError(f"{self.page.path}: no form to {what} on the page")
        return self._load(self._url(form.action or self.page.url), {**form.fields, **values})

    # -- the tracker ---------------------------------------------------------------

    def _tracker_post(self, endpoint_attribute, payload):
        """POST as navigator.sendBeacon does: JSON, the CSRF token in the body, cookies."""
        tracker = self.page.parsed.tracker
        if tracker is None:
            return False
        payload = {"csrf_token": tracker.get("data-csrf-token", ""), **payload}
        try:
            self._send(
                "POST",
                self._url(tracker[endpoint_attribute]),
                json.dumps(payload).encode(),
                {"Content-Type": "application/json"},
            )
        except ShopError as exc:
            if exc.status == 429:  # throttled: the tracker loses it too
                self.stats["throttled"] += 1
                return False
            raise
        return True

    def _track(self, kind, item, carousel=None):
        """One event as tracker.js builds it; empty placement / list id are left out."""
        event = {
            "event_id": str(uuid.uuid4()),
            "kind": kind,
            "item": str(item),
            "occurred_at": int(time.time() * 1000),
            "page": self.page.path[:200],
        }
        if carousel is not None and carousel.placement:
            event["placement"] = carousel.placement
        if carousel is not None and carousel.recommendation:
            event["recommendation_id"] = carousel.recommendation
        self.queue.append(event)

    def _on_load(self):
        """The tracker at page load: views queued, the carousels on screen reported."""
        if not self.tracking:
            return
        for item in self.page.parsed.views:
            self._track("view", item)
        lists = [c.recommendation for c in self.page.parsed.carousels if c.recommendation]
        if lists and self._tracker_post(
            "data-impressions-endpoint", {"recommendations": lists[:50]}
        ):
            self.stats["impressions"] += len(lists[:50])

    def flush(self):
        """What the tracker sends when a page is hidden: the queued events, in one batch."""
        if self.page is None or not self.queue:
            return
        events, self.queue = self.queue, []
        if self._tracker_post("data-endpoint", {"events": events}):
            self.stats["events"] += len(events)

    # -- what the shopper sees -----------------------------------------------------

    def _product_of(self, item=None, href=""):
        slug = self.slug_of_item.get(item) if item is not None else None
        if slug is None and (match := PRODUCT_PATH.search(urllib.parse.urlsplit(href).path)):
            slug = match.group(1)
        return self.plan.get(slug)

    def as_seen(self):
        page = self.page
        product = None
        if match := PRODUCT_PATH.search(page.path):
            product = self.plan.get(match.group(1))
        return simulation.Page(
            carousels=[
                [self._product_of(card.item, card.href) for card in carousel.cards]
                for carousel in page.parsed.carousels
            ],
            product=product,
            buyable=product is not None and page.form(css_class="add-to-cart") is not None,
        )

    # -- the browser simulation.visit drives ------------------------------------------

    def start(self, login):
        if not login:
            return self.home()
        self._load(self._site("accounts/login/?next=/"))
        seen = self._submit(
            self.page.form(username=""),
            "log in",
            username=self.username,
            password=self.password,
        )
        if "/accounts/login/" in self.page.path:
            raise ShopError(
                f"Logging in as {self.username} was refused: does the shop use this "
                "database (the simulator sets its shoppers' passwords there)?"
            )
        self.stats["logins"] += 1
        return seen

    def home(self):
        return self._load(self._site(""))

    def browse(self, category, product):
        """The category's page, then the product: by its card there, else straight to it."""
        self._load(self._site(f"c/{self.category_slugs[category]}/"))
        for card in self.page.parsed.cards:
            if self.slug_of_item.get(card.item) == product.slug:
                self._track("click", card.item)
                return self._load(self._url(card.href))
        return self._load(self._site(f"p/{product.slug}/"))

    def click(self, which, position):
        carousel = self.page.parsed.carousels[which]
        card = carousel.cards[position]
        self._track("click", card.item, carousel)
        self.stats["clicks"] += 1
        return self._load(self._url(card.href))

    def add_to_cart(self, quantity):
        seen = self._submit(
            self.page.form(css_class="add-to-cart"), "add to the cart", quantity=str(quantity)
        )
        self.stats["carts"] += 1
        return seen

    def remove_from_cart(self, product):
        if not self.page.path.endswith("/cart/"):
            self._load(self._site("cart/"))
        item = next((i for i, slug in self.slug_of_item.items() if slug == product.slug), None)
        seen = self._submit(self.page.form(action="remove", product=item), f"remove {product.slug}")
        self.stats["removals"] += 1
        return seen

    def checkout(self):
        self._load(self._site("checkout/"))
        self._submit(
            self.page.form(to_itself=True), "place the order"
        )  # not the header's "Log out"
        if not ORDER_PATH.search(self.page.path):
            return []  # something sold out meanwhile: the shop sends them back to the cart
        bought = [self._product_of(card.item, card.href) for card in self.page.parsed.cards]
        self.stats["orders"] += 1
        self.stats["purchases"] += len(bought)
        return [product for product in bought if product is not None]

    def close(self):
        """The visit ends: the last page is hidden, so the tracker sends what it holds."""
        self.flush()


# --------------------------------------------------------------------------- a run


@dataclass
class LiveSummary:
    """What a run did, for the command's table, ``--json`` and tests."""

    shoppers: int = 0
    logins: int = 0
    pages: int = 0
    impressions: int = 0  # lists reported as seen
    clicks: int = 0  # carousel cards clicked
    carts: int = 0  # products put in a cart
    removals: int = 0
    orders: int = 0
    purchases: int = 0  # order lines bought
    events: int = 0  # tracker events sent (views and clicks)
    throttled: int = 0  # tracker posts refused with 429 (lost, as the tracker loses them)
    errors: int = 0  # visits that ended on an error
    seconds: float = 0.0
    interrupted: bool = False  # Ctrl-C: no more shoppers were sent
    error_messages: list = field(default_factory=list)

    COUNTS = (
        "shoppers",
        "logins",
        "pages",
        "impressions",
        "clicks",
        "carts",
        "removals",
        "orders",
        "purchases",
        "events",
        "throttled",
        "errors",
    )

    @property
    def rate(self):
        return self.shoppers / self.seconds if self.seconds else 0.0

    @property
    def click_through(self):
        """Carousel clicks per list seen (what the admin's CTR chart shows)."""
        return self.clicks / self.impressions if self.impressions else None

    def add(self, stats, error=None):
        self.shoppers += 1
        for name in self.COUNTS[1:-1]:
            setattr(self, name, getattr(self, name) + stats.get(name, 0))
        if error is not None:
            self.errors += 1
            if len(self.error_messages) < MAX_ERROR_MESSAGES:
                self.error_messages.append(error)

    def as_dict(self):
        return {
            **{name: getattr(self, name) for name in self.COUNTS},
            "seconds": round(self.seconds, 2),
            "rate": round(self.rate, 3),
            "click_through": self.click_through,
            "interrupted": self.interrupted,
            "error_messages": list(self.error_messages),
        }


def simulator_password():
    """The password of the accounts the simulator logs in as: secret, stable per install."""
    return salted_hmac("shop_demo.live_shoppers.password", "login", algorithm="sha256").hexdigest()[
        :32
    ]


def prepare_logins(usernames):
    """Give the shopper accounts ``usernames`` the simulator's password; create missing ones.

    The hash is made once, with a salt derived from the password, so an account that has
    it already is left alone (changing it would log out its open sessions).
    """
    User = get_user_model()
    password = simulator_password()
    salt = salted_hmac("shop_demo.live_shoppers.salt", password).hexdigest()[:22]
    encoded = make_password(password, salt=salt)
    existing = set(User.objects.filter(username__in=usernames).values_list("username", flat=True))
    (
        User.objects.filter(username__in=existing, is_staff=False, is_superuser=False)
        .exclude(password=encoded)
        .update(password=encoded)
    )
    User.objects.bulk_create(
        [User(username=name, password=encoded) for name in usernames if name not in existing]
    )
    return password


def catalogue_plan(demo_seed):
    """The plan the demo's catalogue was seeded from, checked against the database's.

    Which products are active and in stock is taken from the database: the admin may have
    changed them since, and shoppers only go looking for what the shop lists.
    """
    now = {
        slug: (active, stock)
        for slug, active, stock in Product.objects.values_list("slug", "is_active", "stock")
    }
    slugs = set(now)
    if not slugs:
        raise SetupError("The catalogue is empty: seed the demo first (manage.py seed_demo).")
    catalogue = simulation.build_catalogue(products=len(slugs), seed=demo_seed)
    if {product.slug for product in catalogue.products} != slugs:
        raise SetupError(
            f"The catalogue in the database is not the one seed_demo --seed {demo_seed} "
            f"--products {len(slugs)} makes: pass the --demo-seed it was seeded with."
        )
    for product in catalogue.products:
        product.is_active, product.stock = now[product.slug]
    return catalogue


def purchases_of(usernames, plan):
    """Plan indexes of what each of these accounts has bought (for their tastes)."""
    owned = defaultdict(set)
    rows = Event.objects.filter(user__username__in=usernames, kind=Event.Kind.PURCHASE).values_list(
        "user__username", "item__slug"
    )
    for username, slug in rows.iterator():
        if slug in plan:
            owned[username].add(plan[slug].index)
    return owned


def check_reachable(base_url, plan, timeout):
    """The shop answers and shows products of this catalogue, else SetupError saying why."""
    browser = ShopBrowser(base_url, plan, timeout=timeout, tracking=False)
    try:
        browser.home()
    except ShopError as exc:
        raise SetupError(f"The shop at {base_url} cannot be reached: {exc}") from None
    if browser.page.parsed.tracker is None:
        raise SetupError(
            f"{base_url} does not look like the demo shop (no tracker on its home page)."
        )
    shown = set(browser.slug_of_item.values())
    if shown and not shown & set(plan):
        raise SetupError(
            f"The shop at {base_url} shows products this database does not have: "
            "run the simulator with the shop's own settings (DATABASE_URL)."
        )


def run(
    base_url,
    *,
    shoppers,
    rate,
    seed=1,
    demo_seed=simulation.DEFAULT_SEED,
    concurrency=4,
    anonymous=False,
    max_pages=simulation.MAX_VISIT_PAGES,
    timeout=30.0,
    on_start=None,
    progress=None,
):
    """Send ``shoppers`` responsive shoppers to the shop at ``base_url``; a LiveSummary.

    Shopper k of the run is seeded shopper k (its tastes; a registered one logs in as its
    account unless ``anonymous``). They arrive ``rate`` per second, at most
    ``concurrency`` at a time. ``on_start()`` is called once the shop has answered and the
    accounts are ready, ``progress(summary)`` after each visit.
    """
    catalogue = catalogue_plan(demo_seed)
    plan = {product.slug: product for product in catalogue.products}
    category_slugs = [category.slug for category in catalogue.categories]
    check_reachable(base_url, plan, timeout)
    people = [
        simulation.ResponsiveShopper(
            catalogue,
            index,
            seed=demo_seed,
            visit_seed=seed,
            registered=False if anonymous else None,
        )
        for index in range(shoppers)
    ]
    usernames = [shopper.username for shopper in people if shopper.registered]
    password = prepare_logins(usernames) if usernames else ""
    owned = purchases_of(usernames, plan) if usernames else {}
    for shopper in people:
        if shopper.registered:
            shopper.owned |= owned.get(shopper.username, set())

    summary, lock = LiveSummary(), threading.Lock()
    if on_start is not None:
        on_start()

    def one_visit(shopper):
        browser = ShopBrowser(
            base_url,
            plan,
            category_slugs,
            username=shopper.username if shopper.registered else "",
            password=password,
            timeout=timeout,
        )
        error = None
        try:
            simulation.visit(shopper, browser, max_pages=max_pages)
            browser.close()
        except ShopError as exc:
            error = f"shopper {shopper.index}: {exc}"
        except Exception as exc:  # noqa: BLE001 - a visit's bug is reported, not lost in its thread
            error = f"shopper {shopper.index}: {type(exc).__name__}: {exc}"
        with lock:
            summary.add(browser.stats, error)
            if progress is not None:
                progress(summary)

    started = time.monotonic()
    slots = threading.BoundedSemaphore(concurrency)
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="shopper") as pool:
        try:
            for number, shopper in enumerate(people):
                delay = started + number / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                slots.acquire()  # never more waiting visits than workers: late, not piled up
                future = pool.submit(one_visit, shopper)
                future.add_done_callback(lambda _future: slots.release())
        except KeyboardInterrupt:
            summary.interrupted = True  # the shoppers in the shop finish their visits
    summary.seconds = time.monotonic() - started
    return summary
