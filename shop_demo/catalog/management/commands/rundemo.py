"""Serve the demo shop with a Celery worker and beat beside it, on the embedded broker."""

import subprocess
import sys

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Run the demo shop (runserver, serving its static files with DEBUG off) plus a Celery "
        "worker with embedded beat."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", default="8000")

    def handle(self, *args, host, port, **options):
        for folder in (
            "celery-broker",
            "celery-broker/processed",
            "celery-broker/control",
            "media",
        ):
            (settings.VAR_DIR / folder).mkdir(parents=True, exist_ok=True)
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "shop_demo",
                "worker",
                "--beat",
                "--loglevel",
                "INFO",
                "--concurrency",
                "1",
                "--queues",
                "celery,recommender-training",
                "--schedule",
                str(settings.VAR_DIR / "celerybeat-schedule"),
            ],
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"\n  The demo shop runs at http://{host}:{port}/  (admin: /admin/, admin/admin)\n"
            )
        )
        try:
            # DEBUG stays off (no debug pages with settings and code to visitors), so the
            # development server is told to serve the static files itself.
            call_command("runserver", f"{host}:{port}", use_reloader=False, insecure_serving=True)
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
