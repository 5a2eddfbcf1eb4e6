"""Run inside the bookshop: migrate, record events through the API, open the admin.

Prints one JSON line of findings for the test to check.
"""

import json
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bookshop_settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402
from shelf.models import Book  # noqa: E402

import recommender  # noqa: E402
from recommender.models import Event  # noqa: E402

call_command("makemigrations", "shelf", verbosity=0)
call_command("migrate", verbosity=0)
call_command("check", fail_level="ERROR")
Book.objects.create(isbn="9780140449136", title="Crime and Punishment")

client = Client(enforce_csrf_checks=True)
client.get("/admin/login/")
token = client.cookies["csrftoken"].value
response = client.post(
    "/api/recommender/events/",
    json.dumps(
        {
            "events": [
                {"kind": "view", "item": "9780140449136"},
                {"kind": "purchase", "item": "9780140449136", "value": 1},
            ]
        }
    ),
    content_type="application/json",
    HTTP_X_CSRFTOKEN=token,
)
bad = client.post(
    "/api/recommender/events/",
    json.dumps({"kind": "view", "item": "nope"}),
    content_type="application/json",
    HTTP_X_CSRFTOKEN=token,
)

admin = get_user_model().objects.create_superuser("owner", "owner@example.com", "pw")
client.force_login(admin)
admin_index = client.get("/admin/").content.decode()
events_page = client.get("/admin/recommender/event/")

print(
    json.dumps(
        {
            "recommender_file": recommender.__file__,
            "api_status": response.status_code,
            "api_body": response.json(),
            "bad_status": bad.status_code,
            "stored": list(Event.objects.order_by("kind").values_list("kind", "item_id")),
            "admin_lists_recommender": "Recommender" in admin_index
            and "Model versions" in admin_index,
            "events_page": events_page.status_code,
        }
    )
)
