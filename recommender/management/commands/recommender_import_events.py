"""Import shopper events from a CSV file or a benchmark ``user item`` sequence file."""

import csv
import io
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from tqdm import tqdm

from recommender.conf import recommender_settings
from recommender.events import EventValidationError, as_utc, record_many

REQUIRED_COLUMNS = ("user", "item", "kind", "timestamp")
OPTIONAL_COLUMNS = ("value", "event_id", "placement")
SESSION_PREFIX = "session:"
USER_ID_PREFIX = "id:"
SEQUENCE_PREFIX = "import-"
# Rows of all shoppers held in memory before every pending batch is written.
MAX_BUFFERED_ROWS = 20_000
SHOWN_REJECTS = 10
# Rows without an event_id get a stable one from their content, so a re-import is a no-op.
IMPORT_NAMESPACE = uuid.UUID("6f1d4c1e-3b7a-4c52-9f57-5b0f3a7e2d10")

HELP = f"""Import shopper events through the app's one write path (events.record_many).

CSV (--format csv, the default): a header row with the columns {", ".join(REQUIRED_COLUMNS)}
and optionally {", ".join(OPTIONAL_COLUMNS)}.
  user       who did it: "{SESSION_PREFIX}KEY" is an anonymous shopper's session key (at most 40
             characters), "{USER_ID_PREFIX}N" is the user with primary key N, anything else is a
             username. The user must exist.
  item       the primary key of an item of RECOMMENDER_ITEM_MODEL.
  kind       one of RECOMMENDER["EVENT_KINDS"] (view, click, add_to_cart, ...).
  timestamp  ISO 8601 with a time zone (2024-05-01T12:00:00Z) or seconds since the epoch.

Sequence (--format sequence): the benchmark datasets' format, one "user item" pair per line,
each user's lines in chronological order. Each user becomes the anonymous shopper
"{SEQUENCE_PREFIX}<user>"; every line is a view; a user's timestamps are one minute apart,
the last one now.

Events are written in batches of one shopper's rows (at most MAX_BATCH_SIZE). A batch is
stored whole or not at all: a bad row rejects its batch, and the report names the bad lines.
Events get ids from their content (or the event_id column), so importing a file again stores
nothing twice: fix the bad lines and re-run. Exits with status 1 if any row was rejected."""


@dataclass
class Report:
    stored: int = 0
    duplicates: int = 0
    invalid: int = 0
    rejected_with_batch: int = 0
    skipped: int = 0
    rejects: list = field(default_factory=list)  # (line, reason), the first SHOWN_REJECTS

    def reject(self, line, reason):
        self.invalid += 1
        if len(self.rejects) < SHOWN_REJECTS:
            self.rejects.append((line, reason))

    @property
    def rejected(self):
        return self.invalid + self.rejected_with_batch


class Command(BaseCommand):
    help = HELP

    def create_parser(self, prog_name, subcommand, **kwargs):
        from argparse import RawDescriptionHelpFormatter

        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.formatter_class = RawDescriptionHelpFormatter
        return parser

    def add_arguments(self, parser):
        parser.add_argument("path", help='File to import ("-" reads standard input).')
        parser.add_argument("--format", choices=["csv", "sequence"], default="csv")
        parser.add_argument(
            "--start",
            type=int,
            default=1,
            metavar="LINE",
            help="Skip the lines before LINE (1-based, the header is line 1): resume a long import.",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Validate every batch exactly as an import would, then roll it back.",
        )

    def handle(self, *args, path, format, start, dry_run, verbosity, **options):
        if start < 1:
            raise CommandError("--start must be a line number from 1.")
        self.verbosity = verbosity
        self.dry_run = dry_run
        self.report = Report()
        self.users = {}
        self.pending = {}
        self.buffered = 0
        if format == "sequence" and path == "-":
            raise CommandError("The sequence format reads its file twice; give a path, not '-'.")
        with self._progress(path) as bar:
            rows = self._csv_rows(path, bar) if format == "csv" else self._sequence_rows(path, bar)
            for line, shopper, event, problem in rows:
                if line < start:
                    self.report.skipped += 1
                elif shopper is None:
                    self.report.reject(line, problem)
                else:
                    self._add(line, shopper, event, problem)
            self._flush_all()
        self._print_report()

    # ----------------------------------------------------------------- reading

    def _open(self, path):
        if path == "-":
            return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", newline="")
        try:
            return open(path, encoding="utf-8", newline="")  # noqa: SIM115 - closed by the callers
        except OSError as exc:
            raise CommandError(f"Cannot read {path}: {exc.strerror or exc}.") from exc

    def _progress(self, path):
        total = None
        if path != "-":
            try:
                import os

                total = os.path.getsize(path)
            except OSError:
                total = None
        return tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc="import",
            disable=self.verbosity == 0,
            dynamic_ncols=True,
        )

    def _lines(self, handle, bar):
        for text in handle:
            bar.update(len(text.encode("utf-8", "replace")))
            yield text

    def _csv_rows(self, path, bar):
        """Yield (line, shopper, event, problem) per CSV row; the header is checked first."""
        with self._open(path) as handle:
            reader = csv.reader(self._lines(handle, bar))
            try:
                header = [name.strip().lower() for name in next(reader)]
            except StopIteration:
                raise CommandError(
                    f"{path} is empty: expected a header row with {', '.join(REQUIRED_COLUMNS)}."
                ) from None
            except (csv.Error, UnicodeDecodeError) as exc:
                raise CommandError(f"{path} line 1: {exc}") from exc
            missing = [name for name in REQUIRED_COLUMNS if name not in header]
            unknown = [name for name in header if name not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
            if missing or unknown:
                raise CommandError(
                    f"{path}: the header must have the columns {', '.join(REQUIRED_COLUMNS)} "
                    f"(optionally {', '.join(OPTIONAL_COLUMNS)}); "
                    + "; ".join(
                        filter(
                            None,
                            [
                                missing and f"missing: {', '.join(missing)}",
                                unknown and f"unknown: {', '.join(unknown)}",
                            ],
                        )
                    )
                )
            while True:
                try:
                    values = next(reader)
                except StopIteration:
                    return
                except (csv.Error, UnicodeDecodeError) as exc:
                    yield reader.line_num, None, None, f"unreadable: {exc}"
                    continue
                if not any(v.strip() for v in values):
                    continue
                line = reader.line_num
                if len(values) != len(header):
                    yield line, None, None, f"expected {len(header)} fields, found {len(values)}."
                    continue
                yield (line, *self._parse_csv_row(dict(zip(header, values, strict=True))))

    def _parse_csv_row(self, row):
        shopper, problem = self._shopper(row["user"].strip())
        if problem:
            return None, None, problem
        event = {"kind": row["kind"].strip(), "item": row["item"].strip()}
        when, problem = _parse_timestamp(row["timestamp"].strip())
        if problem:
            return shopper, event, f"timestamp: {problem}"
        event["occurred_at"] = when
        value = (row.get("value") or "").strip()
        if value:
            event["value"] = value
        if (row.get("placement") or "").strip():
            event["placement"] = row["placement"].strip()
        event_id = (row.get("event_id") or "").strip()
        event["event_id"] = event_id or str(
            uuid.uuid5(
                IMPORT_NAMESPACE,
                "|".join(
                    [row["user"].strip(), event["item"], event["kind"], when.isoformat(), value]
                ),
            )
        )
        return shopper, event, None

    def _shopper(self, text):
        """``("user", user)`` or ``("session", key)`` for a CSV user field, or a problem."""
        if not text:
            return None, "user: empty."
        if text.startswith(SESSION_PREFIX):
            key = text[len(SESSION_PREFIX) :]
            if not key or len(key) > 40:
                return None, "user: a session key must have 1 to 40 characters."
            return ("session", key), None
        if text not in self.users:
            User = get_user_model()
            if text.startswith(USER_ID_PREFIX):
                lookup = {"pk": text[len(USER_ID_PREFIX) :]}
                if not lookup["pk"].isdigit():
                    return None, f"user: {text!r} is not {USER_ID_PREFIX}<number>."
            else:
                lookup = {User.USERNAME_FIELD: text}
            self.users[text] = User._default_manager.filter(**lookup).first()
        user = self.users[text]
        if user is None:
            return (
                None,
                f"user: no user {text!r} (prefix anonymous shoppers with {SESSION_PREFIX!r}).",
            )
        return ("user", user), None

    def _sequence_rows(self, path, bar):
        """Yield rows of a ``user item`` file; timestamps need each user's length, so read twice."""
        lengths = {}
        with self._open(path) as handle:
            for text in handle:
                fields = text.split()
                if len(fields) == 2:
                    lengths[fields[0]] = lengths.get(fields[0], 0) + 1
        now = timezone.now()
        positions = {}
        with self._open(path) as handle:
            for line, text in enumerate(self._lines(handle, bar), start=1):
                fields = text.split()
                if not fields:
                    continue
                if len(fields) != 2:
                    yield line, None, None, f"expected 'user item', found {len(fields)} field(s)."
                    continue
                user, item = fields
                key = f"{SEQUENCE_PREFIX}{user}"
                if len(key) > 40:
                    yield (
                        line,
                        None,
                        None,
                        f"user {user[:40]!r} is longer than {40 - len(SEQUENCE_PREFIX)} characters.",
                    )
                    continue
                position = positions[user] = positions.get(user, -1) + 1
                event = {
                    "kind": "view",
                    "item": item,
                    "occurred_at": now - timedelta(minutes=lengths[user] - 1 - position),
                    "event_id": str(
                        uuid.uuid5(IMPORT_NAMESPACE, f"sequence|{user}|{position}|{item}")
                    ),
                }
                yield line, ("session", key), event, None

    # ----------------------------------------------------------------- writing

    def _add(self, line, shopper, event, problem):
        batch = self.pending.setdefault(shopper, [])
        batch.append((line, event, problem))
        self.buffered += 1
        if len(batch) >= recommender_settings.MAX_BATCH_SIZE:
            self._flush(shopper)
        elif self.buffered >= MAX_BUFFERED_ROWS:
            self._flush_all()

    def _flush_all(self):
        for shopper in list(self.pending):
            self._flush(shopper)

    def _flush(self, shopper):
        batch = self.pending.pop(shopper)
        self.buffered -= len(batch)
        problems = [(line, problem) for line, _, problem in batch if problem]
        if not problems:
            kind, who = shopper
            identity = {"user": who} if kind == "user" else {"session_key": who}
            try:
                result = self._record([event for _, event, _ in batch], identity)
            except EventValidationError as exc:
                problems = [
                    (batch[index][0], _reason(errors))
                    for index, errors in sorted(exc.errors.items())
                ]
            else:
                self.report.stored += result.stored
                self.report.duplicates += result.duplicates
                return
        for line, reason in problems:
            self.report.reject(line, reason)
        self.report.rejected_with_batch += len(batch) - len(problems)

    def _record(self, events, identity):
        if not self.dry_run:
            return record_many(events, **identity)
        with transaction.atomic():
            result = record_many(events, **identity)
            transaction.set_rollback(True)
        return result

    # ----------------------------------------------------------------- report

    def _print_report(self):
        r = self.report
        verb = "Would store" if self.dry_run else "Stored"
        summary = (
            f"{verb} {r.stored} event(s); {r.duplicates} duplicate(s) skipped; {r.rejected} rejected"
            + (
                f" ({r.invalid} invalid, {r.rejected_with_batch} in their batches)"
                if r.rejected
                else ""
            )
            + (f"; {r.skipped} line(s) before --start skipped" if r.skipped else "")
            + "."
        )
        if not r.rejected:
            self.stdout.write(self.style.SUCCESS(summary))
            return
        self.stdout.write(self.style.WARNING(summary))
        for line, reason in r.rejects:
            self.stdout.write(f"  line {line}: {reason}")
        if r.invalid > len(r.rejects):
            self.stdout.write(f"  ... and {r.invalid - len(r.rejects)} more invalid line(s).")
        raise CommandError(
            f"{r.rejected} row(s) rejected; fix the lines above and import again "
            "(events already stored are recognised and skipped)."
        )


def _parse_timestamp(text):
    """(aware datetime, None) from ISO 8601 with zone or epoch seconds, else (None, problem)."""
    if not text:
        return None, "empty."
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is not None:
        try:
            return datetime.fromtimestamp(seconds, tz=UTC), None
        except (OverflowError, OSError, ValueError):
            return None, f"{text!r} is out of range."
    try:
        when = parse_datetime(text)
    except ValueError:
        when = None
    if when is None:
        return None, f"{text[:40]!r} is neither ISO 8601 nor seconds since the epoch."
    if timezone.is_naive(when):
        return None, f"{text[:40]!r} has no time zone (add Z or +00:00)."
    try:
        return as_utc(when), None  # PostgreSQL refuses offsets past ±15:59
    except ValueError:
        return None, f"{text[:40]!r} is out of range."


def _reason(errors):
    return "; ".join(f"{name}: {message}" for name, message in errors.items())
