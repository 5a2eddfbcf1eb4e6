"""Measure a model version (default: the active one) on the store's latest held-out events."""

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from recommender import training
from recommender.artifacts import ArtifactRefused
from recommender.ml.artifact import ArtifactError
from recommender.models import ModelVersion

STAGES = ["export", "clean", "evaluate"]


class Command(BaseCommand):
    help = "Evaluate a model version on the last HOLDOUT_DAYS of events, beside popularity and item-kNN."

    def add_arguments(self, parser):
        parser.add_argument(
            "--model-version",
            type=int,
            dest="model_version",
            help="Version id (default: the active version).",
        )

    def handle(self, *args, model_version, verbosity, **options):
        version = model_version
        chosen = (
            ModelVersion.objects.filter(pk=version).first()
            if version
            else ModelVersion.objects.active()
        )
        if chosen is None:
            raise CommandError(
                f"No model version {version}."
                if version
                else "No version is active; train one first."
            )
        if chosen.status != ModelVersion.Status.READY or not chosen.artifact:
            raise CommandError(
                f"v{chosen.pk} is {chosen.status}: only a trained (ready) version can be evaluated."
            )
        bar = tqdm(total=len(STAGES), unit="stage", disable=verbosity == 0)

        def on_stage(name, **info):
            bar.set_postfix_str(name)
            bar.update(1)

        on_stage("export")
        try:
            results = training.evaluate_version(chosen, on_stage=on_stage)
        except (training.TrainingError, ArtifactRefused, ArtifactError) as exc:
            raise CommandError(str(exc)) from exc
        finally:
            bar.close()
        rows = [(f"v{chosen.pk} {chosen.model_name}", results["valid"], results["test"])]
        rows += [(name, r["valid"], r["test"]) for name, r in results["baselines"].items()]
        self.stdout.write(
            f"{'model':<22} {'val HR@10':>10} {'val NDCG@10':>12} {'test HR@10':>11} {'test NDCG@10':>13} {'coverage@10':>12}"
        )
        for name, valid, test in rows:
            self.stdout.write(
                f"{name:<22} {valid['hr@10']:>10.4f} {valid['ndcg@10']:>12.4f} {test['hr@10']:>11.4f} "
                f"{test['ndcg@10']:>13.4f} {test.get('coverage@10') or 0:>12.3f}"
            )
