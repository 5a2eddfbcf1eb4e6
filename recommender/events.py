"""The one write path for shopper events: validate, normalise, store once.

Everything that records events (the DRF endpoint, the store's checkout code, the demo
simulator, imports) calls ``record`` or ``record_many``. A batch is validated as a whole
before anything is written, so a bad event never leaves its batch half-stored, and each
event's ``event_id`` makes a retried submission a no-op. Code that must store what it can
(a checkout) passes ``partial=True`` and gets the rejected events back instead.

An ``event_id`` is unique per shopper, not across shoppers: another shopper's event with
the same id is a different event, so nobody can pre-empt (or detect) someone else's ids.
A ``recommendation_id`` is kept only if it names a list shown to this shopper that holds
the item (see ``_attribute``), so clicks cannot be credited to lists by anyone who asks.
"""

import functools
import json
import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.db import connections, router, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from . import itemkeys
from .conf import get_item_model, recommender_settings
from .models import Event, Recommendation
from .pseudonyms import list_owner
from .signals import events_recorded

EVENT_FIELDS = {
    "kind",
    "item",
    "value",
    "occurred_at",
    "event_id",
    "placement",
    "page",
    "recommendation_id",
}


class EventValidationError(ValueError):
    """Raised when any event of a batch is invalid; nothing of the batch was stored.

    ``errors`` maps the index of each bad event in the batch to ``{field: reason}``.
    """

    def __init__(self, errors):
        self.errors = errors
        count = len(errors)
        first = next(iter(errors.items()))
        super().__init__(f"{count} invalid event(s); event {first[0]}: {first[1]}")


@dataclass(frozen=True)
class RecordResult:
    """``stored`` new events, ``duplicates`` skipped (event id already stored for this shopper).

    ``rejected`` (only with ``partial=True``) maps the index of each event that was not
    stored because it is invalid to ``{field: reason}``, like ``EventValidationError.errors``.
    """

    stored: int
    duplicates: int
    rejected: dict = field(default_factory=dict)


def record(kind, item, *, user=None, session_key="", **fields):
    """Record one event for a shopper (a user, or an anonymous session key).

    ``item`` is an instance or primary key of the store's item model. Extra keyword
    arguments are the optional event fields: value, occurred_at, event_id, placement,
    page, recommendation_id. Returns the RecordResult; raises EventValidationError.
    """
    return record_many([{"kind": kind, "item": item, **fields}], user=user, session_key=session_key)


def record_many(events, *, user=None, session_key="", partial=False):
    """Validate a batch of event dicts for one shopper and store them in one statement.

    Events whose ``event_id`` this shopper already stored (or that repeat within the
    batch) are counted as duplicates and skipped. By default an invalid event (an unknown
    field, an item that is missing or no longer recordable...) rejects the whole batch
    with EventValidationError. With ``partial=True`` the valid events are stored and the
    invalid ones are listed in ``RecordResult.rejected``: what a checkout wants, where an
    item deactivated meanwhile must not cost the order's other purchase events. A call
    that is wrong as a whole (no shopper, an empty or too large batch) raises either way.
    """
    events = list(events)
    max_batch = recommender_settings.MAX_BATCH_SIZE
    if not events:
        raise EventValidationError({0: {"events": "The batch is empty."}})
    if len(events) > max_batch:
        raise EventValidationError(
            {0: {"events": f"At most {max_batch} events per batch, got {len(events)}."}}
        )
    user, session_key = _validate_shopper(user, session_key)
    validator = _BatchValidator()
    rows, errors = [], {}
    for index, data in enumerate(events):
        row, problems = validator.event(data)
        if problems:
            errors[index] = problems
        else:
            rows.append({**row, "index": index})
    if errors and not partial:
        if rows:  # unavailable items too, so that one answer names every bad event
            errors.update(_check_items(rows))
        raise EventValidationError(dict(sorted(errors.items())))
    if partial and rows:
        errors.update(_check_items(rows))
        rows = [row for row in rows if row["index"] not in errors]
    _attribute(rows, user=user, session_key=session_key)
    stored = _store(rows, user=user, session_key=session_key, errors=errors if partial else None)
    if stored:
        _notify_recorded(user=user, session_key=session_key)
    valid = len(events) - len(errors)
    return RecordResult(
        stored=stored, duplicates=valid - stored, rejected=dict(sorted(errors.items()))
    )


def _store(rows, *, user, session_key, errors=None):
    """Store validated rows; returns how many were new.

    With ``errors`` (partial recording), an item that stopped being recordable between the
    check and the insert rejects only its own events: they are added to ``errors`` and the
    rest is stored.
    """
    store = _store_postgresql if _events_database().vendor == "postgresql" else _store_orm
    while rows:
        try:
            return store(rows, user=user, session_key=session_key)
        except EventValidationError as exc:
            if errors is None:
                raise
            errors.update(exc.errors)
            rows = [row for row in rows if row["index"] not in errors]
    return 0


def _validate_shopper(user, session_key):
    if user is not None and not getattr(user, "is_authenticated", False):
        user = None
    session_key = session_key or ""
    if not isinstance(session_key, str) or len(session_key) > 40:
        raise EventValidationError(
            {0: {"session_key": "must be a string of at most 40 characters."}}
        )
    if _text_problem(session_key):
        raise EventValidationError({0: {"session_key": _text_problem(session_key)}})
    if user is None and not session_key:
        raise EventValidationError(
            {0: {"shopper": "An event needs a user or an anonymous session key."}}
        )
    return user, session_key


class _BatchValidator:
    """Checks events one by one, with settings and the clock read once per batch."""

    def __init__(self):
        self.item_model = get_item_model()
        self.to_pk = itemkeys.from_json
        self.pk_range = _integer_range(self.item_model._meta.pk)
        self.kinds = frozenset(recommender_settings.EVENT_KINDS)
        self.max_value = recommender_settings.MAX_EVENT_VALUE
        self.max_placement = recommender_settings.MAX_PLACEMENT_LENGTH
        self.max_page = recommender_settings.MAX_PAGE_LENGTH
        self.now = timezone.now()
        self.latest = self.now + timedelta(seconds=recommender_settings.MAX_FUTURE_SECONDS)
        self.max_age_days = recommender_settings.MAX_EVENT_AGE_DAYS
        self.earliest = self.now - timedelta(days=self.max_age_days)

    def event(self, data):
        """One event dict -> (row dict, {}) or (None, {field: reason})."""
        if not isinstance(data, dict):
            return None, {"event": "must be an object."}
        errors = {}
        if not data.keys() <= EVENT_FIELDS:
            unknown = sorted(set(data) - EVENT_FIELDS, key=_shown)
            shown = ", ".join(_shown(name) for name in unknown[:5]) + (
                ", ..." if len(unknown) > 5 else ""
            )
            errors["event"] = f"unknown field(s): {shown}."
        kind = data.get("kind")
        # An unhashable kind (a list, an object) is a bad kind, not a crash of the set lookup.
        if not isinstance(kind, str) or kind not in self.kinds:
            errors["kind"] = (
                f"unknown kind {_shown(kind)}; expected one of: {', '.join(recommender_settings.EVENT_KINDS)}."
            )
        item_pk, problem = self.item(data.get("item"))
        if problem:
            errors["item"] = problem
        row = {"kind": kind, "item_pk": item_pk}
        for name, clean in (
            ("value", self.value),
            ("occurred_at", self.time),
            ("event_id", _clean_uuid),
            ("recommendation_id", _clean_uuid),
            ("placement", self.placement),
            ("page", self.page),
        ):
            try:
                row[name] = clean(data.get(name))
            except ValueError as exc:
                errors[name] = str(exc)
        if errors:
            return None, errors
        if row["event_id"] is None:
            row["event_id"] = uuid.uuid4()
        if row["occurred_at"] is None:
            row["occurred_at"] = self.now
        return row, {}

    def item(self, item):
        if isinstance(item, self.item_model):
            return item.pk, None
        if item is None or isinstance(item, (bool, float, dict, list)):
            return None, "an item id is required."
        try:
            pk = self.to_pk(item)
        except Exception:  # noqa: BLE001 - any conversion failure is the client's bad id
            return None, f"{_shown(item)} is not a valid item id."
        if pk is None or pk == "":
            return None, "an item id is required."
        if isinstance(pk, str) and _text_problem(pk):
            return None, f"{_shown(item)} is not a valid item id."
        if isinstance(pk, int) and not self._pk_in_range(pk):
            # No stored item can have it, and the database would refuse it as a parameter.
            return None, f"unknown or unavailable item {_shown(item)}."
        return pk, None

    def _pk_in_range(self, pk):
        low, high = self.pk_range
        return (low is None or pk >= low) and (high is None or pk <= high)

    def value(self, value):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError("must be a number.")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError("must be a number.") from None
        if not math.isfinite(number) or abs(number) > self.max_value:
            raise ValueError(
                f"must be a finite number between -{self.max_value:g} and {self.max_value:g}."
            )
        return number

    def time(self, value):
        when = _parse_time(value)
        if when is None:
            return None
        if when > self.latest:
            raise ValueError("is in the future.")
        if when < self.earliest:
            raise ValueError(f"is more than {self.max_age_days} days old.")
        return when

    def placement(self, value):
        return _clean_text(value, self.max_placement)

    def page(self, value):
        return _clean_text(value, self.max_page)


def _parse_time(value):
    if value is None:
        return None
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be an ISO 8601 time or milliseconds since the epoch.")
        try:
            # Inside the try: an int too large for a float overflows in the division itself.
            when = datetime.fromtimestamp(value / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError("is out of range.") from None
    elif isinstance(value, str):
        try:
            when = parse_datetime(value)
        except ValueError:
            when = None
        if when is None:
            raise ValueError("must be an ISO 8601 time or milliseconds since the epoch.")
    else:
        raise ValueError("must be an ISO 8601 time or milliseconds since the epoch.")
    if timezone.is_naive(when):
        raise ValueError("must include a time zone.")
    return as_utc(when)


def as_utc(when):
    """An aware time in UTC, or ValueError.

    Python accepts UTC offsets up to ±23:59, PostgreSQL only up to ±15:59, so a time is
    stored as UTC whatever offset it came with; moving it to UTC can step out of
    datetime's years 1..9999, which is the client's out-of-range time.
    """
    try:
        return when.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError("is out of range.") from None


def _clean_uuid(value):
    if value is None or value == "":
        return None
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a UUID string.")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ValueError("must be a UUID string.") from None


def _clean_text(value, limit):
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError("must be a string.")
    if len(value) > limit:
        raise ValueError(f"must be at most {limit} characters.")
    problem = _text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _text_problem(value):
    """Why a string cannot be stored as text (PostgreSQL refuses NUL; UTF-8 refuses lone surrogates)."""
    if "\x00" in value:
        return "must not contain NUL characters."
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (no lone surrogates)."
    return None


def _shown(value, limit=40):
    """A short, printable quotation of a client's value for an error message.

    Strings are quoted with ``repr`` (NUL, lone surrogates and bidi controls come out
    escaped); containers are named, not printed (a deeply nested one would exhaust recursion).
    """
    if isinstance(value, str):
        text = repr(value)
    elif isinstance(value, (list, tuple, dict, set, frozenset)):
        return f"(a {type(value).__name__})"
    else:
        try:
            text = repr(str(value))
        except ValueError:  # an int too long to print
            return "(a very long number)"
    return text[:limit] + ("..." if len(text) > limit else "")


def _integer_range(field):
    """(lowest, highest) value the database stores in an integer primary key, else (None, None)."""
    try:
        return connections[router.db_for_read(field.model)].ops.integer_field_range(
            field.get_internal_type()
        )
    except KeyError:
        return None, None


def _unique(rows):
    """Rows with a repeated event_id within the batch are kept once (the first)."""
    seen, unique = set(), []
    for row in rows:
        if row["event_id"] not in seen:
            seen.add(row["event_id"])
            unique.append(row)
    return unique


def _attribute(rows, *, user, session_key):
    """Keep an event's ``recommendation_id`` only where it is the shopper's to claim.

    The list must exist, hold the event's item, and be either shared (popular, similar,
    bought together: shown to anyone who asks) or this shopper's own (its ``owner`` is
    the shopper's pseudonym, as the user or as the anonymous key). A click counts once
    per (shopper, list, item): a repeat is stored without attribution. An event that
    fails a check is still stored, since what the shopper did is true; only the credit
    to the list is dropped. Batches without recommendation ids cost no query.
    """
    claimed = [row for row in rows if row["recommendation_id"] is not None]
    if not claimed:
        return
    lists = {
        rec_id: (owner, {str(pk) for pk in items})
        for rec_id, owner, items in Recommendation.objects.filter(
            pk__in={row["recommendation_id"] for row in claimed}
        ).values_list("pk", "owner", "items")
    }
    mine = {list_owner(user=user), list_owner(session_key=session_key)} - {""}
    counted = set(
        Event.objects.for_shopper(user=user, session_key=session_key)
        .filter(kind=Event.Kind.CLICK, recommendation_id__in=list(lists))
        .values_list("recommendation_id", "item_id")
        .order_by()
    )
    counted = {(rec_id, str(item)) for rec_id, item in counted}
    for row in claimed:
        rec_id, item = row["recommendation_id"], str(row["item_pk"])
        owner, items = lists.get(rec_id, (None, ()))
        if item not in items or (owner and owner not in mine):
            row["recommendation_id"] = None
        elif row["kind"] == Event.Kind.CLICK:
            if (rec_id, item) in counted:
                row["recommendation_id"] = None
            counted.add((rec_id, item))


def _events_database():
    """The connection events are written to (the database router's choice for Event)."""
    return connections[router.db_for_write(Event)]


def _recordable_items(pks=None):
    """The store's recordable items (RECORDABLE_ITEMS), among ``pks`` when given."""
    queryset = get_item_model()._default_manager.all()
    if pks is not None:
        queryset = queryset.filter(pk__in=pks)
    restrict = recommender_settings.RECORDABLE_ITEMS
    return restrict(queryset) if restrict is not None else queryset


def _check_items(rows):
    """Reject events about items that do not exist or that the store does not allow.

    Errors are keyed by each event's index in the batch the caller sent.
    """
    found = set(_recordable_items({row["item_pk"] for row in rows}).values_list("pk", flat=True))
    return {
        row.get("index", position): {
            "item": f"unknown or unavailable item {_shown(row['item_pk'])}."
        }
        for position, row in enumerate(rows)
        if row["item_pk"] not in found
    }


def _store_orm(rows, *, user, session_key):
    """Any database: check items, skip stored event ids, insert; returns rows stored.

    ``rows`` are the batch's validated events, repeats included: every event's item must be
    recordable, even one that repeats an earlier event id and is not stored.
    """
    errors = _check_items(rows)
    if errors:
        raise EventValidationError(errors)
    rows = _unique(rows)
    with transaction.atomic(using=_events_database().alias):
        existing = set(
            Event.objects.for_shopper(user=user, session_key=session_key)
            .filter(event_id__in=[row["event_id"] for row in rows])
            .values_list("event_id", flat=True)
        )
        new = [_event(row, user, session_key) for row in rows if row["event_id"] not in existing]
        # ignore_conflicts covers a concurrent retry landing between the check and the insert.
        Event.objects.bulk_create(new, ignore_conflicts=True)
    return len(new)


def _event(row, user, session_key):
    return Event(
        event_id=row["event_id"],
        user=user,
        session_key=session_key,
        item_id=row["item_pk"],
        kind=row["kind"],
        value=row["value"],
        occurred_at=row["occurred_at"],
        placement=row["placement"],
        page=row["page"],
        recommendation_id=row["recommendation_id"],
    )


# Fields of a validated event row that _store_postgresql sends to the database.
ROW_COLUMNS = (
    "event_id",
    "item_pk",
    "kind",
    "value",
    "occurred_at",
    "placement",
    "page",
    "recommendation_id",
)


def _store_postgresql(rows, *, user, session_key):
    """PostgreSQL: one statement checks every item and inserts the new rows.

    The insert only happens if all the batch's items are recordable (counted by the
    store's own queryset), and ``ON CONFLICT DO NOTHING RETURNING`` says exactly which
    event ids were new for this shopper (event ids are unique per user, or per anonymous
    key). When nothing was inserted, the slower checks tell why. Like ``_store_orm``, it
    checks the items of all ``rows`` and inserts each event id once.

    The store's queryset is compiled without the batch's ids, which are passed as one
    array: compiling ``pk__in=[...]`` cost more CPU than the whole insert. The rows go in
    as one JSON document (``json_to_recordset``), the cheapest shape to send: a VALUES
    list made psycopg re-parse a query too long for its cache on every call, and one
    array per column cost more to quote.
    """
    item_pks = {row["item_pk"] for row in rows}
    checked, rows = rows, _unique(rows)
    database = _events_database()
    allowed = _recordable_items().order_by().values("pk").query
    allowed_sql, allowed_params = allowed.get_compiler(using=database.alias).as_sql()
    item_type, user_type = _column_types(database.alias)
    types = (
        "uuid",
        item_type,
        "varchar",
        "double precision",
        "timestamptz",
        "varchar",
        "varchar",
        "uuid",
    )
    columns = ", ".join(f"{name} {type_}" for name, type_ in zip(ROW_COLUMNS, types, strict=True))
    # Text was validated (no NUL, no lone surrogate), numbers are finite: all valid JSON
    # that PostgreSQL reads back unchanged; UUIDs, times and other keys go as their text.
    document = json.dumps([{name: row[name] for name in ROW_COLUMNS} for row in rows], default=str)
    sql = f"""
        INSERT INTO {_insert_target(database.alias)}
        SELECT e.event_id, %s::{user_type}, %s, e.item_pk, e.kind, e.value, e.occurred_at, now(),
               e.placement, e.page, e.recommendation_id
        FROM json_to_recordset(%s::json) AS e({columns})
        WHERE (SELECT count(*) FROM ({allowed_sql}) AS allowed WHERE allowed.pk = ANY(%s::{item_type}[])) = %s
        ON CONFLICT DO NOTHING
        RETURNING 1
    """
    params = [
        user.pk if user is not None else None,
        session_key,
        document,
        *allowed_params,
        list(item_pks),
        len(item_pks),
    ]
    with database.cursor() as cursor:
        cursor.execute(sql, params)
        stored = len(cursor.fetchall())
    if stored == 0:
        errors = _check_items(checked)
        if errors:
            raise EventValidationError(errors)
    return stored


# Event fields _store_postgresql writes, in the order its SELECT gives their values.
INSERT_FIELDS = (
    "event_id",
    "user",
    "session_key",
    "item",
    "kind",
    "value",
    "occurred_at",
    "received_at",
    "placement",
    "page",
    "recommendation_id",
)


@functools.cache
def _insert_target(alias):
    """``table (column, ...)`` of INSERT_FIELDS, quoted, as the model names them."""
    quote, meta = connections[alias].ops.quote_name, Event._meta
    columns = ", ".join(quote(meta.get_field(name).column) for name in INSERT_FIELDS)
    return f"{quote(meta.db_table)} ({columns})"


@functools.cache
def _column_types(alias):
    """The database types of the item and user keys (fixed for the life of the process)."""
    meta, database = Event._meta, connections[alias]
    return (
        meta.get_field("item").target_field.rel_db_type(database),
        meta.get_field("user").target_field.rel_db_type(database),
    )


def _notify_recorded(*, user, session_key):
    """Tell listeners (the serving cache) that this shopper's history changed."""
    events_recorded.send(sender=Event, user=user, session_key=session_key)
