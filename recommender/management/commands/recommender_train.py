"""Train a new model version now (in this process, with a progress bar) or queue one."""

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from recommender import tasks, training
from recommender.ml.nets import MODEL_NAMES
from recommender.models import ModelVersion


class Command(BaseCommand):
    help = "Train a recommender model on the stored events; promote it if it beats the active one."

    def add_arguments(self, parser):
        parser.add_argument(
            "--queue", action="store_true", help="Send the run to the Celery worker instead."
        )
        parser.add_argument("--model", help=f"Model to train ({', '.join(MODEL_NAMES)}).")
        parser.add_argument("--max-seconds", type=float, help="Training time budget.")
        parser.add_argument("--epochs", type=int, help="Most epochs to train.")
        parser.add_argument(
            "--if-no-active", action="store_true", help="Do nothing if a version is active."
        )

    def handle(self, *args, queue, model, max_seconds, epochs, if_no_active, verbosity, **options):
        if if_no_active and ModelVersion.objects.active() is not None:
            self.stdout.write("A model version is already active; nothing to do.")
            return
        config = {}
        if model:
            config["MODEL"] = model
        overrides = {
            k: v for k, v in (("max_seconds", max_seconds), ("epochs", epochs)) if v is not None
        }
        if overrides:
            config["TRAINING"] = {**training.recommender_settings.TRAINING, **overrides}
        try:
            start = tasks.queue_training if queue else training.request_training
            version = start(ModelVersion.Trigger.COMMAND, config=config)
        except training.TrainingError as exc:
            raise CommandError(str(exc)) from exc
        if queue:
            self.stdout.write(self.style.SUCCESS(f"Queued training v{version.pk}."))
            return
        with ProgressBar(disable=verbosity == 0) as bar:
            try:
                version = training.run_training(version.pk, echo=bar.update)
            except Exception as exc:
                raise CommandError(f"Training v{version.pk} failed: {exc}") from exc
        self._report(version)

    def _report(self, version):
        valid = version.metrics.get("valid", {})
        self.stdout.write(
            f"v{version.pk} {version.model_name}: validation NDCG@10 {valid.get('ndcg@10', 0):.4f}, "
            f"HR@10 {valid.get('hr@10', 0):.4f}, coverage@10 {valid.get('coverage@10') or 0:.3f}"
        )
        for name, result in version.metrics.get("baselines", {}).items():
            # The run's other candidates: the baselines, or the trained model a baseline beat.
            kind = "baseline" if name in ("popularity", "itemknn") else "trained"
            self.stdout.write(
                f"  {kind} {name}: validation NDCG@10 {result['valid']['ndcg@10']:.4f}"
            )
        style = self.style.SUCCESS if version.is_active else self.style.WARNING
        self.stdout.write(style(version.decision))


class ProgressBar:
    """A tqdm bar driven by training's progress callbacks (stage, epoch, loss, NDCG)."""

    def __init__(self, disable=False):
        self.bar = tqdm(total=1, unit="epoch", disable=disable, dynamic_ncols=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()

    def update(self, info):
        if info.get("epochs"):
            self.bar.total = info["epochs"]
        if info.get("epoch"):
            self.bar.n = info["epoch"]
        shown = {"stage": info.get("stage")}
        if info.get("loss") is not None:
            shown["loss"] = f"{info['loss']:.3f}"
        if info.get("val_ndcg10") is not None:
            shown["val_ndcg@10"] = f"{info['val_ndcg10']:.4f}"
        self.bar.set_postfix(shown, refresh=False)
        self.bar.refresh()
