"""Export events as CSV or JSON lines, streaming, with pseudonymous shoppers by default."""

import csv
import json
from datetime import datetime, time

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from tqdm import tqdm

from recommender import itemkeys
from recommender.conf import recommender_settings
from recommender.events import as_utc
from recommender.models import Event
from recommender.pseudonyms import export_shopper

PSEUDONYMOUS_COLUMNS = ["shopper", "item", "kind", "timestamp", "value"]
# With --with-user-ids the "user" column follows recommender_import_events' rule, so an
# export can be imported again into another installation with the same users.
IDENTIFIED_COLUMNS = ["user", "item", "kind", "timestamp", "value", "event_id", "placement"]


class Command(BaseCommand):
    help = (
        "Export events oldest first as CSV or JSON lines. Shoppers are pseudonymous by default "
        "(the HMAC that training uses: no user ids, session keys or names); --with-user-ids writes "
        "'id:<user id>' or 'session:<key>' instead, in the format recommender_import_events reads, "
        "for staff exports that stay inside the company."
    )

    def add_arguments(self, parser):
        parser.add_argument("path", help='File to write, or "-" for standard output.')
        parser.add_argument("--since", help="Only events from this date or time on (ISO 8601).")
        parser.add_argument("--format", choices=["csv", "jsonl"], default="csv")
        parser.add_argument(
            "--with-user-ids",
            action="store_true",
            help="Identify shoppers by user id / session key instead of a pseudonym.",
        )

    def handle(self, *args, path, since, format, with_user_ids, verbosity, **options):
        events = Event.objects.order_by("occurred_at", "id")
        if since:
            events = events.filter(occurred_at__gte=_parse_since(since))
        columns = IDENTIFIED_COLUMNS if with_user_ids else PSEUDONYMOUS_COLUMNS
        fields = [
            "user_id",
            "session_key",
            "item_id",
            "kind",
            "occurred_at",
            "value",
            "event_id",
            "placement",
        ]
        rows = events.values_list(*fields).iterator(
            chunk_size=recommender_settings.EXPORT_CHUNK_SIZE
        )
        to_stdout = path == "-"
        try:
            out = self.stdout if to_stdout else open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115
        except OSError as exc:
            raise CommandError(f"Cannot write {path}: {exc.strerror or exc}.") from exc
        total = events.count() if verbosity else None
        written = 0
        try:
            write = _csv_writer(out, columns) if format == "csv" else _jsonl_writer(out, columns)
            convert = _identified if with_user_ids else _pseudonymous()
            with tqdm(
                total=total,
                unit="event",
                desc="export",
                disable=verbosity == 0 or to_stdout,
                dynamic_ncols=True,
            ) as bar:
                for row in rows:
                    write(convert(*row))
                    written += 1
                    if written % 1000 == 0:
                        bar.update(1000)
                bar.update(written % 1000)
        finally:
            if not to_stdout:
                out.close()
        if not to_stdout:
            who = "user ids" if with_user_ids else "pseudonymous shoppers"
            self.stdout.write(
                self.style.SUCCESS(f"Exported {written} event(s) with {who} to {path}.")
            )


def _parse_since(text):
    """An aware UTC time from ``--since`` (PostgreSQL refuses offsets past ±15:59)."""
    problem = f"--since {text!r} is not an ISO 8601 date or time (e.g. 2024-05-01)."
    try:
        when = parse_datetime(text)
        if when is None:
            day = parse_date(text)
            if day is None:
                raise CommandError(problem)
            when = datetime.combine(day, time.min)
    except ValueError:  # well formed but impossible, like 2026-02-30
        raise CommandError(problem) from None
    if timezone.is_naive(when):
        when = timezone.make_aware(when)
    try:
        return as_utc(when)
    except ValueError:
        raise CommandError(f"--since {text!r} is out of range.") from None


def _pseudonymous():
    cache = {}

    def convert(user_id, session_key, item_id, kind, occurred_at, value, event_id, placement):
        key = (user_id, session_key if user_id is None else "")
        if key not in cache:
            cache[key] = export_shopper(*key)
        return [cache[key], itemkeys.to_json(item_id), kind, occurred_at.isoformat(), value]

    return convert


def _identified(user_id, session_key, item_id, kind, occurred_at, value, event_id, placement):
    who = f"id:{user_id}" if user_id is not None else f"session:{session_key}"
    item = itemkeys.to_json(item_id)
    return [who, item, kind, occurred_at.isoformat(), value, str(event_id), placement]


def _csv_writer(out, columns):
    writer = csv.writer(out)
    writer.writerow(columns)

    def write(values):
        writer.writerow(["" if v is None else v for v in values])

    return write


def _jsonl_writer(out, columns):
    def write(values):
        out.write(json.dumps(dict(zip(columns, values, strict=True)), default=str) + "\n")

    return write
