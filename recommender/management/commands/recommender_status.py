"""What the recommender is doing: active version, last training, queue health, events."""

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from recommender import reports
from recommender.conf import recommender_settings
from recommender.models import ModelVersion


class Command(BaseCommand):
    help = (
        "Print the active model version, the last training run, Celery queue health and the "
        "events of the last 24 hours. Exits with status 1 when the broker cannot be reached or "
        "no worker consumes the training queue (a run would never start), so it can serve as a "
        "health check; --no-queue-check skips the broker. Every network wait is bounded by --timeout."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--timeout", type=float, default=2.0, help="Seconds to wait for the broker and workers."
        )
        parser.add_argument(
            "--no-queue-check", action="store_true", help="Do not contact the broker."
        )

    def handle(self, *args, timeout, no_queue_check, **options):
        self._active()
        self._last_training()
        self._events()
        if no_queue_check:
            return
        problem = self._queue(timeout)
        if problem:
            raise CommandError(problem)

    def _active(self):
        active = ModelVersion.objects.active()
        if active is None:
            self.stdout.write(
                self.style.WARNING("Active version: none (shoppers get popular items).")
            )
            return
        valid = active.metrics.get("valid") or {}
        self.stdout.write(
            f"Active version: v{active.pk} {active.model_name}, trained {_when(active.finished_at)}, "
            f"active since {_when(active.activated_at)}; validation HR@10 {_num(valid.get('hr@10'))}, "
            f"NDCG@10 {_num(valid.get('ndcg@10'))}, coverage@10 {_num(valid.get('coverage@10'))}."
        )

    def _last_training(self):
        last = ModelVersion.objects.order_by("-created_at", "-pk").first()
        if last is None:
            self.stdout.write("Last training: none yet.")
            return
        line = f"Last training: v{last.pk} {last.status} ({last.trigger}), created {_when(last.created_at)}"
        if last.duration is not None:
            line += f", took {int(last.duration.total_seconds())}s"
        if (
            last.status in (ModelVersion.Status.QUEUED, ModelVersion.Status.RUNNING)
            and last.progress
        ):
            progress = last.progress
            line += f", stage {progress.get('stage')}"
            if progress.get("epochs"):
                line += f" epoch {progress.get('epoch', 0)}/{progress['epochs']}"
        style = (
            self.style.ERROR if last.status == ModelVersion.Status.FAILED else (lambda text: text)
        )
        self.stdout.write(style(line + "."))
        if last.error:
            self.stdout.write(style(f"  error: {last.error.splitlines()[0][:300]}"))

    def _events(self):
        counts = reports.event_counts(timezone.now() - timedelta(hours=24))
        detail = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) or "none"
        self.stdout.write(f"Events, last 24 hours: {sum(counts.values())} ({detail}).")

    def _queue(self, timeout):
        """Check the broker, then ask workers which queues they consume; never hangs."""
        from celery import current_app

        queue = recommender_settings.TRAINING_QUEUE
        try:
            with current_app.connection_for_write(connect_timeout=timeout) as connection:
                connection.ensure_connection(max_retries=1, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - any failure to connect is the answer
            message = f"Broker: unreachable ({type(exc).__name__}: {exc})."
            self.stdout.write(self.style.ERROR(message))
            return message
        self.stdout.write("Broker: reachable.")
        try:
            replies = current_app.control.inspect(timeout=timeout).active_queues() or {}
        except Exception as exc:  # noqa: BLE001
            replies = {}
            self.stdout.write(
                self.style.WARNING(f"Workers: no answer ({type(exc).__name__}: {exc}).")
            )
        consumers = sorted(
            worker
            for worker, queues in replies.items()
            if any(q.get("name") == queue for q in queues or [])
        )
        if replies:
            self.stdout.write(
                f"Workers answering: {len(replies)}; consuming {queue!r}: {', '.join(consumers) or 'none'}."
            )
        if not consumers:
            message = f"No worker consumes the training queue {queue!r}: training runs would wait forever."
            self.stdout.write(self.style.ERROR(message))
            return message
        self.stdout.write(self.style.SUCCESS("Queue: healthy."))
        return None


def _when(moment):
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M") if moment else "—"


def _num(value):
    return "—" if value is None else f"{value:.4f}"
