"""``manage.py seed_demo``: fill the demo store with a catalogue and simulated shoppers.

The logic lives in ``shop_demo.catalog.simulation`` so tests can call it directly;
this command only parses options, prints and draws the progress bar.
"""

import time
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from tqdm import tqdm

from recommender.conf import recommender_settings
from shop_demo.catalog import simulation
from shop_demo.catalog.models import Product


def aware_datetime(text):
    value = parse_datetime(text)
    if value is None:
        raise ValueError(f"not an ISO 8601 date-time: {text!r}")
    return (
        value
        if timezone.is_aware(value)
        else timezone.make_aware(value, timezone.get_current_timezone())
    )


class Command(BaseCommand):
    help = (
        "Create a demo catalogue and simulate shoppers browsing, carting and buying over the last days. "
        "Deterministic under --seed: same products, same shoppers, same events in the same order; "
        "event times are offsets before --now (default: now)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--products", type=int, default=simulation.DEFAULT_PRODUCTS, help="Catalogue size."
        )
        parser.add_argument(
            "--shoppers", type=int, default=simulation.DEFAULT_SHOPPERS, help="Simulated shoppers."
        )
        parser.add_argument(
            "--days",
            type=float,
            default=simulation.DEFAULT_DAYS,
            help="Days of history to simulate.",
        )
        parser.add_argument(
            "--seed", type=int, default=simulation.DEFAULT_SEED, help="Random seed."
        )
        parser.add_argument(
            "--now",
            type=aware_datetime,
            default=None,
            help="Reference time the history ends at (ISO 8601); fix it for identical timestamps.",
        )
        parser.add_argument(
            "--if-empty", action="store_true", help="Do nothing if the catalogue has products."
        )
        parser.add_argument(
            "--flush", action="store_true", help="Delete the demo data (and all events) first."
        )

    def handle(
        self, *args, products, shoppers, days, seed, now, if_empty, flush, verbosity, **options
    ):
        if products < 1 or shoppers < 0:
            raise CommandError("--products must be at least 1 and --shoppers at least 0.")
        current = timezone.now()
        if now is not None and now > current:
            raise CommandError("--now may not be in the future.")
        oldest_allowed = current - timedelta(days=recommender_settings.MAX_EVENT_AGE_DAYS)
        if days <= 0 or (now or current) - timedelta(days=days) < oldest_allowed:
            raise CommandError(
                f"--days must be positive and the history may not start more than "
                f"{recommender_settings.MAX_EVENT_AGE_DAYS} days ago (older events are rejected)."
            )
        if if_empty and Product.objects.exists():
            self.stdout.write("The catalogue already has products; nothing to do (--if-empty).")
            return

        def progress(items):
            return tqdm(items, desc="Shoppers", unit="shopper", disable=verbosity < 1, leave=False)

        started = time.monotonic()
        with transaction.atomic():
            if flush:
                simulation.flush_demo()
                self.stdout.write("Deleted the previous demo data.")
            elif Product.objects.exists():
                raise CommandError(
                    "The catalogue is not empty: pass --flush to replace it or --if-empty to keep it."
                )
            summary = simulation.seed_demo(
                products=products,
                shoppers=shoppers,
                days=days,
                seed=seed,
                now=now,
                progress=progress,
            )
            created = simulation.ensure_demo_accounts()
        self.print_summary(summary, created, time.monotonic() - started)

    def print_summary(self, summary, created_accounts, seconds):
        write = self.stdout.write
        roles = ", ".join(f"{count} {role}" for role, count in sorted(summary.roles.items()))
        write(self.style.SUCCESS(f"Seeded the demo store in {seconds:.1f} s."))
        write(
            f"  products:  {summary.products} in {summary.categories} categories ({roles}); "
            f"{summary.inactive} inactive, {summary.out_of_stock} out of stock"
        )
        write(
            f"  shoppers:  {summary.registered_shoppers} registered, {summary.anonymous_shoppers} anonymous"
        )
        write(f"  orders:    {summary.orders}")
        total = sum(summary.events.values())
        kinds = ", ".join(
            f"{kind} {summary.events.get(kind, 0)}"
            for kind in ("view", "add_to_cart", "remove_from_cart", "purchase")
        )
        write(f"  events:    {total} ({kinds})")
        for account in simulation.DEMO_ACCOUNTS:
            state = "created" if account["username"] in created_accounts else "exists"
            role = "staff superuser" if account["is_superuser"] else "shopper"
            write(f"  login:     {account['username']} / {account['password']}  ({role}, {state})")
