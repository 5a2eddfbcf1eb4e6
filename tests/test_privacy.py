"""No personal data reaches training, and a forgotten shopper leaves nothing behind.

Both tests train a tiny real model (tests/store_data.py's FAST_CONFIG, fewer epochs) on a
store whose users carry distinctive names, emails and password hashes, and scan what
training produced byte by byte: the exported rows, the artifact (raw, and every member of
its zip container), and the version's row.
"""

import fnmatch
import io
import json
import zipfile

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.redis import RedisCache
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.db.models import Q
from django.test import override_settings

from recommender import cachekeys, events, serving, training
from recommender.conf import recommender_settings
from recommender.models import Event, ModelVersion, Recommendation
from recommender.pseudonyms import export_shopper, list_owner

from .own_cache import own_cache
from .serving_fixtures import install_version
from .store_data import FAST_CONFIG, make_catalogue, make_history

pytestmark = pytest.mark.django_db

TINY = {**FAST_CONFIG, "TRAINING": {**FAST_CONFIG["TRAINING"], "epochs": 2, "patience": 2}}
TEXT_FIELDS = ("CharField", "EmailField", "TextField", "SlugField")


@pytest.fixture
def store():
    """A catalogue, 60 shoppers (half of them users with personal details), 8 events each."""
    products = make_catalogue(30)
    make_history(products, n_shoppers=60, length=8)
    users = list(get_user_model().objects.order_by("pk"))
    for i, user in enumerate(users):
        user.first_name, user.last_name = f"Zebediah{i}x", f"Quuxworthy{i}y"
        user.email = f"zq.private.{i}@mailbox.example.net"
        user.set_password(f"correct horse battery {i}")
        user.save()
    return products, users


def personal_values(user):
    """Every text field value of the user model (username, email, names, password hash...)."""
    values = {
        getattr(user, field.attname)
        for field in user._meta.concrete_fields
        if field.get_internal_type() in TEXT_FIELDS
    }
    values.add(user.password.rsplit("$", 1)[-1])  # the hash alone, without algorithm and salt
    values.add(user.date_joined.isoformat())
    return {value for value in values if isinstance(value, str) and len(value) >= 4}


def artifact_blobs(name):
    """The artifact's bytes, and every member of its zip container decompressed."""
    with default_storage.open(name, "rb") as stored:
        raw = stored.read()
    blobs = [raw]
    with zipfile.ZipFile(io.BytesIO(raw)) as bundle:
        blobs += [bundle.read(member) for member in bundle.namelist()]
    return blobs


def leaks(secrets, blobs):
    """The secrets found in any blob, as UTF-8 or UTF-16 (how pickles and JSON write text)."""
    found = set()
    for secret in secrets:
        forms = {
            secret.encode("utf-8"),
            secret.encode("utf-16-le"),
            json.dumps(secret)[1:-1].encode(),
        }
        if any(form in blob for form in forms for blob in blobs):
            found.add(secret)
    return found


def train_tiny():
    version = training.request_training(config=TINY)
    version = training.run_training(version.pk)
    assert version.status == "ready", version.error
    return version


def version_row_blob(version):
    fields = {f.attname: getattr(version, f.attname) for f in ModelVersion._meta.concrete_fields}
    return json.dumps(fields, default=str, ensure_ascii=False).encode()


def test_training_exports_and_artifacts_hold_only_pseudonyms_items_kinds_values_and_times(store):
    products, users = store
    sessions = set(Event.objects.exclude(session_key="").values_list("session_key", flat=True))
    rows = list(training.export_interactions(chunk_size=50))
    assert len(rows) == Event.objects.count()
    kinds = set(recommender_settings.EVENT_KINDS)
    item_pks = {p.pk for p in products}
    for row in rows:
        shopper, item, kind, value, ts = row  # exactly five fields, each of one plain type
        assert (
            isinstance(shopper, str)
            and len(shopper) == 20
            and set(shopper) <= set("0123456789abcdef")
        )
        assert item in item_pks and kind in kinds and (value is None or isinstance(value, float))
        assert isinstance(ts, float)
    pseudonyms = {row[0] for row in rows}
    # Keyed: the same ids under another SECRET_KEY are other pseudonyms, and none is a plain id.
    assert export_shopper(user_id=users[0].pk) in pseudonyms
    with override_settings(SECRET_KEY="another-secret-key-for-this-test-only-000000000"):
        assert export_shopper(user_id=users[0].pk) not in pseudonyms

    secrets = set().union(*(personal_values(user) for user in users)) | sessions
    exported = repr(rows).encode()
    assert not leaks(secrets, [exported])

    version = train_tiny()
    assert version.data_stats["events"] == len(rows)
    assert not leaks(secrets, artifact_blobs(version.artifact)), "personal data in the artifact"
    assert not leaks(secrets, [version_row_blob(version)]), "personal data in the version's row"
    # The pseudonyms themselves stay in training: the artifact needs items, not shoppers.
    assert not leaks(pseudonyms, artifact_blobs(version.artifact))


def cache_keys():
    """Every key of this test run's cache, whichever backend the tests use."""
    cache = caches[recommender_settings.CACHE_ALIAS]
    if isinstance(cache, RedisCache):
        client = cache._cache.get_client()
        return {key.decode() for key in client.scan_iter(match=cache.make_key("*"), count=1000)}
    assert isinstance(cache, LocMemCache), f"cannot list the keys of {type(cache).__name__}"
    return set(cache._cache)


def keys_like(pattern):
    return {key for key in cache_keys() if fnmatch.fnmatchcase(key, "*" + pattern)}


def shopper_part(shopper):
    """How a shopper is named in cache keys (scanned for, so a key layout change is caught)."""
    return f"u{shopper['user'].pk}" if shopper.get("user") else f"s{shopper['session_key']}"


@pytest.fixture
def private_cache():
    """Cached keys other test processes' cache flushes cannot remove (see own_cache)."""
    with own_cache() as cache:
        yield cache


def test_forgetting_a_shopper_leaves_nothing_in_events_caches_or_the_next_artifact(
    store, private_cache
):
    products, users = store
    alice, bob = users[0], users[1]
    # Alice browsed under her anonymous key before logging in (those events were attached to
    # her), and one event landed under the key, unattached, while she was logging in.
    alice_key = "alice-browser-0001"
    Event.objects.filter(user=alice).update(session_key=alice_key)
    events.record("view", products[5], session_key=alice_key)
    events.record_many([{"kind": "purchase", "item": products[i].pk} for i in (1, 2)], user=alice)
    events.record_many([{"kind": "purchase", "item": products[i].pk} for i in (2, 3)], user=bob)

    install_version(products)
    cache = caches[recommender_settings.CACHE_ALIAS]
    shoppers = {
        "alice": {"user": alice},
        "alice's browser": {"session_key": alice_key},
        "bob": {"user": bob},
    }
    for shopper in shoppers.values():
        for placement in ("", "home", "cart"):
            serving.recommend(**shopper, placement=placement)
    for product in products[:4]:
        serving.bought_together(product)
    generations = {name: cache.get(cachekeys.generation(**s)) for name, s in shoppers.items()}
    assert all(generations.values())
    for name in shoppers:
        assert keys_like("recommender:recs:" + shopper_part(shoppers[name]) + ":*"), (
            f"{name}'s lists should be cached before"
        )
    alice_bought = set(
        Event.objects.filter(
            user=alice, kind__in=recommender_settings.BOUGHT_TOGETHER_KINDS
        ).values_list("item", flat=True)
    )
    bob_events = set(Event.objects.filter(user=bob).values_list("pk", flat=True))
    alice_owners = {
        list_owner(user=alice),
        list_owner(session_key=alice_key),
    }
    assert Recommendation.objects.filter(owner__in=alice_owners).count() == 6
    bob_lists = Recommendation.objects.filter(owner=list_owner(user=bob)).count()

    call_command("recommender_forget_user", alice.get_username(), stdout=io.StringIO())

    # Her personal lists stay for the version's metrics, linked to no one (and not shared).
    assert not Recommendation.objects.filter(owner__in=alice_owners).exists()
    assert Recommendation.objects.filter(owner="forgotten").count() == 6
    assert Recommendation.objects.filter(owner=list_owner(user=bob)).count() == bob_lists

    assert not Event.objects.filter(Q(user=alice) | Q(session_key=alice_key)).exists()
    assert set(Event.objects.filter(user=bob).values_list("pk", flat=True)) == bob_events
    for name in ("alice", "alice's browser"):
        assert cache.get(cachekeys.generation(**shoppers[name])) is None, f"{name}'s generation key"
        assert not keys_like("recommender:recs:" + shopper_part(shoppers[name]) + ":*"), (
            f"{name}'s cached lists"
        )
    assert not {
        key
        for pk in alice_bought
        for pattern in (
            f"recommender:bought_together*:{pk}",
            f"recommender:bought_together*:{pk}:*",
        )
        for key in keys_like(pattern)
    }
    assert cache.get(cachekeys.generation(user=bob)) == generations["bob"]
    assert keys_like("recommender:recs:" + shopper_part(shoppers["bob"]) + ":*"), (
        "others' cached lists stay"
    )

    alice_pseudonyms = {
        export_shopper(user_id=alice.pk),
        export_shopper(session_key=alice_key),
    }
    rows = list(training.export_interactions())
    assert not alice_pseudonyms & {row[0] for row in rows}
    version = train_tiny()
    assert version.data_stats["events"] == len(rows) == Event.objects.count()
    secrets = personal_values(alice) | alice_pseudonyms | {alice_key}
    assert not leaks(secrets, artifact_blobs(version.artifact) + [version_row_blob(version)])
    assert settings.SECRET_KEY not in repr(rows)


def test_the_admin_preview_counts_what_forgetting_deletes(store):
    _, users = store
    alice = users[0]
    Event.objects.filter(user=alice).update(session_key="alice-browser-0002")
    events.record(
        "view", Event.objects.filter(user=alice).first().item, session_key="alice-browser-0002"
    )
    from recommender import privacy

    preview = privacy.preview_forget(user=alice)
    result = privacy.forget_shopper(user=alice)
    assert preview.events == result.events == sum(result.by_kind.values()) and result.events > 0
    assert result.sessions == ["alice-browser-0002"]


def test_forgetting_deletes_cached_lists_where_the_cache_cannot_list_its_keys(store, tmp_path):
    """A file cache can neither scan nor match keys: forgetting deletes the keys it knows."""
    from recommender import privacy

    products, users = store
    alice, bob = users[0], users[1]
    for user in (alice, bob):
        events.record_many(
            [{"kind": "purchase", "item": products[i].pk} for i in (1, 2)], user=user
        )
    files = {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache", "LOCATION": tmp_path}
    with override_settings(
        CACHES={**settings.CACHES, "files": files},
        RECOMMENDER={**settings.RECOMMENDER, "CACHE_ALIAS": "files"},
    ):
        serving.active_model.reset()
        install_version(products)
        serving.recommend(user=bob)
        for placement in ("", "home"):
            serving.recommend(user=alice, placement=placement)
            serving.bought_together(products[1], placement=placement)
        cache = caches["files"]
        source = Recommendation.Source.BOUGHT_TOGETHER
        placements = serving.accepted_placements()
        alice_keys = cachekeys.shopper_keys(user=alice)
        item_keys = cachekeys.item_keys(source, products[1].pk, placements)
        assert sum(cache.has_key(key) for key in alice_keys) == 3  # generation + 2 lists
        assert sum(cache.has_key(key) for key in item_keys) == 3  # candidates + 2 rows

        privacy.forget_shopper(user=alice)

        assert not any(cache.has_key(key) for key in alice_keys + item_keys)
        assert cache.has_key(cachekeys.generation(user=bob))
    serving.active_model.reset()
