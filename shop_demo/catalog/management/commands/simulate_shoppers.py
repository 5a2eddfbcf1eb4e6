"""``manage.py simulate_shoppers``: responsive shoppers visiting the running demo over HTTP.

The visits live in ``shop_demo.catalog.live_shoppers`` (the browsing) and
``shop_demo.catalog.simulation`` (the shoppers' tastes and choices), so tests can run
them in-process; this command parses options, draws the progress bar and prints the
summary (a table, or one JSON object with ``--json``).
"""

import json
import urllib.parse

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from shop_demo.catalog import live_shoppers, simulation


def positive_number(text):
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


class Command(BaseCommand):
    help = (
        "Send simulated shoppers to the running demo shop, over HTTP as browsers: they see its "
        "carousels, click, cart and buy what fits their hidden tastes, and log in as the seeded "
        "shoppers they are. Run it beside `make demo` to fill the admin's click-through chart."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--url", default="http://127.0.0.1:8000", help="The running shop's address."
        )
        parser.add_argument("--shoppers", type=int, default=100, help="Shoppers to send.")
        parser.add_argument(
            "--rate",
            type=positive_number,
            default=2.0,
            help="Shoppers arriving per second (fewer if the shop is slower than that).",
        )
        parser.add_argument(
            "--concurrency", type=int, default=4, help="Shoppers in the shop at once at most."
        )
        parser.add_argument(
            "--seed", type=int, default=1, help="Seed of the shoppers' choices in this run."
        )
        parser.add_argument(
            "--demo-seed",
            type=int,
            default=simulation.DEFAULT_SEED,
            help="The --seed the demo was seeded with (the shoppers' tastes come from it).",
        )
        parser.add_argument(
            "--anonymous",
            action="store_true",
            help="Nobody logs in (so nobody can check out); no account is touched.",
        )
        parser.add_argument(
            "--max-pages",
            type=int,
            default=simulation.MAX_VISIT_PAGES,
            help="Most pages one visit loads before checkout.",
        )
        parser.add_argument(
            "--timeout", type=positive_number, default=30.0, help="Seconds per request."
        )
        parser.add_argument(
            "--json",
            action="store_true",
            dest="as_json",
            help="Print the summary as one JSON object (no progress bar).",
        )

    def handle(
        self,
        *args,
        url,
        shoppers,
        rate,
        concurrency,
        seed,
        demo_seed,
        anonymous,
        max_pages,
        timeout,
        as_json,
        verbosity,
        **options,
    ):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise CommandError(
                f"--url must be an http(s) address like http://127.0.0.1:8000, not {url!r}."
            )
        if shoppers < 1 or concurrency < 1 or max_pages < 1:
            raise CommandError("--shoppers, --concurrency and --max-pages must be at least 1.")
        bars = []  # drawn once the shop has answered (a refusal prints no empty bar)

        def start():
            bars.append(
                tqdm(
                    total=shoppers,
                    desc="Shoppers",
                    unit="shopper",
                    disable=as_json or verbosity < 1,
                    dynamic_ncols=True,
                )
            )

        def progress(summary):
            bars[0].update(1)
            bars[0].set_postfix(
                clicks=summary.clicks,
                carts=summary.carts,
                bought=summary.purchases,
                errors=summary.errors,
                refresh=False,
            )

        try:
            summary = live_shoppers.run(
                url,
                shoppers=shoppers,
                rate=rate,
                seed=seed,
                demo_seed=demo_seed,
                concurrency=concurrency,
                anonymous=anonymous,
                max_pages=max_pages,
                timeout=timeout,
                on_start=start,
                progress=progress,
            )
        except live_shoppers.SetupError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            for bar in bars:
                bar.close()
        if as_json:
            self.stdout.write(json.dumps(summary.as_dict()))
        else:
            self.print_table(summary)
        if summary.interrupted:
            raise CommandError(f"Interrupted: {summary.shoppers} of {shoppers} shoppers were sent.")
        if summary.errors:
            raise CommandError(
                f"{summary.errors} of {summary.shoppers} visits ended on an error; first: "
                f"{summary.error_messages[0]}"
            )

    def print_table(self, summary):
        write = self.stdout.write
        rows = [
            ("shoppers", summary.shoppers, f"{summary.rate:.2f}/s over {summary.seconds:.1f} s"),
            ("logged in", summary.logins, ""),
            ("pages", summary.pages, ""),
            ("impressions", summary.impressions, "recommendation lists seen"),
            (
                "clicks",
                summary.clicks,
                f"CTR {summary.click_through:.1%}" if summary.click_through is not None else "",
            ),
            ("carts", summary.carts, f"{summary.removals} taken out again"),
            ("purchases", summary.purchases, f"in {summary.orders} orders"),
            ("throttled", summary.throttled, "tracker posts refused with 429"),
            ("errors", summary.errors, ""),
        ]
        write(
            self.style.SUCCESS("Simulated shoppers:")
            if not summary.errors
            else "Simulated shoppers:"
        )
        for name, count, note in rows:
            write(f"  {name:<12}{count:>8}  {note}".rstrip())
        for message in summary.error_messages:
            write(self.style.ERROR(f"  {message}"))
