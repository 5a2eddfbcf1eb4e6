"""Bad input never crashes the write path or the API, and never half-writes a batch.

Property-based (hypothesis) attacks on ``events.record_many`` and on every endpoint, then
schemathesis against the project's own OpenAPI schema. The contract every example checks:

* a batch is either accepted whole, and the number of stored events grows by exactly the
  number the answer says were stored (replayed event ids counted as duplicates), or refused
  whole with a reason for each bad event, and nothing at all is stored;
* over HTTP: never a 500; a refusal is a 4xx with a JSON ``detail``.

Both storage paths run: PostgreSQL's one statement, and the ORM path every other database
takes, here routed to explicitly (on the same PostgreSQL) with a spy proving it ran.
Examples are bounded and derandomized, so the suite is fast and the same on every run.
"""

import json
import math
import uuid
from datetime import timedelta
from datetime import timezone as dt_timezone
from urllib.parse import quote

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.test import Client, override_settings
from django.utils import timezone
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from recommender import events
from recommender.models import Event

pytestmark = pytest.mark.django_db

BOUNDED = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
KINDS = ("view", "click", "add_to_cart", "remove_from_cart", "purchase")
# A handful of ids, so that events replay one another within and across batches.
REPLAYED_IDS = [str(uuid.UUID(int=n)) for n in range(1, 7)]
# Unicode that has hurt text handling somewhere: NUL, lone surrogates, bidi overrides,
# zero-width and combining marks, emoji sequences, markup, SQL, percent-escapes.
NASTY = [
    "\x00",
    "a\x00b",
    "\ud800",
    "\udfff",
    "x\ud83d",
    "\u202egnp.exe",
    "\u2066\u2069",
    "\u200b",
    "e\u0301\u0301\u0301",
    "🛒",
    "👩‍👩‍👧‍👦",
    "🏳️‍🌈",
    "ﷺ",
    "𝕏",
    "<script>alert(1)</script>",
    "' OR 1=1 --",
    "%00",
    "\\u0000",
    "null",
    "NaN",
    "-Infinity",
    "1e999",
    "",
    " ",
    "\t\n",
    "\r\n\r\n",
    "٣",
    "１２",
    "0x10",
    "1_0",
]
STORABLE_NASTY = [
    s for s in NASTY if "\x00" not in s and not any(0xD800 <= ord(c) <= 0xDFFF for c in s)
]


def storable_text(max_size):
    """Text PostgreSQL can store: anything but NUL and lone surrogates, nasty cases first."""
    alphabet = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
    return st.one_of(
        st.sampled_from([s for s in STORABLE_NASTY if len(s) <= max_size]),
        st.text(alphabet=alphabet, max_size=max_size),
    )


any_text = st.one_of(st.sampled_from(NASTY), st.text(max_size=30))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=8,
)


def recommender(**overrides):
    """The demo's RECOMMENDER settings with these overridden (throttles off for fuzzing)."""
    return override_settings(RECOMMENDER={**django_settings.RECOMMENDER, **overrides})


def moment(seconds):
    return timezone.now() + timedelta(seconds=seconds)


# Within the accepted window: MAX_EVENT_AGE_DAYS (365) back, MAX_FUTURE_SECONDS (300) ahead.
in_window = st.integers(min_value=-364 * 86400, max_value=240)
valid_times = st.one_of(
    st.none(),
    in_window.map(lambda s: moment(s).isoformat()),
    in_window.map(
        lambda s: moment(s).astimezone(dt_timezone(timedelta(hours=-9, minutes=-30))).isoformat()
    ),
    # Every offset Python accepts (±23:59), though PostgreSQL only takes ±15:59.
    st.tuples(in_window, st.integers(-(24 * 60 - 1), 24 * 60 - 1)).map(
        lambda t: moment(t[0]).astimezone(dt_timezone(timedelta(minutes=t[1]))).isoformat()
    ),
    in_window.map(lambda s: int(moment(s).timestamp() * 1000)),
    in_window.map(lambda s: moment(s).timestamp() * 1000.0),
)
bad_times = st.one_of(
    st.integers(min_value=400, max_value=3_000_000 * 86400 // 10).map(
        lambda s: moment(s).isoformat()
    ),  # future
    st.integers(min_value=366 * 86400, max_value=700_000 * 86400).map(
        lambda s: moment(-s).isoformat()
    ),  # ancient
    st.sampled_from(
        [
            "0001-01-01T00:00:00+00:00",
            "9999-12-31T23:59:59+00:00",
            "0001-01-01T00:00:00+23:59",
            "9999-12-31T23:59:59-23:59",
            "2026-02-30T00:00:00Z",
            "2026-01-01T25:00:00Z",
            "2026-01-01T00:00:00+99:00",
            "2026-01-01T00:00:00",
            "2026-01-01",
            "yesterday",
            "now",
            "",
            "१९७०-01-01T00:00:00Z",
            "\ud800",
            "\x00",
        ]
    ),
    st.integers(max_value=-1),  # before 1970, or far beyond datetime's range
    st.integers(min_value=10**13),  # year 2286 and later, up to astronomically far
    st.sampled_from([10**309, -(10**309), 10**5000]),  # too large for a float
    st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -1e300]),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
)


def number_or_none(text):
    try:
        number = float(text)
    except (TypeError, ValueError, OverflowError):
        return None
    return number


def not_a_uuid(text):
    try:
        uuid.UUID(text)
    except (TypeError, ValueError, AttributeError):
        return True
    return False


def as_pk(value, pks):
    """The catalogue pk a client's item value would name, or None."""
    try:
        pk = int(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else None
    except ValueError:
        return None
    return pk if pk in pks else None


class Shapes:
    """Strategies for events about one catalogue (the test's own products)."""

    def __init__(self, catalog):
        self.recordable = [p.pk for p in catalog if p.is_active]
        self.all_pks = {p.pk for p in catalog}
        self.inactive = [p.pk for p in catalog if not p.is_active]

    def valid_event(self):
        item = st.sampled_from(self.recordable).flatmap(
            lambda pk: st.sampled_from([pk, str(pk), f" {pk} "])
        )
        return st.fixed_dictionaries(
            {"kind": st.sampled_from(KINDS), "item": item},
            optional={
                "value": st.one_of(
                    st.none(),
                    st.floats(-1e6, 1e6, allow_nan=False),
                    st.integers(-(10**6), 10**6),
                    st.floats(-1e6, 1e6, allow_nan=False).map(repr),
                ),
                "occurred_at": valid_times,
                "event_id": st.one_of(st.sampled_from(REPLAYED_IDS), st.uuids().map(str)),
                "placement": storable_text(64),
                "page": storable_text(200),
                "recommendation_id": st.one_of(st.none(), st.uuids().map(str)),
            },
        )

    def bad_field(self):
        """(field, value) that makes an otherwise good event invalid."""
        junk = st.one_of(
            st.lists(st.integers(), max_size=2),
            st.dictionaries(st.text(max_size=2), st.none(), max_size=1),
        )
        recordable = set(self.recordable)
        return st.one_of(
            st.tuples(
                st.just("kind"),
                st.one_of(
                    any_text.filter(lambda k: k not in KINDS),
                    st.integers(),
                    st.floats(),
                    st.booleans(),
                    st.none(),
                    junk,
                    st.sampled_from([k.upper() for k in KINDS]),
                ),
            ),
            st.tuples(
                st.just("item"),
                st.one_of(
                    st.sampled_from(self.inactive),  # exists, but not recordable
                    st.integers().filter(
                        lambda n: n not in self.all_pks
                    ),  # unknown, negative, beyond bigint
                    st.integers(min_value=2**63),
                    st.integers(max_value=-(2**63)),
                    any_text.filter(lambda s: as_pk(s, recordable) is None),
                    st.floats(),
                    st.booleans(),
                    st.none(),
                    junk,
                ),
            ),
            st.tuples(
                st.just("value"),
                st.one_of(
                    st.floats(min_value=1e6, exclude_min=True),
                    st.floats(max_value=-1e6, exclude_max=True),
                    st.just(math.nan),
                    st.integers(min_value=10**6 + 1),
                    st.integers(max_value=-(10**6) - 1),
                    st.integers(min_value=10**400, max_value=10**401),
                    st.booleans(),
                    junk,
                    any_text.filter(
                        lambda s: (
                            (n := number_or_none(s)) is None or not math.isfinite(n) or abs(n) > 1e6
                        )
                    ),
                ),
            ),
            st.tuples(st.just("occurred_at"), bad_times),
            st.tuples(
                st.sampled_from(["event_id", "recommendation_id"]),
                st.one_of(
                    any_text.filter(lambda s: s != "" and not_a_uuid(s)),
                    st.integers(),
                    st.uuids().map(lambda u: u.int),
                    st.booleans(),
                    junk,
                ),
            ),
            st.tuples(
                st.sampled_from(["placement", "page"]),
                st.one_of(
                    st.text(min_size=201, max_size=300),
                    st.sampled_from(["\x00", "ok\x00", "\ud800", "x\udfff"]),
                    st.integers(),
                    st.booleans(),
                    junk,
                ),
            ),
            st.tuples(st.just("placement"), st.text(min_size=65, max_size=80)),
            st.tuples(
                st.sampled_from(
                    ["user", "user_id", "session_key", "received_at", "id", "\x00", "\ud800", ""]
                ),
                json_values,
            ),
        )

    def bad_event(self):
        def spoil(pair):
            event, (field, value) = pair
            return {**event, field: value}

        not_an_object = st.one_of(
            st.none(), st.integers(), any_text, st.lists(st.integers(), max_size=2)
        )
        return st.one_of(st.tuples(self.valid_event(), self.bad_field()).map(spoil), not_an_object)

    def mixed_batch(self):
        """(batch, indexes of its bad events): at least one bad event, anywhere in the batch."""
        return st.tuples(
            st.lists(self.valid_event(), max_size=6),
            st.lists(
                st.tuples(st.integers(min_value=0, max_value=6), self.bad_event()),
                min_size=1,
                max_size=3,
            ),
        ).map(self._insert)

    def unavailable_batch(self):
        """(batch, bad indexes) whose only faults are items that are unknown or not recordable.

        Such a batch passes validation and is refused by the storage path's item check.
        """
        unavailable = st.one_of(
            st.sampled_from(self.inactive),
            st.integers(-(2**31), 2**31).filter(lambda n: n not in self.all_pks),
        )
        spoiled = st.tuples(self.valid_event(), unavailable).map(
            lambda pair: {**pair[0], "item": pair[1]}
        )
        return st.tuples(
            st.lists(self.valid_event(), max_size=6),
            st.lists(
                st.tuples(st.integers(min_value=0, max_value=6), spoiled), min_size=1, max_size=2
            ),
        ).map(self._insert)

    @staticmethod
    def _insert(parts):
        batch, bad = list(parts[0]), parts[1]
        flags = [False] * len(batch)
        for position, event in bad:
            position = min(position, len(batch))
            batch.insert(position, event)
            flags.insert(position, True)
        return batch, {i for i, flag in enumerate(flags) if flag}


def expected_storage(batch, **shopper):
    """How many of a good batch's events are new: fresh explicit ids once, every event without one.

    Ids are per shopper: with ``shopper`` given, only that shopper's stored ids count.
    """
    ids = [e.get("event_id") for e in batch if e.get("event_id")]
    stored = Event.objects.for_shopper(**shopper) if shopper else Event.objects.all()
    stored_before = {
        str(i) for i in stored.filter(event_id__in=ids).values_list("event_id", flat=True)
    }
    return len(set(ids) - stored_before) + sum(1 for e in batch if not e.get("event_id"))


# --------------------------------------------------------------------------- both storage paths


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres), "orm"])
def storage(request, monkeypatch):
    """Which storage path record_many takes; yields the calls it made, to prove the path ran.

    "orm" routes record_many to ``_store_orm`` (the path of every non-PostgreSQL database),
    against the same real PostgreSQL, so both paths meet the same constraints.
    """
    calls = []
    chosen = events._store_postgresql if request.param == "postgresql" else events._store_orm

    def spy(rows, **shopper):
        calls.append(len(rows))
        return chosen(rows, **shopper)

    monkeypatch.setattr(events, "_store_postgresql", spy)
    monkeypatch.setattr(events, "_store_orm", spy)
    yield calls
    assert calls, f"the {request.param} path never ran"


@pytest.fixture
def shopper(db):
    user = get_user_model().objects.create_user("hypo", email="hypo@example.com")
    return [{"user": user}, {"session_key": "anon-hypothesis"}]


def test_good_batches_are_stored_exactly_once(storage, catalog, shopper):
    shapes = Shapes(catalog)

    @BOUNDED
    @given(
        batch=st.lists(shapes.valid_event(), min_size=1, max_size=8), who=st.sampled_from([0, 1])
    )
    def run(batch, who):
        before = Event.objects.count()
        expected = expected_storage(batch, **shopper[who])
        result = events.record_many(batch, **shopper[who])
        assert (result.stored, result.duplicates) == (expected, len(batch) - expected)
        assert Event.objects.count() - before == result.stored
        for event in batch:
            if event.get("event_id"):
                assert Event.objects.filter(event_id=event["event_id"]).exists()

    run()


def test_one_bad_event_refuses_the_whole_batch_with_a_reason(storage, catalog, shopper):
    shapes = Shapes(catalog)
    good, inactive = catalog[0].pk, catalog[7].pk
    replayed = {"kind": "view", "item": good, "event_id": REPLAYED_IDS[0]}

    @BOUNDED
    @given(
        mixed=st.one_of(shapes.mixed_batch(), shapes.unavailable_batch()),
        who=st.sampled_from([0, 1]),
    )
    # Crashes and misreports found before, always tried first.
    @example(mixed=([{"kind": [], "item": good}], {0}), who=0)
    @example(mixed=([{"kind": {"view": 1}, "item": good}], {0}), who=1)
    @example(mixed=([{"kind": "view", "item": good}, {"kind": "view", "item": 10**30}], {1}), who=0)
    @example(mixed=([{"kind": "view", "item": str(-(2**70))}], {0}), who=1)
    @example(mixed=([{"kind": "view", "item": good, "placement": "\ud800"}], {0}), who=0)
    @example(mixed=([{"kind": "view", "item": good, "page": "x\udfff"}], {0}), who=1)
    @example(mixed=([{"kind": "view", "item": "\ud800"}], {0}), who=0)
    @example(mixed=([replayed, replayed, {"kind": "view", "item": inactive}], {2}), who=0)
    @example(
        mixed=([{"kind": "view", "item": inactive}, {"kind": "teleport", "item": good}], {0, 1}),
        who=1,
    )
    def run(mixed, who):
        batch, bad = mixed
        before = Event.objects.count()
        with pytest.raises(events.EventValidationError) as refused:
            events.record_many(batch, **shopper[who])
        errors = refused.value.errors
        # Every bad event is named, by its index in the batch as sent, and no good one.
        assert set(errors) == bad, (errors, bad)
        for problems in errors.values():
            assert problems and all(
                isinstance(reason, str) and reason for reason in problems.values()
            )
        json.dumps(errors, ensure_ascii=False).encode(
            "utf-8"
        )  # reasons are printable, storable text
        assert Event.objects.count() == before

    run()


def test_replayed_ids_with_an_unavailable_item_are_still_refused(storage, catalog):
    """A repeat of an event id is skipped, but not its item check: nothing is stored."""
    inactive = next(p for p in catalog if not p.is_active)
    event_id = str(uuid.uuid4())
    batch = [
        {"kind": "view", "item": catalog[0].pk, "event_id": event_id},
        {"kind": "view", "item": inactive.pk, "event_id": event_id},
    ]
    with pytest.raises(events.EventValidationError) as refused:
        events.record_many(batch, session_key="s")
    assert list(refused.value.errors) == [1]  # the index in the batch as sent
    assert not Event.objects.exists()
    events.record_many(batch[:1], session_key="s")
    with pytest.raises(events.EventValidationError):
        events.record_many(batch[::-1], session_key="s")
    assert Event.objects.count() == 1


@pytest.mark.parametrize("size", [101, 1000])
def test_oversized_batches_are_refused(storage, catalog, size):
    with pytest.raises(events.EventValidationError, match="At most 100"):
        events.record_many([{"kind": "view", "item": catalog[0].pk}] * size, session_key="s")
    events.record_many([{"kind": "view", "item": catalog[0].pk}] * 100, session_key="s")
    assert Event.objects.count() == 100


@pytest.mark.parametrize("session_key", ["x" * 41, "a\x00b", "\ud800", 42, ["k"]])
def test_bad_session_keys_from_callers_are_refused(catalog, session_key):
    with pytest.raises(events.EventValidationError):
        events.record("view", catalog[0], session_key=session_key)
    assert not Event.objects.exists()


def test_unicode_is_stored_as_sent(storage, catalog):
    for index, text in enumerate(s for s in STORABLE_NASTY if s):
        events.record(
            "view",
            catalog[0],
            session_key="s",
            placement=text[:64],
            page=text,
            event_id=str(uuid.UUID(int=index + 100)),
        )
    stored = dict(Event.objects.values_list("page", "placement"))
    assert set(stored) == {s for s in STORABLE_NASTY if s}


# --------------------------------------------------------------------------- the events endpoint

EVENTS = "/api/recommender/events/"


def is_utf8(payload):
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def wrap(batch, shape):
    if shape == "object" and len(batch) == 1 and isinstance(batch[0], dict):
        return batch[0]
    if shape == "list":
        return batch
    return {"events": batch}


def post_raw(client, body, content_type="application/json"):
    return client.post(EVENTS, body, content_type=content_type)


def check_answer(response, before):
    """Never a 500; 201 with counts that match the table, or a 4xx with a reason and nothing stored."""
    assert response.status_code in (201, 400), (response.status_code, response.content[:300])
    body = response.json()
    if response.status_code == 400:
        assert isinstance(body["detail"], str) and body["detail"]
        assert Event.objects.count() == before
    else:
        assert Event.objects.count() - before == body["stored"]
    return body


@recommender(EVENTS_THROTTLE_RATE=None)
def test_the_events_endpoint_answers_any_batch_with_201_or_400(storage, catalog):
    shapes = Shapes(catalog)
    client = Client()
    batches = st.one_of(
        st.lists(shapes.valid_event(), min_size=1, max_size=6).map(lambda b: (b, set())),
        shapes.mixed_batch(),
        shapes.unavailable_batch(),
    )

    @BOUNDED
    @given(batch=batches, shape=st.sampled_from(["object", "list", "envelope"]))
    def run(batch, shape):
        events_sent, bad = batch
        before = Event.objects.count()
        expected = None if bad else expected_storage(events_sent)
        # Written as a browser would (NaN as Python's json writes it); lone surrogates travel
        # as the broken UTF-8 they become on the wire.
        payload = json.dumps(wrap(events_sent, shape), ensure_ascii=False).encode(
            "utf-8", "surrogatepass"
        )
        answer = check_answer(post_raw(client, payload), before)
        if not bad:
            assert answer == {"stored": expected, "duplicates": len(events_sent) - expected}
        elif is_utf8(payload):
            assert set(answer["errors"]) == {str(i) for i in bad}, (answer, bad)
        else:
            assert "Malformed JSON" in answer["detail"]

    run()


@recommender(EVENTS_THROTTLE_RATE=None)
def test_the_events_endpoint_survives_any_body(catalog):
    client = Client()
    deep = "[" * 50_000 + "]" * 50_000

    @BOUNDED
    @given(
        body=st.one_of(
            json_values.map(lambda v: json.dumps(v, ensure_ascii=True)),
            st.binary(max_size=200),
            st.sampled_from(
                [
                    deep,
                    '{"events": ' + deep + "}",
                    '{"kind": ' + "[" * 900 + "]" * 900 + ', "item": 1}',
                    "\ufeff{}",
                    "{}",
                    "[]",
                    '{"events": []}',
                    '{"events": {}}',
                    "nul\x00l",
                    "\xff\xfe",
                    "1e999",
                    '{"events": [{"kind": "view", "item": 1}], "csrf_token": 5}',
                    '{"a": 1, "a": 2}',
                ]
            ),
        ),
        content_type=st.sampled_from(
            ["application/json", "text/plain", "application/json; charset=utf-8"]
        ),
    )
    def run(body, content_type):
        before = Event.objects.count()
        check_answer(post_raw(client, body, content_type), before)

    run()


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded", "kind=view&item=1"),
        ("multipart/form-data; boundary=x", "--x--"),
        ("application/xml", "<event/>"),
    ],
)
def test_the_events_endpoint_refuses_other_content_types(catalog, content_type, body):
    response = Client().post(EVENTS, body, content_type=content_type)
    assert response.status_code == 400 and "Send JSON" in response.json()["detail"]


def test_oversized_requests_are_refused_whole(catalog):
    client = Client()
    batch = [{"kind": "view", "item": catalog[0].pk}] * 101
    response = post_raw(client, json.dumps({"events": batch}))
    assert response.status_code == 400 and "At most 100" in response.json()["detail"]
    response = post_raw(
        client,
        json.dumps({"events": [{"kind": "view", "item": catalog[0].pk, "page": "x" * 300_000}]}),
    )
    assert response.status_code == 400 and "too large" in response.json()["detail"]
    assert not Event.objects.exists()


def test_the_impressions_endpoint_answers_any_body_with_200_or_400(catalog):
    client = Client()

    @BOUNDED
    @given(
        body=st.one_of(
            json_values.map(json.dumps),
            st.dictionaries(
                st.sampled_from(["recommendations", "csrf_token", "x"]),
                st.one_of(json_values, st.lists(st.uuids().map(str), max_size=60)),
                max_size=3,
            ).map(json.dumps),
            st.binary(max_size=100),
        )
    )
    def run(body):
        response = client.post(
            "/api/recommender/impressions/", body, content_type="application/json"
        )
        assert response.status_code in (200, 400), response.content[:300]
        answer = response.json()
        assert answer["counted"] == 0 if response.status_code == 200 else answer["detail"]

    run()


# --------------------------------------------------------------------------- read endpoints


def encode(text):
    return quote(text, safe="", errors="surrogatepass")


@recommender(API_THROTTLE_RATE=None)
def test_read_endpoints_answer_any_query_with_200_400_or_404(catalog):
    superuser = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    events.record_many([{"kind": "purchase", "item": p.pk} for p in catalog[:3]], user=superuser)
    client = Client()
    client.force_login(superuser)
    params = st.dictionaries(
        st.one_of(
            st.sampled_from(
                ["limit", "placement", "category", "window", "format", "user", "session_key"]
            ),
            any_text,
        ),
        st.one_of(
            any_text,
            st.integers().map(str),
            st.sampled_from(
                [
                    "0",
                    "1",
                    "50",
                    "51",
                    "-1",
                    "1e3",
                    "10" * 3000,
                    "popular",
                    "trending",
                    "json",
                    "api",
                ]
            ),
        ),
        max_size=3,
    )
    paths = st.one_of(
        st.just("/api/recommender/recommendations/"),
        st.just("/api/recommender/popular/"),
        st.one_of(st.integers(), st.sampled_from([catalog[0].pk, catalog[7].pk])).map(
            lambda n: f"/api/recommender/users/{abs(n)}/recommendations/"
        ),
        st.tuples(
            st.one_of(any_text, st.integers().map(str), st.just(str(catalog[0].pk))),
            st.sampled_from(["similar", "bought-together"]),
        ).map(lambda pair: f"/api/recommender/items/{encode(pair[0])}/{pair[1]}/"),
    )

    @BOUNDED
    @given(path=paths, query=params)
    def run(path, query):
        url = path + "?" + "&".join(f"{encode(k)}={encode(v)}" for k, v in query.items())
        response = client.get(url)
        assert response.status_code in (200, 400, 404), (
            url,
            response.status_code,
            response.content[:300],
        )
        if response["Content-Type"].startswith("application/json"):
            answer = response.json()
            assert answer["detail"] if response.status_code != 200 else "items" in answer

    run()


@pytest.mark.parametrize(
    "query", ["placement=%00", "placement=a%00b", "category=%00", "window=%00", "limit=%00"]
)
def test_nul_in_a_parameter_is_a_400_not_a_database_error(client, catalog, query):
    for path in (
        "popular/",
        "recommendations/",
        f"items/{catalog[0].pk}/similar/",
        f"items/{catalog[0].pk}/bought-together/",
    ):
        response = client.get(f"/api/recommender/{path}?{query}")
        assert response.status_code in (400, 200), (path, query, response.status_code)
        if "placement" in query:
            assert response.status_code == 400 and "NUL" in response.json()["detail"]


# --------------------------------------------------------------------------- schemathesis


class _InProcessDjango:
    """Django's WSGI handler, answering inside the test's transaction.

    Like the test client, it keeps the test's database connection open across requests
    (Django closes connections at the end of each request, which would end the test's
    transaction). Nothing else is changed: real middleware, real CSRF, real sessions.
    """

    def __init__(self):
        from django.core.handlers.wsgi import WSGIHandler

        self.handler = WSGIHandler()

    def __call__(self, environ, start_response):
        from django.core.signals import request_finished, request_started
        from django.db import close_old_connections

        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
        try:
            response = self.handler(environ, start_response)
            body = b"".join(response)
            response.close()
        finally:
            request_started.connect(close_old_connections)
            request_finished.connect(close_old_connections)
        return [body]


@pytest.fixture(scope="module")
def api_schema():
    """The project's own OpenAPI schema, as its schema endpoint serves it (loaded once)."""
    import schemathesis

    return schemathesis.openapi.from_wsgi(
        "/api/recommender/schema/?format=json", _InProcessDjango()
    )


def exercise(operation, strategy, checks, token, ran):
    """Send bounded examples of one operation, with a session's CSRF token, and check each answer."""

    @settings(BOUNDED, max_examples=10)
    @given(case=strategy)
    def run(case):
        before = Event.objects.count()
        response = case.call(headers={"X-CSRFToken": token}, cookies={"csrftoken": token})
        case.validate_response(response, checks=checks)
        if response.status_code == 201:
            assert Event.objects.count() - before == response.json()["stored"]
        else:
            assert Event.objects.count() == before
        ran[operation.path] = ran.get(operation.path, 0) + 1

    run()


@recommender(API_THROTTLE_RATE=None, EVENTS_THROTTLE_RATE=None)
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis_finds_no_server_error_nor_undocumented_answer(api_schema, catalog, mode):
    """Every operation of the schema, positive and negative data, with a real session and CSRF token."""
    from django.middleware.csrf import _get_new_csrf_string
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
    ]
    token = _get_new_csrf_string()
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/api/recommender/events/",
        "/api/recommender/impressions/",
        "/api/recommender/recommendations/",
        "/api/recommender/users/{user_id}/recommendations/",
        "/api/recommender/items/{item_id}/similar/",
        "/api/recommender/items/{item_id}/bought-together/",
        "/api/recommender/popular/",
    }
    ran = {}
    for operation in operations:
        if operation.path.endswith("/schema/"):
            continue  # drf-spectacular's own view; one example is enough, and it is slow
        exercise(
            operation,
            operation.as_strategy(generation_mode=GenerationMode(mode)),
            checks,
            token,
            ran,
        )
    assert len(ran) >= 7, ran
