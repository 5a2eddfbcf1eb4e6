"""Demo data: a made-up catalogue and shoppers whose behaviour a model can learn.

Three parts, so each can be tested on its own:

* planning (``build_catalogue``, ``simulate_shopper``) is pure Python driven by seeded
  ``random.Random`` instances: the same seed gives the same products, the same shoppers
  and the same events, in the same order, with the same event ids;
* writing (``write_catalogue``, ``write_shopper``, ``seed_demo``) stores a plan. Events go
  through ``recommender.events.record_many`` like any real event, one shopper and at
  most 100 events per call;
* live visits (``ResponsiveShopper``, ``visit``): the same shoppers, with the same hidden
  tastes, react to the recommendations a running shop shows them (the browsing itself is
  ``live_shoppers``' HTTP client, or a test's stand-in).

Event times are offsets before a reference ``now`` (by default the moment the command
runs, because the write path rejects events too far in the past or in the future), so
with a fixed ``now`` the stored events are identical run after run.

What a model can find in the data: shoppers keep 1-3 favourite categories and a price
level; popularity is Zipf-skewed; most sessions only view, some add to the cart, fewer
buy; after buying a main product shoppers come back for its accessories, and after a
consumable they come back days later for its refill.
"""

import bisect
import itertools
import math
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from functools import cached_property

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from recommender.events import record_many
from recommender.models import Event

from .models import Category, Order, OrderLine, Product

DEFAULT_PRODUCTS = 3000
DEFAULT_SHOPPERS = 3000
DEFAULT_DAYS = 60
DEFAULT_SEED = 42
RECORD_BATCH = 100
SHOPPER_USERNAME_PREFIX = "shopper"
DAY = 86400

# name, hue of its pictures, typical main-product price, then comma-separated nouns for its
# main products, accessories and consumables (refills are named after their consumable).
CATEGORY_TABLE = [
    (
        "Coffee & Tea",
        28,
        180,
        "Espresso Machine, Burr Grinder, Pour-Over Kettle, French Press, Drip Brewer, Milk Frother",
        "Tamper, Milk Jug, Knock Box, Portafilter Basket, Travel Lid",
        "Coffee Beans, Loose Leaf Tea, Descaler, Paper Filters",
    ),
    (
        "Kitchen",
        12,
        120,
        "Stand Mixer, Blender, Air Fryer, Chef's Knife, Dutch Oven, Toaster",
        "Mixing Bowl, Blender Jar, Knife Guard, Baking Tray, Dough Hook",
        "Cooking Oil Spray, Dish Soap, Parchment Paper, Sea Salt",
    ),
    (
        "Audio",
        265,
        220,
        "Wireless Headphones, Bookshelf Speaker, Soundbar, Turntable, Earbuds, Portable Speaker",
        "Carrying Case, Speaker Stand, Ear Cushions, Audio Cable, Charging Dock",
        "Ear Tips, Record Cleaner, Stylus Brush",
    ),
    (
        "Computing",
        215,
        650,
        "Laptop, Mechanical Keyboard, Monitor, Mini PC, Wireless Mouse, Docking Station",
        "Laptop Sleeve, Wrist Rest, Monitor Arm, USB-C Hub, Keycap Set",
        "Screen Wipes, Printer Paper, Compressed Air",
    ),
    (
        "Phones & Tablets",
        190,
        480,
        "Smartphone, Tablet, E-Reader, Smartwatch",
        "Phone Case, Screen Protector, Stylus, Watch Band, Car Mount",
        "Lens Wipes, Cable Ties",
    ),
    (
        "Cameras",
        330,
        700,
        "Mirrorless Camera, Action Camera, Instant Camera, Camera Lens, Drone",
        "Camera Bag, Tripod, Lens Hood, Memory Card, Camera Strap",
        "Instant Film, Sensor Swabs, Lens Cleaning Fluid",
    ),
    (
        "Garden",
        110,
        90,
        "Lawn Mower, Hedge Trimmer, Garden Hose, Pruning Shears, Raised Bed",
        "Hose Nozzle, Trimmer Blade, Garden Gloves, Kneeling Pad",
        "Potting Soil, Plant Food, Seed Mix, Trimmer Line",
    ),
    (
        "Home Office",
        45,
        160,
        "Standing Desk, Office Chair, Desk Lamp, Bookcase, Filing Cabinet",
        "Desk Mat, Cable Tray, Chair Cushion, Lamp Shade, Monitor Riser",
        "Sticky Notes, Gel Pens, Printer Ink, Notebooks",
    ),
    (
        "Bath & Body",
        300,
        35,
        "Electric Toothbrush, Hair Dryer, Shaver, Bath Towel Set, Diffuser",
        "Toothbrush Holder, Travel Case, Diffuser Stand, Shaver Stand",
        "Hand Soap, Shampoo, Body Wash, Toothbrush Heads, Essential Oil",
    ),
    (
        "Pets",
        150,
        60,
        "Dog Bed, Cat Tree, Pet Carrier, Aquarium, Dog Leash",
        "Bed Cover, Carrier Pad, Aquarium Light, Leash Pouch",
        "Dog Food, Cat Litter, Fish Food, Pet Shampoo, Dental Chews",
    ),
    (
        "Outdoors",
        95,
        140,
        "Tent, Sleeping Bag, Hiking Backpack, Camp Stove, Headlamp",
        "Tent Footprint, Stuff Sack, Rain Cover, Stove Windscreen",
        "Gas Canister, Water Purifier Tablets, Firestarters, Batteries",
    ),
    (
        "Fitness",
        0,
        110,
        "Yoga Mat, Dumbbell Set, Rowing Machine, Kettlebell, Exercise Bike, Foam Roller",
        "Mat Strap, Dumbbell Rack, Bike Seat Cover, Grip Pads",
        "Protein Powder, Energy Gels, Chalk, Electrolyte Tabs",
    ),
]
BRANDS = (
    "Nordvik, Kestrel, Aurelia, Brightwell, Calder, Driftwood, Ember & Oak, Fjell, "
    "Greyfield, Halcyon, Ironbark, Juniper, Kobalt, Lumen, Meridian, Northwind, Oakhurst, "
    "Pinecrest, Quillon, Redfern, Solace, Tidewater, Umbra, Vantage, Willow & Co, Yarrow, "
    "Zephyr, Atlas, Bramble, Copperline"
).split(", ")
MODELS = (
    "Aria, Bolt, Crest, Dune, Echo, Flux, Glide, Haven, Ion, Jet, Kite, Lyra, Mesa, Nova, "
    "Orbit, Pulse, Quartz, Ridge, Sol, Terra, Ultra, Vega, Wave, Xeno, Zen, Mini, Pro, "
    "Max, Lite, Air"
).split(", ")
VARIANTS = (
    "Original, Everyday, Premium, Eco, Classic, Gentle, Extra Strong, Fresh, Natural, Signature"
).split(", ")
ADJECTIVES = (
    "compact, sturdy, quiet, elegant, lightweight, versatile, reliable, beautifully "
    "simple, well-made, clever"
).split(", ")
PACK_SIZES = ("Refill; Refill, 2-Pack; Refill, 3-Pack; Refill, Large").split("; ")

ROLE_SHARES = {"accessory": 0.30, "consumable": 0.15, "refill": 0.10}  # the rest are main products
ROLE_PRICE_FACTORS = {"main": 1.0, "accessory": 0.18, "consumable": 0.09, "refill": 0.07}
# How likely a browsing session lands on each role; accessories and refills are mostly
# reached through the follow-up visits after a purchase.
ROLE_BROWSE_WEIGHTS = {"main": 1.0, "consumable": 1.0, "accessory": 0.15, "refill": 0.1}
# Chance that a viewed product goes into the cart: cheap, used-up things more often.
ROLE_CART_RATES = {"main": 0.10, "accessory": 0.10, "consumable": 0.25, "refill": 0.25}


@dataclass(frozen=True)
class CategorySpec:
    index: int
    name: str
    slug: str
    hue: int
    typical_price: float
    popularity: float


@dataclass(eq=False)
class ProductSpec:
    index: int
    category: int
    name: str
    slug: str
    description: str
    role: str
    price: Decimal
    typical_price: float
    stock: int
    is_active: bool
    age_days: int
    popularity: float
    companion: int | None = None
    companions: list = field(
        default_factory=list
    )  # indexes of products whose companion is this one

    @property
    def recordable(self):
        return self.is_active

    @property
    def buyable(self):
        return self.is_active and self.stock > 0


@dataclass
class Catalogue:
    categories: list
    products: list

    @cached_property
    def by_category(self):
        """Products of each category index, in plan order."""
        groups = {category.index: [] for category in self.categories}
        for product in self.products:
            groups[product.category].append(product)
        return groups


@dataclass(frozen=True)
class SimulatedEvent:
    kind: str
    product: int
    value: float | None
    seconds_ago: int
    event_id: uuid.UUID


@dataclass
class ShopperHistory:
    index: int
    username: str  # "" for an anonymous shopper
    session_key: str  # "" for a registered shopper
    events: list
    orders: list  # [(seconds_ago, [(product index, quantity), ...])]


def zipf_weights(count, rng, exponent=1.0):
    """Popularity weights 1/rank^s over a shuffled order: a few hits, a long tail."""
    ranks = list(range(1, count + 1))
    rng.shuffle(ranks)
    return [1.0 / rank**exponent for rank in ranks]


def shop_price(value):
    """A price a shop would print: x.99 above 20, x.49/x.99 below."""
    if value >= 20:
        return Decimal(max(1, round(value))) - Decimal("0.01")
    return Decimal(str(max(0.49, math.floor(value * 2) / 2 + 0.49))).quantize(Decimal("0.01"))


def role_counts(size):
    """How many products of each role a category of ``size`` products gets."""
    if size < 4:
        return {"main": size, "accessory": 0, "consumable": 0, "refill": 0}
    counts = {role: max(1, round(size * share)) for role, share in ROLE_SHARES.items()}
    counts["main"] = size - sum(counts.values())
    return counts


def build_catalogue(*, products=DEFAULT_PRODUCTS, seed=DEFAULT_SEED):
    """Plan ``products`` products over up to 12 categories, deterministically from ``seed``."""
    rng = random.Random(f"{seed}:catalogue")
    category_count = max(1, min(len(CATEGORY_TABLE), products // 20))
    category_popularity = zipf_weights(category_count, rng, exponent=0.6)
    categories = [
        CategorySpec(i, row[0], slugify(row[0]), row[1], float(row[2]), category_popularity[i])
        for i, row in enumerate(CATEGORY_TABLE[:category_count])
    ]
    sizes = [
        products // category_count + (1 if i < products % category_count else 0)
        for i in range(category_count)
    ]
    specs, used_names, used_slugs = [], set(), set()

    def unique(name):
        base, number = name, 2
        while name in used_names:
            name, number = f"{base} {number}", number + 1
        used_names.add(name)
        slug, number = slugify(name)[:200], 2
        while slug in used_slugs:
            slug, number = f"{slugify(name)[:200]}-{number}", number + 1
        used_slugs.add(slug)
        return name, slug

    def add(category, role, name, description, companion=None):
        name, slug = unique(name)
        typical = category.typical_price * ROLE_PRICE_FACTORS[role]
        price = shop_price(typical * rng.lognormvariate(0, 0.45))
        roll = rng.random()
        spec = ProductSpec(
            index=len(specs),
            category=category.index,
            name=name,
            slug=slug,
            description=description,
            role=role,
            price=price,
            typical_price=typical,
            stock=0 if roll < 0.03 else 1 + int(rng.lognormvariate(3.2, 0.9)),
            is_active=not (0.03 <= roll < 0.06),
            age_days=rng.randrange(180),
            popularity=0.0,
            companion=companion.index if companion else None,
        )
        specs.append(spec)
        if companion:
            companion.companions.append(spec.index)
        return spec

    for category, size in zip(categories, sizes, strict=True):
        mains, accessories, consumables = (
            words.split(", ") for words in CATEGORY_TABLE[category.index][3:]
        )
        counts = role_counts(size)
        main_specs, consumable_specs, product_range = [], [], {}
        for _ in range(counts["main"]):
            brand, model, noun = rng.choice(BRANDS), rng.choice(MODELS), rng.choice(mains)
            product_range[len(specs)] = f"{brand} {model}"
            main_specs.append(
                add(
                    category,
                    "main",
                    f"{brand} {model} {noun}",
                    f"A {rng.choice(ADJECTIVES)} {noun.lower()} from {brand}, part of the {model} range.",
                )
            )
        for _ in range(counts["accessory"]):
            main = rng.choice(main_specs)
            noun = rng.choice(accessories)
            add(
                category,
                "accessory",
                f"{noun} for {product_range[main.index]}",
                f"Made for the {product_range[main.index]} range; fits the {main.name}.",
                companion=main,
            )
        for _ in range(counts["consumable"]):
            brand, variant, noun = rng.choice(BRANDS), rng.choice(VARIANTS), rng.choice(consumables)
            consumable_specs.append(
                add(
                    category,
                    "consumable",
                    f"{brand} {variant} {noun}",
                    f"{variant} {noun.lower()} by {brand}. You will want more when it runs out.",
                )
            )
        for _ in range(counts["refill"]):
            consumable = rng.choice(consumable_specs)
            add(
                category,
                "refill",
                f"{consumable.name} {rng.choice(PACK_SIZES)}",
                f"Refill for {consumable.name}.",
                companion=consumable,
            )
        for spec, weight in zip(specs[-size:], zipf_weights(size, rng), strict=True):
            spec.popularity = weight
    return Catalogue(categories, specs)


class ShopperSimulator:
    """One shopper's tastes and habits, and the events they produce over ``days``."""

    def __init__(self, catalogue, index, *, seed, days, registered):
        self.catalogue = catalogue
        self.products = catalogue.products
        self.rng = random.Random(f"{seed}:shopper:{index}")
        self.index = index
        self.horizon = int(days * DAY)
        self.registered = registered
        rng = self.rng
        categories = catalogue.categories
        weights = [category.popularity for category in categories]
        favourite_count = min(len(categories), rng.choice([1, 1, 2, 2, 2, 3]))
        self.favourites = []
        while len(self.favourites) < favourite_count:
            choice = rng.choices(categories, weights)[0].index
            if choice not in self.favourites:
                self.favourites.append(choice)
        self.price_level = rng.lognormvariate(0, 0.35)
        self.category_weights = weights
        self._browse_tables = {}
        self.events, self.orders = [], []

    # -- choosing products -------------------------------------------------------

    def price_affinity(self, product):
        """1 at the shopper's price level for the product's kind, falling off either side."""
        ratio = float(product.price) / (product.typical_price * self.price_level)
        return math.exp(-1.5 * abs(math.log(max(ratio, 1e-6))))

    def pick_category(self):
        """Mostly a favourite category, sometimes any, as popular categories are more often."""
        if self.rng.random() < 0.85:
            return self.rng.choice(self.favourites)
        return self.rng.choices(self.catalogue.categories, self.category_weights)[0].index

    def browse_table(self, category):
        """Cumulative weights of a category's products for this shopper's taste."""
        if category not in self._browse_tables:
            candidates = [p for p in self.catalogue.by_category[category] if p.recordable]
            weights = [
                product.popularity
                * ROLE_BROWSE_WEIGHTS[product.role]
                * self.price_affinity(product)
                for product in candidates
            ]
            self._browse_tables[category] = (candidates, list(itertools.accumulate(weights)))
        return self._browse_tables[category]

    def pick(self, category):
        candidates, cumulative = self.browse_table(category)
        if not candidates:
            return None
        point = self.rng.random() * cumulative[-1]
        return candidates[min(bisect.bisect(cumulative, point), len(candidates) - 1)]

    # -- emitting events ---------------------------------------------------------

    def emit(self, kind, product, at, value=None):
        if at < self.horizon:
            event_id = uuid.UUID(int=self.rng.getrandbits(128), version=4)
            self.events.append(
                SimulatedEvent(kind, product.index, value, self.horizon - at, event_id)
            )

    def quantity(self, product):
        if product.role in ("consumable", "refill"):
            return self.rng.choice([1, 1, 1, 2, 2, 3])
        return 1 if self.rng.random() < 0.9 else 2

    def checkout(self, cart, at, agenda):
        """Buy what is in the cart (registered shoppers only: checkout needs a login)."""
        lines = [(product, qty) for product, qty in cart.items() if product.buyable]
        if not lines or at >= self.horizon:
            return
        for product, qty in lines:
            self.emit("purchase", product, at, qty)
            at += 1
            self.plan_follow_up(product, at, agenda)
        self.orders.append((self.horizon - at, [(product.index, qty) for product, qty in lines]))

    def plan_follow_up(self, product, at, agenda):
        """The sequential patterns: accessories after a main product, refills after a consumable."""
        rng = self.rng
        if product.role == "main" and product.companions and rng.random() < 0.7:
            agenda.append((at + int(rng.uniform(0.3, 10) * DAY), "companions", product.index))
        elif product.role == "consumable" and product.companions and rng.random() < 0.85:
            agenda.append((at + int(rng.uniform(4, 18) * DAY), "companions", product.index))
        elif product.role == "refill" and rng.random() < 0.5:
            agenda.append((at + int(rng.uniform(8, 25) * DAY), "rebuy", product.index))

    def add_to_cart(self, cart, product, at):
        qty = self.quantity(product)
        self.emit("add_to_cart", product, at, qty)
        cart[product] = cart.get(product, 0) + qty
        if self.rng.random() < 0.12:
            self.emit(
                "remove_from_cart", product, at + self.rng.randint(20, 300), cart.pop(product)
            )

    def browsing_session(self, at, agenda):
        rng = self.rng
        category = self.pick_category()
        cart = {}
        views = 1 + min(int(rng.expovariate(1 / 2.5)), 12)
        for _ in range(views):
            product = self.pick(category)
            if product is None:
                return at
            at += rng.randint(15, 180)
            self.emit("view", product, at)
            if product.role == "main" and product.companions and rng.random() < 0.15:
                accessory = self.products[rng.choice(product.companions)]
                if accessory.recordable:
                    at += rng.randint(10, 90)
                    self.emit("view", accessory, at)
            if (
                product.buyable
                and product not in cart
                and rng.random() < ROLE_CART_RATES[product.role]
            ):
                at += rng.randint(5, 60)
                self.add_to_cart(cart, product, at)
        if cart and self.registered and rng.random() < 0.55:
            at += rng.randint(60, 600)
            self.checkout(cart, at, agenda)
        return at

    def follow_up_session(self, at, kind, product_index, agenda):
        """Coming back for what goes with an earlier purchase."""
        rng = self.rng
        anchor = self.products[product_index]
        if kind == "rebuy":
            options = [anchor]
        else:
            options = [self.products[i] for i in anchor.companions if self.products[i].recordable]
        if not options:
            return at
        if kind == "companions" and anchor.recordable and rng.random() < 0.4:
            at += rng.randint(10, 120)
            self.emit("view", anchor, at)
        cart = {}
        for product in rng.sample(options, min(len(options), rng.choice([1, 1, 2, 3]))):
            at += rng.randint(15, 150)
            self.emit("view", product, at)
            if product.buyable and rng.random() < 0.65:
                at += rng.randint(5, 60)
                self.add_to_cart(cart, product, at)
        if cart and self.registered and rng.random() < 0.85:
            at += rng.randint(60, 600)
            self.checkout(cart, at, agenda)
        return at

    def run(self):
        rng = self.rng
        if self.registered:
            session_count = 1 + min(int(rng.expovariate(1 / 7)), 30)
        else:
            session_count = 1 + min(int(rng.expovariate(1 / 1.2)), 6)
        starts = sorted(int(rng.uniform(0, self.horizon)) for _ in range(session_count))
        agenda = []  # follow-up visits planned by purchases: (time, kind, product index)
        clock = 0
        while starts or agenda:
            agenda.sort()
            if agenda and (not starts or agenda[0][0] <= starts[0]):
                at, kind, product_index = agenda.pop(0)
                if at >= self.horizon:
                    continue
                clock = self.follow_up_session(max(at, clock + 60), kind, product_index, agenda)
            else:
                clock = self.browsing_session(max(starts.pop(0), clock + 60), agenda)
        # A removal a few minutes after its add may land after later views: keep time order.
        self.events.sort(key=lambda event: -event.seconds_ago)
        self.orders.sort(key=lambda order: -order[0])
        return self.events, self.orders


def shopper_identity(index, *, seed=DEFAULT_SEED, registered_share=0.6):
    """``(username, session_key)``: a registered shopper has a username, an anonymous one a key."""
    chooser = random.Random(f"{seed}:who:{index}")
    if chooser.random() < registered_share:
        return f"{SHOPPER_USERNAME_PREFIX}{index + 1:04d}", ""
    return "", f"sim-{chooser.getrandbits(96):024x}"


def simulate_shopper(
    catalogue, index, *, seed=DEFAULT_SEED, days=DEFAULT_DAYS, registered_share=0.6
):
    """One shopper's whole history, in time order; deterministic in (seed, index, catalogue)."""
    username, session_key = shopper_identity(index, seed=seed, registered_share=registered_share)
    simulator = ShopperSimulator(catalogue, index, seed=seed, days=days, registered=bool(username))
    events, orders = simulator.run()
    return ShopperHistory(index, username, session_key, events, orders)


# -- shoppers who respond to recommendations -------------------------------------
#
# The seeded history is what a model learns from. A ``ResponsiveShopper`` is one of those
# same shoppers (the same favourite categories and price level) visiting the live shop:
# how well a product fits them is hidden from the shop, and it decides whether they click
# a carousel's card, put the product in the cart and, at checkout, buy it. A ranker that
# learned their tastes from the history therefore earns more clicks than popular items.

# How much a shopper likes a category: their favourites (most liked first), then any other.
FAVOURITE_FIT = (1.0, 0.8, 0.65)
OTHER_CATEGORY_FIT = 0.1
# An accessory or a refill means little to someone without what it goes with.
ROLE_FIT = {"main": 1.0, "consumable": 0.9, "accessory": 0.4, "refill": 0.35}
# A favourite product at a price far from the shopper's level still fits this much.
PRICE_FIT_FLOOR = 0.3
# Position bias: a card at position p (1 = first) is looked at with 1 / (1 + decay * (p - 1)).
POSITION_DECAY = 0.3
# Chances rising with fit: a looked-at card is clicked with base + gain * fit**2, an opened
# product goes into the cart with base + gain * fit**2, a cart line is bought with base + gain * fit.
CLICK_BASE, CLICK_GAIN = 0.02, 0.4
CART_BASE, CART_GAIN = 0.05, 0.5
KEEP_BASE, KEEP_GAIN = 0.3, 0.6
# A visit: after each page without a click, the shopper goes on browsing with this chance
# (to the home page at HOME_SHARE, else to a product of a category they pick), at most
# MAX_VISIT_PAGES pages.
KEEP_BROWSING = 0.8
HOME_SHARE = 0.25
MAX_VISIT_PAGES = 15


def examine_probability(position):
    """How likely a shopper looks at the card at ``position`` (1 = first) of a carousel."""
    return 1.0 / (1.0 + POSITION_DECAY * (position - 1))


@dataclass
class Page:
    """A shop page as a responsive shopper sees it; the browser that loaded it fills it in.

    ``carousels`` holds each recommendation carousel's products in page order (None for a
    product the catalogue plan does not know); ``product`` is a product page's product and
    ``buyable`` whether that page offers "add to cart".
    """

    carousels: list = field(default_factory=list)
    product: ProductSpec | None = None
    buyable: bool = False


@dataclass
class VisitLog:
    """What a shopper did in one visit, in order (the browser counts what it sent)."""

    pages: int = 0
    clicked: list = field(default_factory=list)  # [(carousel index, position, ProductSpec)]
    carted: list = field(default_factory=list)
    removed: list = field(default_factory=list)
    bought: list = field(default_factory=list)


class ResponsiveShopper(ShopperSimulator):
    """Seeded shopper ``index`` (same tastes as in the seeded history) on a live visit.

    ``owned`` are indexes of products they bought before (accessories and refills of those
    fit them). Their choices come from a random stream of ``visit_seed``, so a visit is the
    same for the same seeds and the same pages.
    """

    def __init__(
        self, catalogue, index, *, seed=DEFAULT_SEED, visit_seed=0, registered=None, owned=()
    ):
        username, _ = shopper_identity(index, seed=seed)
        if registered is None:
            registered = bool(username)
        super().__init__(catalogue, index, seed=seed, days=DEFAULT_DAYS, registered=registered)
        self.username = username or f"{SHOPPER_USERNAME_PREFIX}{index + 1:04d}"
        self.rng = random.Random(f"{seed}:visit:{visit_seed}:{index}")
        self.owned = set(owned)
        self.in_cart = {}  # product index -> quantity, during the visit

    def fit(self, product):
        """How well ``product`` suits this shopper, in [0, 1]; 0 for an unknown product.

        Category taste times kind (an accessory or refill of something they own or have
        in the cart fits like a main product) times price closeness.
        """
        if product is None:
            return 0.0
        if product.category in self.favourites:
            taste = FAVOURITE_FIT[self.favourites.index(product.category)]
        else:
            taste = OTHER_CATEGORY_FIT
        companion = product.companion
        goes_with_theirs = companion is not None and (
            companion in self.owned or companion in self.in_cart
        )
        kind = 1.0 if goes_with_theirs else ROLE_FIT[product.role]
        price = PRICE_FIT_FLOOR + (1 - PRICE_FIT_FLOOR) * self.price_affinity(product)
        return taste * kind * price

    def click_probability(self, product, position):
        """Chance of clicking the card at ``position`` if the shopper gets that far."""
        if product is None:
            return 0.0
        return examine_probability(position) * (CLICK_BASE + CLICK_GAIN * self.fit(product) ** 2)

    def expected_click_probability(self, products):
        """Chance that a carousel of ``products`` (in order) gets a click from this shopper."""
        miss = 1.0
        for position, product in enumerate(products, start=1):
            miss *= 1.0 - self.click_probability(product, position)
        return 1.0 - miss

    def choose_click(self, carousels):
        """``(carousel, position index)`` of the card clicked, or None.

        Cards are considered carousel by carousel, left to right; the first click ends the
        look (the shopper follows its link).
        """
        for which, products in enumerate(carousels):
            for position, product in enumerate(products, start=1):
                if product is not None and self.rng.random() < self.click_probability(
                    product, position
                ):
                    return which, position - 1
        return None

    def wants_in_cart(self, product):
        return self.rng.random() < CART_BASE + CART_GAIN * self.fit(product) ** 2

    def keeps(self, product):
        """At checkout: buy this cart line (else it is removed first)."""
        return self.rng.random() < KEEP_BASE + KEEP_GAIN * self.fit(product)

    def keeps_browsing(self):
        return self.rng.random() < KEEP_BROWSING


def visit(shopper, browser, *, max_pages=MAX_VISIT_PAGES):
    """One visit of ``shopper`` to the shop ``browser`` loads; returns its ``VisitLog``.

    On a buyable product page the shopper may put it in the cart (the shop then shows the
    cart); otherwise they look through the page's carousels and may click a card, and
    otherwise browse on their own or leave. A registered shopper logs in first and, at the
    end, checks out what they keep of the cart; an anonymous cart is left behind.

    ``browser`` loads pages and returns ``Page``s: ``start(login)``, ``home()``,
    ``browse(category index, product)`` (the category's page, then the product's),
    ``click(carousel, position index)``, ``add_to_cart(quantity)`` (on the product page it
    is on), ``remove_from_cart(product)``, and ``checkout()``, which returns the products
    bought.
    """
    log = VisitLog()
    page = browser.start(login=shopper.registered)
    log.pages = 1
    while log.pages < max_pages:
        product = page.product
        if (
            product is not None
            and page.buyable
            and product.index not in shopper.in_cart
            and shopper.wants_in_cart(product)
        ):
            quantity = shopper.quantity(product)
            page = browser.add_to_cart(quantity)
            shopper.in_cart[product.index] = quantity
            log.carted.append(product)
        elif (clicked := shopper.choose_click(page.carousels)) is not None:
            which, position = clicked
            log.clicked.append((which, position, page.carousels[which][position]))
            page = browser.click(which, position)
        elif not shopper.keeps_browsing():
            break
        elif shopper.rng.random() < HOME_SHARE:
            page = browser.home()
        else:
            category = shopper.pick_category()
            target = shopper.pick(category)
            if target is None:
                break
            page = browser.browse(category, target)
            log.pages += 1  # the category's page on the way
        log.pages += 1
    if shopper.in_cart and shopper.registered:
        lines = [shopper.products[index] for index in shopper.in_cart]
        unwanted = [product for product in lines if not shopper.keeps(product)]
        for product in unwanted:
            browser.remove_from_cart(product)
            del shopper.in_cart[product.index]
            log.removed.append(product)
            log.pages += 1
        if shopper.in_cart:
            log.bought = list(browser.checkout())
            log.pages += 2  # the checkout page and the order's
            shopper.owned.update(product.index for product in log.bought)
            shopper.in_cart.clear()
    return log


# -- writing ---------------------------------------------------------------------


def write_catalogue(catalogue, *, now=None):
    """Store a planned catalogue; returns the Product rows in plan order.

    Products are inserted in two waves so that accessories and refills can point at the
    already stored main products and consumables they go with.
    """
    now = now or timezone.now()
    with transaction.atomic():
        categories = Category.objects.bulk_create(
            Category(name=c.name, slug=c.slug, hue=c.hue) for c in catalogue.categories
        )
        rows = [
            Product(
                category=categories[p.category],
                name=p.name,
                slug=p.slug,
                description=p.description,
                price=p.price,
                stock=p.stock,
                is_active=p.is_active,
                role=p.role,
            )
            for p in catalogue.products
        ]
        for wave in (False, True):
            for spec, row in zip(catalogue.products, rows, strict=True):
                if wave and spec.companion is not None:
                    row.companion = rows[spec.companion]
            Product.objects.bulk_create(
                [
                    row
                    for spec, row in zip(catalogue.products, rows, strict=True)
                    if (spec.companion is not None) == wave
                ],
                batch_size=500,
            )
        # created_at is auto_now_add, so the planned ages are set after the insert, a day at a time.
        by_age = {}
        for spec, row in zip(catalogue.products, rows, strict=True):
            by_age.setdefault(spec.age_days, []).append(row.pk)
        for age, pks in sorted(by_age.items()):
            Product.objects.filter(pk__in=pks).update(created_at=now - timedelta(days=age))
    return rows


def create_shopper_users(usernames):
    """Users for the registered shoppers: no usable password, no personal data."""
    User = get_user_model()
    users = User.objects.bulk_create(
        [User(username=name, password=make_password(None)) for name in usernames], batch_size=500
    )
    return {user.username: user for user in users}


def write_shopper(history, product_rows, *, now, user=None):
    """Store one shopper's events through the recommender's write path, and their orders."""
    stored = Counter()
    shopper = {"user": user, "session_key": history.session_key}
    for start in range(0, len(history.events), RECORD_BATCH):
        batch = history.events[start : start + RECORD_BATCH]
        record_many(
            [
                {
                    "kind": e.kind,
                    "item": product_rows[e.product].pk,
                    "value": e.value,
                    "occurred_at": now - timedelta(seconds=e.seconds_ago),
                    "event_id": e.event_id,
                }
                for e in batch
            ],
            **shopper,
        )
        stored.update(e.kind for e in batch)
    return stored


def write_orders(planned, product_rows, *, now):
    """Orders for the simulated purchases, so the admin shows a living shop.

    ``planned`` is ``[(user, seconds_ago, [(product index, quantity), ...]), ...]``.
    """
    orders = Order.objects.bulk_create([Order(user=user) for user, _, _ in planned], batch_size=500)
    # created_at is auto_now_add: set the simulated times after the insert, a day at a time.
    by_day = {}
    for order, (_, ago, _) in zip(orders, planned, strict=True):
        by_day.setdefault(ago // DAY, []).append(order.pk)
    for days_ago, pks in by_day.items():
        Order.objects.filter(pk__in=pks).update(created_at=now - timedelta(days=days_ago))
    OrderLine.objects.bulk_create(
        (
            OrderLine(
                order=order,
                product=product_rows[index],
                quantity=qty,
                price=product_rows[index].price,
            )
            for order, (_, _, lines) in zip(orders, planned, strict=True)
            for index, qty in lines
        ),
        batch_size=500,
    )
    return len(orders)


@dataclass
class SeedSummary:
    products: int
    categories: int
    roles: dict
    inactive: int
    out_of_stock: int
    registered_shoppers: int
    anonymous_shoppers: int
    orders: int
    events: dict


def seed_demo(
    *,
    products=DEFAULT_PRODUCTS,
    shoppers=DEFAULT_SHOPPERS,
    days=DEFAULT_DAYS,
    seed=DEFAULT_SEED,
    now=None,
    progress=None,
):
    """Plan and store the whole demo: catalogue, shopper users, events, orders.

    One transaction, so a failed run leaves nothing half-seeded. Shoppers are simulated
    and written one at a time; ``progress`` (e.g. ``tqdm``) wraps that loop.
    """
    now = now or timezone.now()
    with transaction.atomic():
        catalogue = build_catalogue(products=products, seed=seed)
        product_rows = write_catalogue(catalogue, now=now)
        identities = [shopper_identity(index, seed=seed) for index in range(shoppers)]
        users = create_shopper_users(username for username, _ in identities if username)
        events, planned_orders = Counter(), []
        indexes = progress(range(shoppers)) if progress else range(shoppers)
        for index in indexes:
            history = simulate_shopper(catalogue, index, seed=seed, days=days)
            user = users.get(history.username)
            events += write_shopper(history, product_rows, now=now, user=user)
            planned_orders += [(user, ago, lines) for ago, lines in history.orders if user]
        order_count = write_orders(planned_orders, product_rows, now=now)
    return SeedSummary(
        products=len(catalogue.products),
        categories=len(catalogue.categories),
        roles=dict(Counter(p.role for p in catalogue.products)),
        inactive=sum(not p.is_active for p in catalogue.products),
        out_of_stock=sum(p.stock == 0 for p in catalogue.products),
        registered_shoppers=len(users),
        anonymous_shoppers=shoppers - len(users),
        orders=order_count,
        events=dict(events),
    )


def flush_demo():
    """Delete the demo data: events, orders, products, categories and shopper users.

    Every product is demo data, so all events (which all point at products) go too.
    The ``admin`` and ``demo`` accounts are kept.
    """
    with transaction.atomic():
        Event.objects.all().delete()
        OrderLine.objects.all().delete()
        Order.objects.all().delete()
        Product.objects.update(companion=None)
        Product.objects.all().delete()
        Category.objects.all().delete()
        get_user_model().objects.filter(
            username__regex=rf"^{SHOPPER_USERNAME_PREFIX}[0-9]+$", is_staff=False
        ).delete()


DEMO_ACCOUNTS = [
    {"username": "admin", "password": "admin", "is_staff": True, "is_superuser": True},
    {"username": "demo", "password": "demo", "is_staff": False, "is_superuser": False},
]


def ensure_demo_accounts():
    """The staff ``admin``/``admin`` and shopper ``demo``/``demo`` logins; returns created names."""
    User = get_user_model()
    created = []
    for account in DEMO_ACCOUNTS:
        if User.objects.filter(username=account["username"]).exists():
            continue
        user = User(
            username=account["username"],
            is_staff=account["is_staff"],
            is_superuser=account["is_superuser"],
        )
        user.set_password(account["password"])
        user.save()
        created.append(account["username"])
    return created
