"""Management commands for event data: import, export, forget a shopper, status."""

import csv
import io
import json
import os
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import caches
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone

from recommender import cachekeys, events, pseudonyms, training
from recommender.conf import recommender_settings
from recommender.models import Event, ModelVersion

pytestmark = pytest.mark.django_db


def run(*args, **kwargs):
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO(), verbosity=0, **kwargs)
    return out.getvalue()


def run_failing(*args):
    out = io.StringIO()
    with pytest.raises(CommandError) as failure:
        call_command(*args, stdout=out, stderr=io.StringIO(), verbosity=0)
    return out.getvalue(), str(failure.value)


def write(tmp_path, text, name="events.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def iso(minutes_ago):
    return (timezone.now() - timedelta(minutes=minutes_ago)).isoformat()


# --------------------------------------------------------------------------- import


def test_import_csv_identifies_users_sessions_and_both_time_formats(tmp_path, catalog):
    ann = get_user_model().objects.create_user("ann")
    epoch = int((timezone.now() - timedelta(hours=2)).timestamp())
    path = write(
        tmp_path,
        "\n".join(
            [
                "user,item,kind,timestamp,value",
                f"ann,{catalog[0].pk},view,{iso(30)},",
                f"id:{ann.pk},{catalog[1].pk},purchase,{epoch},2",
                f"session:browser-7,{catalog[2].pk},add_to_cart,{iso(5).replace('+00:00', 'Z')},",
            ]
        )
        + "\n",
    )
    out = run("recommender_import_events", path)
    assert "Stored 3 event(s); 0 duplicate(s) skipped; 0 rejected." in out
    purchase = Event.objects.get(kind="purchase")
    assert purchase.user == ann and purchase.value == 2.0
    assert purchase.occurred_at == datetime.fromtimestamp(epoch, tz=UTC)
    assert Event.objects.get(kind="add_to_cart").session_key == "browser-7"
    assert Event.objects.filter(user=ann).count() == 2

    again = run("recommender_import_events", path)
    assert "Stored 0 event(s); 3 duplicate(s) skipped" in again and Event.objects.count() == 3


def test_a_bad_row_rejects_its_batch_and_is_reported_by_line(tmp_path, catalog):
    rows = ["user,item,kind,timestamp"]
    rows += [f"session:aaa,{catalog[0].pk},view,{iso(50 - i)}" for i in range(3)]  # lines 2-4
    rows += [f"session:bbb,{catalog[1].pk},view,{iso(40)}"]  # line 5
    rows += [f"session:aaa,{catalog[0].pk},viewed,{iso(10)}"]  # line 6: bad kind
    rows += [f"session:ccc,{catalog[1].pk},view,not-a-time"]  # line 7: bad time
    rows += [f"nobody,{catalog[1].pk},view,{iso(3)}"]  # line 8: no such user
    rows += [f"session:ddd,{catalog[1].pk},view,2024-05-01T12:00:00"]  # line 9: no zone
    out, error = run_failing("recommender_import_events", write(tmp_path, "\n".join(rows) + "\n"))
    assert "line 6: kind: unknown kind 'viewed'" in out
    assert "line 7: timestamp: 'not-a-time' is neither ISO 8601" in out
    assert "line 8: user: no user 'nobody'" in out
    assert "line 9: timestamp:" in out and "no time zone" in out
    assert "4 invalid, 3 in their batches" in out and "7 row(s) rejected" in error
    # Nothing of aaa's batch is stored; bbb's separate batch is.
    assert list(Event.objects.values_list("session_key", flat=True)) == ["bbb"]


def test_batches_hold_at_most_max_batch_size_events_of_one_shopper(tmp_path, catalog):
    rows = ["user,item,kind,timestamp"]
    rows += [
        f"session:aaa,{catalog[0].pk},{'oops' if i == 3 else 'view'},{iso(60 - i)}"
        for i in range(5)
    ]
    with override_settings(RECOMMENDER={**settings.RECOMMENDER, "MAX_BATCH_SIZE": 2}):
        out, _ = run_failing("recommender_import_events", write(tmp_path, "\n".join(rows) + "\n"))
    # Batches: lines 2-3, 4-5 (line 5 is bad), 6: only the bad line's batch is lost.
    assert "Stored 3 event(s)" in out and "line 5: kind" in out
    assert Event.objects.count() == 3


def test_bad_files_fail_before_anything_is_written(tmp_path, catalog):
    _, error = run_failing(
        "recommender_import_events", write(tmp_path, "who,item,kind,timestamp,colour\n")
    )
    assert "missing: user" in error and "unknown: who, colour" in error
    _, error = run_failing("recommender_import_events", str(tmp_path / "missing.csv"))
    assert "Cannot read" in error
    _, error = run_failing("recommender_import_events", write(tmp_path, ""))
    assert "empty" in error
    assert Event.objects.count() == 0


def test_dry_run_validates_without_storing(tmp_path, catalog):
    path = write(tmp_path, f"user,item,kind,timestamp\nsession:x,{catalog[0].pk},view,{iso(1)}\n")
    assert "Would store 1 event(s)" in run("recommender_import_events", path, "--dry-run")
    assert Event.objects.count() == 0
    bad = write(tmp_path, f"user,item,kind,timestamp\nsession:x,999999,view,{iso(1)}\n", "bad.csv")
    out, _ = run_failing("recommender_import_events", bad, "--dry-run")
    assert "line 2: item: unknown or unavailable item" in out


def test_start_skips_the_lines_before_it(tmp_path, catalog):
    rows = ["user,item,kind,timestamp"] + [
        f"session:s{i},{catalog[0].pk},view,{iso(10 - i)}" for i in range(4)
    ]
    out = run("recommender_import_events", write(tmp_path, "\n".join(rows) + "\n"), "--start", "4")
    assert "Stored 2 event(s)" in out and "2 line(s) before --start skipped" in out
    assert sorted(Event.objects.values_list("session_key", flat=True)) == ["s2", "s3"]


def test_import_stores_any_offset_python_accepts_as_utc(tmp_path, catalog):
    """PostgreSQL refuses offsets past ±15:59: the import died with a DataError traceback."""
    when = (timezone.now() - timedelta(hours=3)).replace(microsecond=0)
    rows = [
        f"session:s,{catalog[0].pk},view,{when.astimezone(timezone.get_fixed_timezone(16 * 60)).isoformat()}",
        f"session:s,{catalog[1].pk},view,{when.astimezone(timezone.get_fixed_timezone(-16 * 60)).isoformat()}",
        f"session:s,{catalog[2].pk},view,{when.astimezone(timezone.get_fixed_timezone(23 * 60 + 59)).isoformat()}",
    ]
    path = write(tmp_path, "user,item,kind,timestamp\n" + "\n".join(rows) + "\n")
    assert "Stored 3 event(s)" in run("recommender_import_events", path)
    assert set(Event.objects.values_list("occurred_at", flat=True)) == {when}


def test_import_names_the_lines_of_out_of_range_times(tmp_path, catalog):
    rows = [
        f"session:s,{catalog[0].pk},view,0001-01-01T00:00:00+01:00",
        f"session:t,{catalog[0].pk},view,1{'0' * 400}",
    ]
    path = write(tmp_path, "user,item,kind,timestamp\n" + "\n".join(rows) + "\n")
    out, error = run_failing("recommender_import_events", path)
    assert "line 2: timestamp: '0001-01-01T00:00:00+01:00' is out of range." in out
    assert "line 3: timestamp:" in out and "out of range" in out
    assert "2 row(s) rejected" in error and not Event.objects.exists()


def test_import_sequence_format(tmp_path, catalog):
    a, b, c = (str(p.pk) for p in catalog[:3])
    path = write(tmp_path, f"7 {a}\n7 {b}\n7 {c}\n9 {c}\n\n9 {a} extra\n", "beauty.txt")
    out, _ = run_failing("recommender_import_events", path, "--format", "sequence")
    assert "Stored 4 event(s)" in out and "line 6: expected 'user item'" in out
    seven = list(Event.objects.filter(session_key="import-7").order_by("occurred_at"))
    assert [e.item_id for e in seven] == [int(a), int(b), int(c)] and {e.kind for e in seven} == {
        "view"
    }
    assert seven[1].occurred_at - seven[0].occurred_at == timedelta(minutes=1)
    assert timezone.now() - seven[-1].occurred_at < timedelta(minutes=1)
    assert Event.objects.filter(session_key="import-9").count() == 1
    out, _ = run_failing("recommender_import_events", path, "--format", "sequence")
    assert "4 duplicate(s)" in out and Event.objects.count() == 4


# --------------------------------------------------------------------------- export


@pytest.fixture
def history(catalog):
    ann = get_user_model().objects.create_user("ann", email="ann@example.com", first_name="Ann")
    events.record("view", catalog[0], user=ann, session_key="ann-browser")
    events.record("purchase", catalog[1], user=ann, value=2)
    events.record("view", catalog[2], session_key="anon-key-1")
    old = timezone.now() - timedelta(days=20)
    events.record("view", catalog[3], session_key="anon-key-1", occurred_at=old)
    return ann


def test_export_csv_is_pseudonymous_by_default(tmp_path, history):
    path = tmp_path / "out.csv"
    assert "Exported 4 event(s) with pseudonymous shoppers" in run(
        "recommender_export_events", str(path)
    )
    text = path.read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["shopper", "item", "kind", "timestamp", "value"]
    for secret in ("ann", "anon-key-1", "ann-browser", "id:", "session:"):
        assert secret not in text
    assert {r["shopper"] for r in rows} == {
        pseudonyms.export_shopper(history.pk),
        pseudonyms.export_shopper(None, "anon-key-1"),
    }
    assert [r["kind"] for r in rows] == ["view", "view", "purchase", "view"]  # oldest first


def test_export_jsonl_since_and_with_user_ids(tmp_path, history):
    path = tmp_path / "out.jsonl"
    since = (timezone.localdate() - timedelta(days=2)).isoformat()
    run(
        "recommender_export_events",
        str(path),
        "--format",
        "jsonl",
        "--since",
        since,
        "--with-user-ids",
    )
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 3 and {line["user"] for line in lines} == {
        f"id:{history.pk}",
        "session:anon-key-1",
    }
    _, error = run_failing("recommender_export_events", str(path), "--since", "yesterday")
    assert "--since 'yesterday'" in error


@pytest.mark.parametrize(
    ("since", "reason"),
    [
        ("2026-02-30", "is not an ISO 8601 date or time"),
        ("2026-01-01T25:00:00Z", "is not an ISO 8601 date or time"),
        ("0001-01-01T00:00:00+01:00", "is out of range"),
    ],
)
def test_export_since_refuses_impossible_times_with_a_message(tmp_path, history, since, reason):
    _, error = run_failing("recommender_export_events", str(tmp_path / "out.csv"), "--since", since)
    assert reason in error


def test_export_since_takes_any_offset_python_accepts(tmp_path, history):
    """PostgreSQL refuses offsets past ±15:59: the export died with a DataError."""
    since = (timezone.now() - timedelta(days=30)).astimezone(timezone.get_fixed_timezone(16 * 60))
    path = tmp_path / "out.jsonl"
    run("recommender_export_events", str(path), "--format", "jsonl", "--since", since.isoformat())
    assert len(path.read_text().splitlines()) == Event.objects.count()


def test_an_identified_export_imports_back(tmp_path, history):
    path = tmp_path / "staff.csv"
    run("recommender_export_events", str(path), "--with-user-ids")
    fields = ["user_id", "item_id", "kind", "occurred_at", "value"]
    before = sorted(Event.objects.values_list(*fields), key=str)
    Event.objects.all().delete()
    assert "Stored 4 event(s)" in run("recommender_import_events", str(path))
    after = sorted(Event.objects.values_list(*fields), key=str)
    # A user's events come back as the user's (the session key they also carried is not kept).
    assert after == before
    assert "4 duplicate(s)" in run("recommender_import_events", str(path))


def test_export_to_stdout(history):
    out = run("recommender_export_events", "-", "--format", "jsonl")
    assert len(out.strip().splitlines()) == 4


# --------------------------------------------------------------------------- forget


def test_forget_user_deletes_events_and_cached_recommendations(history, catalog):
    cache = caches[recommender_settings.CACHE_ALIAS]
    keys = [
        cachekeys.generation(user=history),
        cachekeys.generation(session_key="ann-browser"),
    ]
    for key in keys:
        cache.set(key, "cached lists")
    other = cachekeys.generation(session_key="anon-key-1")
    cache.set(other, "cached lists")

    assert "Would delete 2 event(s)" in run("recommender_forget_user", "ann", "--dry-run")
    out = run("recommender_forget_user", "ann")
    assert "deleted 2 event(s) (1 purchase, 1 view)" in out and "1 session key(s)" in out
    assert not Event.objects.filter(user=history).exists()
    assert Event.objects.filter(session_key="anon-key-1").count() == 2
    assert all(cache.get(key) is None for key in keys) and cache.get(other) == "cached lists"

    # The next training export has nothing of the forgotten user.
    exported = {row[0] for row in training.export_interactions()}
    assert pseudonyms.export_shopper(history.pk) not in exported
    assert exported == {pseudonyms.export_shopper(None, "anon-key-1")}

    out = run("recommender_forget_user", "--session", "anon-key-1")
    assert "deleted 2 event(s)" in out and Event.objects.count() == 0


def test_forget_user_needs_exactly_one_existing_shopper(history):
    assert "exactly one" in run_failing("recommender_forget_user")[1]
    assert "exactly one" in run_failing("recommender_forget_user", "ann", "--session", "x")[1]
    assert "No user" in run_failing("recommender_forget_user", "--user-id", "999999")[1]
    assert Event.objects.count() == 4


# --------------------------------------------------------------------------- status


def test_status_reports_versions_and_events_without_the_queue(history):
    active = ModelVersion.objects.create(
        status="ready",
        model_name="cnn_dnn",
        metrics={"valid": {"hr@10": 0.2, "ndcg@10": 0.0912, "coverage@10": 0.4}},
    )
    active.activate()
    ModelVersion.objects.create(
        status="failed", error="TrainingError: Only 3 events\ntraceback", trigger="admin"
    )
    out = run("recommender_status", "--no-queue-check")
    assert f"Active version: v{active.pk} cnn_dnn" in out and "NDCG@10 0.0912" in out
    assert (
        "failed (admin)" in out
        and "error: TrainingError: Only 3 events" in out
        and "traceback" not in out
    )
    assert "Events, last 24 hours: 3 (1 purchase, 2 view)." in out


def test_status_fails_fast_when_the_broker_is_unreachable(db, monkeypatch):
    from celery import current_app

    monkeypatch.setitem(current_app.conf, "broker_url", "redis://127.0.0.1:9/0")
    monkeypatch.setitem(current_app.conf, "broker_write_url", "redis://127.0.0.1:9/0")
    started = timezone.now()
    out, error = run_failing("recommender_status", "--timeout", "0.5")
    assert "Broker: unreachable" in out and "unreachable" in error
    assert timezone.now() - started < timedelta(seconds=10)


@pytest.mark.redis
def test_status_fails_when_no_worker_consumes_the_training_queue(db):
    queue = f"recommender-status-test-{os.getpid()}"
    with override_settings(RECOMMENDER={**settings.RECOMMENDER, "TRAINING_QUEUE": queue}):
        out, error = run_failing("recommender_status", "--timeout", "0.5")
    assert (
        "Broker: reachable." in out and f"No worker consumes the training queue '{queue}'" in error
    )
