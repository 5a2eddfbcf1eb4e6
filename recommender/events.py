"""The one write path for shopper events: validate, normalise, store once.

Everything that records events (the DRF endpoint, the store's checkout code, the demo
simulator, imports) calls ``record`` or ``record_many``. A batch is validated as a whole
before anything is written, so a bad event never leaves its batch half-stored, and each
event's ``event_id`` makes a retried submission a no-op.
"""

import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from .conf import get_item_model, recommender_settings
from .models import Event

EVENT_FIELDS = {"kind", "item", "value", "occurred_at", "event_id", "placement", "page", "recommendation_id"}


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
    stored: int
    duplicates: int


def record(kind, item, *, user=None, session_key="", **fields):
    """Record one event for a shopper (a user, or an anonymous session key).

    ``item`` is an instance or primary key of the store's item model. Extra keyword
    arguments are the optional event fields: value, occurred_at, event_id, placement,
    page, recommendation_id. Returns the RecordResult; raises EventValidationError.
    """
    return record_many([{"kind": kind, "item": item, **fields}], user=user, session_key=session_key)


def record_many(events, *, user=None, session_key=""):
    """Validate a batch of event dicts for one shopper and store them in one transaction.

    Events whose ``event_id`` is already stored (or repeats within the batch) are
    counted as duplicates and skipped.
    """
    events = list(events)
    max_batch = recommender_settings.MAX_BATCH_SIZE
    if not events:
        raise EventValidationError({0: {"events": "The batch is empty."}})
    if len(events) > max_batch:
        raise EventValidationError({0: {"events": f"At most {max_batch} events per batch, got {len(events)}."}})
    user, session_key = _validate_shopper(user, session_key)
    rows, errors = [], {}
    for index, data in enumerate(events):
        row, problems = _validate_event(data)
        if problems:
            errors[index] = problems
        else:
            rows.append(row)
    if not errors:
        errors = _check_items(rows)
    if errors:
        raise EventValidationError(errors)
    return _store(rows, user=user, session_key=session_key)


def _validate_shopper(user, session_key):
    if user is not None and not getattr(user, "is_authenticated", False):
        user = None
    session_key = session_key or ""
    if not isinstance(session_key, str) or len(session_key) > 40:
        raise EventValidationError({0: {"session_key": "must be a string of at most 40 characters."}})
    if user is None and not session_key:
        raise EventValidationError({0: {"shopper": "An event needs a user or an anonymous session key."}})
    return user, session_key


def _validate_event(data):
    """One event dict -> (row dict, {}) or (None, {field: reason})."""
    if not isinstance(data, dict):
        return None, {"event": "must be an object."}
    errors = {}
    unknown = set(data) - EVENT_FIELDS
    if unknown:
        errors["event"] = f"unknown field(s): {', '.join(sorted(map(str, unknown)))}."
    row = {}
    kind = data.get("kind")
    if kind not in recommender_settings.EVENT_KINDS:
        known = ", ".join(recommender_settings.EVENT_KINDS)
        errors["kind"] = f"unknown kind {str(kind)[:40]!r}; expected one of: {known}."
    row["kind"] = kind
    item = data.get("item")
    item_pk, problem = _clean_item(item)
    if problem:
        errors["item"] = problem
    row["item_pk"] = item_pk
    for name, cleaner in (
        ("value", _clean_value),
        ("occurred_at", _clean_time),
        ("event_id", _clean_uuid),
        ("recommendation_id", _clean_uuid),
        ("placement", _text_cleaner("MAX_PLACEMENT_LENGTH")),
        ("page", _text_cleaner("MAX_PAGE_LENGTH")),
    ):
        try:
            row[name] = cleaner(data.get(name))
        except ValueError as exc:
            errors[name] = str(exc)
    if row.get("event_id") is None:
        row["event_id"] = uuid.uuid4()
    if row.get("occurred_at") is None:
        row["occurred_at"] = timezone.now()
    return (None, errors) if errors else (row, {})


def _clean_item(item):
    model = get_item_model()
    if isinstance(item, model):
        return item.pk, None
    if item is None or isinstance(item, (bool, float, dict, list)):
        return None, "an item id is required."
    try:
        pk = model._meta.pk.to_python(item)
    except Exception:  # noqa: BLE001 - any conversion failure is the client's bad id
        return None, f"{str(item)[:40]!r} is not a valid item id."
    if pk is None or pk == "":
        return None, "an item id is required."
    return pk, None


def _clean_value(value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("must be a number.")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError("must be a number.") from None
    limit = recommender_settings.MAX_EVENT_VALUE
    if not math.isfinite(number) or abs(number) > limit:
        raise ValueError(f"must be a finite number between -{limit:g} and {limit:g}.")
    return number


def _clean_time(value):
    if value is None:
        return None
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError("must be an ISO 8601 time or milliseconds since the epoch.")
        try:
            when = datetime.fromtimestamp(value / 1000.0, tz=dt_timezone.utc)
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
    now = timezone.now()
    if when > now + timedelta(seconds=recommender_settings.MAX_FUTURE_SECONDS):
        raise ValueError("is in the future.")
    if when < now - timedelta(days=recommender_settings.MAX_EVENT_AGE_DAYS):
        raise ValueError(f"is more than {recommender_settings.MAX_EVENT_AGE_DAYS} days old.")
    return when


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


def _text_cleaner(limit_setting):
    def clean(value):
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ValueError("must be a string.")
        limit = getattr(recommender_settings, limit_setting)
        if len(value) > limit:
            raise ValueError(f"must be at most {limit} characters.")
        if "\x00" in value:
            raise ValueError("must not contain NUL characters.")
        return value

    return clean


def _check_items(rows):
    """Reject events about items that do not exist or that the store does not allow."""
    model = get_item_model()
    wanted = {row["item_pk"] for row in rows}
    allowed = model._default_manager.filter(pk__in=wanted)
    restrict = recommender_settings.RECORDABLE_ITEMS
    if restrict is not None:
        allowed = restrict(allowed)
    found = set(allowed.values_list("pk", flat=True))
    return {
        index: {"item": f"unknown or unavailable item {str(row['item_pk'])[:40]!r}."}
        for index, row in enumerate(rows)
        if row["item_pk"] not in found
    }


def _store(rows, *, user, session_key):
    unique, seen = [], set()
    for row in rows:
        if row["event_id"] not in seen:
            seen.add(row["event_id"])
            unique.append(row)
    with transaction.atomic():
        existing = set(
            Event.objects.filter(event_id__in=[row["event_id"] for row in unique]).values_list(
                "event_id", flat=True
            )
        )
        new = [
            Event(
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
            for row in unique
            if row["event_id"] not in existing
        ]
        # ignore_conflicts covers a concurrent retry that lands between the check and the insert.
        Event.objects.bulk_create(new, ignore_conflicts=True)
    if new:
        _notify_recorded(user=user, session_key=session_key)
    return RecordResult(stored=len(new), duplicates=len(rows) - len(new))


def _notify_recorded(*, user, session_key):
    """Tell listeners (the serving cache) that this shopper's history changed."""
    from .signals import events_recorded

    events_recorded.send(sender=Event, user=user, session_key=session_key)
