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
        "events of the last 24 hours. Exits with status 1 when the broker cannot be reached, "
        "no worker consumes the training queue (a run would never start) or recommender tasks "
        "wait in a queue no worker consumes (e.g. the stale-run sweeper), so it can serve as a "
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
        """Check the broker, every queue a recommender task goes to, and who consumes it; never hangs."""
        from celery import current_app

        training_queue = recommender_settings.TRAINING_QUEUE
        queues = _recommender_queues(current_app)
        try:
            with current_app.connection_for_write(connect_timeout=timeout) as connection:
                connection.ensure_connection(max_retries=1, timeout=timeout)
                waiting = {name: _waiting(connection, name) for name in queues}
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
        if replies:
            self.stdout.write(f"Workers answering: {len(replies)}.")
        problems = []
        for name, tasks in queues.items():
            consumers = sorted(
                worker
                for worker, consumed in replies.items()
                if any(q.get("name") == name for q in consumed or [])
            )
            count = "?" if waiting[name] is None else waiting[name]
            self.stdout.write(
                f"Queue {name!r} ({', '.join(tasks)}): {count} waiting; "
                f"consumed by {', '.join(consumers) or 'no worker'}."
            )
            if consumers:
                continue
            if name == training_queue:
                problems.append(
                    f"No worker consumes the training queue {name!r}: training runs would wait forever."
                )
            elif waiting[name]:
                problems.append(
                    f"{waiting[name]} task(s) wait in queue {name!r}, which no worker consumes "
                    f"({', '.join(tasks)} would never run): route every recommender task to "
                    f"{training_queue!r} or run a worker for {name!r}."
                )
        for problem in problems:
            self.stdout.write(self.style.ERROR(problem))
        if problems:
            return " ".join(problems)
        self.stdout.write(self.style.SUCCESS("Queue: healthy."))
        return None


def _recommender_queues(app):
    """{queue name: [recommender tasks sent there]}, as beat's entries and the app's routes send them."""
    from recommender import tasks  # noqa: F401 - registers the tasks with the app
    from recommender.schedule import periodic_tasks

    sent = {recommender_settings.TRAINING_QUEUE: ["recommender.train"]}  # request_training
    beat = {
        entry["task"]: entry.get("options", {}).get("queue") for entry in periodic_tasks().values()
    }
    for name in sorted(n for n in app.tasks if n.startswith("recommender.")):
        routed = app.amqp.router.route({}, name, (), {}).get("queue")
        for queue in {beat.get(name), getattr(routed, "name", routed)} - {None}:
            sent.setdefault(queue, [])
            if name not in sent[queue]:
                sent[queue].append(name)
    return sent


def _waiting(connection, queue):
    """Messages waiting in ``queue``: 0 for a queue the broker does not have, None if unknown."""
    from kombu.exceptions import ChannelError

    try:
        return connection.default_channel.queue_declare(queue=queue, passive=True).message_count
    except ChannelError:
        return 0
    except Exception:  # noqa: BLE001 - a transport that cannot count
        return None


def _when(moment):
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M") if moment else "—"


def _num(value):
    return "—" if value is None else f"{value:.4f}"
