"""Run a whole store's life with a UUID- or slug-keyed item model; print one JSON line.

Events over the API and ``record_many``, training, every serving path (API and template
tags), the admin pages, export and re-import, forgetting a shopper. Each step is checked
here; a failed check or an exception is recorded under the step's name and the scenario
goes on, so one run reports every broken path. ``tests/test_item_keys.py`` runs it.
"""

import csv
import json
import os
import re
import tempfile
import time
import traceback
import uuid
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "keyed_settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402
from django.utils import timezone  # noqa: E402

from recommender import events, training  # noqa: E402
from recommender.conf import get_item_model  # noqa: E402
from recommender.models import Event, ModelVersion, Recommendation  # noqa: E402

started = time.monotonic()
failures, passed, timings = {}, [], {}


@contextmanager
def step(name):
    began = time.monotonic()
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - every failure is reported, the run goes on
        frames = [
            line
            for line in traceback.format_exception(exc)
            if not any(noise in line for noise in ("site-packages", ".pyx", "/lib/python3"))
        ]
        detail = "".join(frames[-8:])
        failures[name] = f"{type(exc).__name__}: {exc}"[:300] + "\n" + detail[-1500:]
    else:
        passed.append(name)
    timings[name] = round(time.monotonic() - began, 1)


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def ids_of(response):
    check(response.status_code == 200, f"HTTP {response.status_code}: {response.content[:300]!r}")
    return [entry["id"] for entry in response.json()["items"]]


def upper_if_uuid(pk):
    """A UUID key in capitals (clients may send them so); other keys as they are."""
    return str(pk).upper() if isinstance(pk, uuid.UUID) else str(pk)


def make_catalogue(Item):
    """30 items on two shelves, the last out of stock; slugs are partly all digits."""
    items = []
    for i in range(30):
        fields = {"name": f"Item {i}", "shelf": "ab"[i % 2], "in_stock": i != 29}
        if Item._meta.pk.name == "slug":
            fields["slug"] = f"{i:03d}" if i % 2 else f"tea-{i}"
        items.append(Item.objects.create(**fields))
    return items


def make_history(items, users):
    """Shoppers walk the catalogue in order (learnable); only three buy: items 0 and 1."""
    now = timezone.now()
    for s in range(60):
        start, end_day = (s * 7) % 29, (s % 12) + 0.5
        batch = [
            {
                # Half the shoppers send instances, half the keys as text.
                "item": items[(start + step) % 29] if s % 2 else str(items[(start + step) % 29].pk),
                "kind": "click" if step % 4 == 3 else "view",
                "occurred_at": now - timedelta(days=end_day + 7 - step),
            }
            for step in range(8)
        ]
        events.record_many(batch, session_key=f"walker{s:03d}")
    for shopper in [{"user": users[0]}, {"user": users[1]}, {"session_key": "pair-anon"}]:
        events.record_many(
            [
                {"item": items[0], "kind": "purchase", "occurred_at": now - timedelta(days=2)},
                {"item": items[1].pk, "kind": "purchase", "occurred_at": now - timedelta(days=1)},
            ],
            **shopper,
        )


def main():
    Item = get_item_model()
    User = get_user_model()
    findings = {"database": connection.vendor, "pk_field": type(Item._meta.pk).__name__}

    with step("check"):
        call_command("check", fail_level="ERROR")

    items = make_catalogue(Item)
    alice = User.objects.create_user("alice", password="pw")
    bob = User.objects.create_user("bob", password="pw")
    admin_user = User.objects.create_superuser("owner", "owner@example.com", "pw")
    keys = {str(item.pk) for item in items}

    with step("record_many"):
        make_history(items, [alice, bob])
        check(Event.objects.count() == 60 * 8 + 6, f"{Event.objects.count()} events stored")
        duplicate = Event.objects.filter(item=items[0]).first()
        again = events.record(
            "view",
            items[0].pk,
            user=duplicate.user,
            session_key=duplicate.session_key,
            event_id=str(duplicate.event_id),
        )
        check(again.duplicates == 1, f"a repeated event_id was stored again: {again}")

    shopper = Client(enforce_csrf_checks=True)
    shopper.force_login(alice)
    anonymous = Client(enforce_csrf_checks=True)
    owner = Client()
    owner.force_login(admin_user)

    with step("api_events"):
        for client in (shopper, anonymous):
            client.get("/admin/login/")
            token = client.cookies["csrftoken"].value
            sent = [
                {"kind": "view", "item": upper_if_uuid(items[4].pk)},
                {"kind": "view", "item": str(items[5].pk)},
                {"kind": "add_to_cart", "item": str(items[6].pk)},
            ]
            response = client.post(
                "/api/recommender/events/",
                json.dumps({"events": sent}),
                content_type="application/json",
                HTTP_X_CSRFTOKEN=token,
            )
            check(response.status_code == 201, f"{response.status_code} {response.content!r}")
            check(response.json() == {"stored": 3, "duplicates": 0}, response.json())
        bad = shopper.post(
            "/api/recommender/events/",
            json.dumps({"kind": "view", "item": "no-such-item"}),
            content_type="application/json",
            HTTP_X_CSRFTOKEN=shopper.cookies["csrftoken"].value,
        )
        check(bad.status_code == 400, f"an unknown item answered {bad.status_code}")

    with step("popular_without_model"):
        popular = ids_of(anonymous.get("/api/recommender/popular/?limit=5"))
        check(len(popular) == 5 and set(popular) <= keys, popular)
        rec = Recommendation.objects.order_by("-created_at").first()
        check([str(pk) for pk in rec.items][:5] == popular, (rec.items, popular))

    with step("train"):
        version = training.request_training()
        version = training.run_training(version.pk)
        check(version.status == "ready", f"{version.status}: {version.error}")
        check(version.is_active, version.decision)
        findings["train_ndcg"] = version.metric("ndcg@10")

    version = ModelVersion.objects.order_by("-pk").first()

    with step("recommendations"):
        first = shopper.get("/api/recommender/recommendations/?limit=5")
        mine = ids_of(first)
        check(len(mine) == 5 and set(mine) <= keys, mine)
        check(first.json()["source"] == "model", first.json())
        check(str(items[29].pk) not in mine, "an out-of-stock item was recommended")
        check(not {str(items[0].pk), str(items[1].pk)} & set(mine), "a bought item came back")
        stored = Recommendation.objects.get(pk=first.json()["recommendation_id"])
        check(
            set(mine) <= {str(pk) for pk in stored.items}, (stored.items, mine)
        )  # the ranked candidates
        check(ids_of(shopper.get("/api/recommender/recommendations/?limit=5")) == mine, "cache")
        shelf_a = ids_of(shopper.get("/api/recommender/recommendations/?limit=5&category=a"))
        on_a = {str(item.pk) for item in items if item.shelf == "a"}
        check(shelf_a and set(shelf_a) <= on_a, f"category a gave {shelf_a}")
        guest = ids_of(anonymous.get("/api/recommender/recommendations/?limit=5"))
        check(len(guest) == 5 and str(items[4].pk) not in guest, guest)
        staff = owner.get(f"/api/recommender/users/{alice.pk}/recommendations/?limit=5")
        check(ids_of(staff) == mine, "staff see another list than the shopper")

    with step("similar"):
        alike = ids_of(anonymous.get(f"/api/recommender/items/{items[3].pk}/similar/?limit=5"))
        check(len(alike) == 5 and set(alike) <= keys - {str(items[3].pk)}, alike)

    with step("bought_together"):
        url = f"/api/recommender/items/{items[0].pk}/bought-together/"
        check(ids_of(anonymous.get(url)) == [str(items[1].pk)], "items 0 and 1 go together")

    with step("popular"):
        for window in ("popular", "trending"):
            top = ids_of(anonymous.get(f"/api/recommender/popular/?limit=5&window={window}"))
            check(top and set(top) <= keys, top)
        check(ids_of(anonymous.get("/api/recommender/popular/?category=b")), "no popular on b")

    with step("template_tags"):
        page = shopper.get(f"/carousels/{upper_if_uuid(items[0].pk)}/").content.decode()
        for section in ("mine", "alike", "alike_by_key", "together", "top"):
            body = page.split(f"<!--{section}-->", 1)[1].split(f"<!--/{section}-->", 1)[0]
            shown = re.findall(r'data-rec-item="([^"]+)"', body)
            check(shown and set(shown) <= keys, f"{section}: {shown}")

    with step("admin"):
        for url in (
            "/admin/recommender/modelversion/",
            f"/admin/recommender/modelversion/{version.pk}/change/",
            "/admin/recommender/event/",
            "/admin/recommender/event/dashboard/",
        ):
            response = owner.get(url)
            check(response.status_code == 200, f"{url}: {response.status_code}")
        dashboard = owner.get("/admin/recommender/event/dashboard/").content.decode()
        check("Item 0" in dashboard and "Item 1" in dashboard, "top items are not named")

    with step("evaluate"):
        call_command("recommender_evaluate", verbosity=0, stdout=open(os.devnull, "w"))  # noqa: SIM115

    with step("export_import"):
        folder = Path(tempfile.mkdtemp(prefix="keyed-export-"))
        call_command(
            "recommender_export_events",
            str(folder / "all.jsonl"),
            "--format",
            "jsonl",
            verbosity=0,
            stdout=open(os.devnull, "w"),  # noqa: SIM115
        )
        exported = [json.loads(line) for line in (folder / "all.jsonl").read_text().splitlines()]
        check({row["item"] for row in exported} <= keys, "exported items are not the keys")
        call_command(
            "recommender_export_events",
            str(folder / "all.csv"),
            "--with-user-ids",
            verbosity=0,
            stdout=open(os.devnull, "w"),  # noqa: SIM115
        )
        before = sorted(Event.objects.values_list("event_id", "item_id", "kind"))
        with open(folder / "all.csv", newline="") as handle:
            check(len(list(csv.DictReader(handle))) == len(before), "csv rows")
        Event.objects.all().delete()
        call_command(
            "recommender_import_events",
            str(folder / "all.csv"),
            verbosity=0,
            stdout=open(os.devnull, "w"),  # noqa: SIM115
        )
        after = sorted(Event.objects.values_list("event_id", "item_id", "kind"))
        check(after == before, f"{len(after)} events after the round trip, {len(before)} before")

    with step("forget"):
        warm = ids_of(anonymous.get(f"/api/recommender/items/{items[0].pk}/bought-together/"))
        check(warm == [str(items[1].pk)], warm)
        for name in ("alice", "bob"):
            call_command("recommender_forget_user", name, stdout=open(os.devnull, "w"))  # noqa: SIM115
        check(not Event.objects.filter(user__in=[alice, bob]).exists(), "events remain")
        # One buyer of the pair is left: the cached list that showed it must be gone.
        cold = ids_of(anonymous.get(f"/api/recommender/items/{items[0].pk}/bought-together/"))
        check(cold == [], f"a forgotten shopper's purchases still show: {cold}")
        check(ids_of(shopper.get("/api/recommender/recommendations/?limit=5")), "no list")

    findings.update(
        passed=passed,
        failures=failures,
        timings=timings,
        seconds=round(time.monotonic() - started, 1),
    )
    return findings


if __name__ == "__main__":
    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        result = main()
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
    print(json.dumps(result))
