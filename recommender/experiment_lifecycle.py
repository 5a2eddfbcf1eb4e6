"""Starting, stopping and promoting experiments: the rules, in one place.

The admin's buttons call these and nothing else. Each decides under row locks and changes
the experiment in one statement, so two people acting at once cannot both succeed where
one of them must fail. Every refusal is a ``ValidationError`` whose messages say why, in
words the admin shows as they are.
"""

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from . import artifacts
from .experiment_results import METRICS
from .models import Arm, Experiment, ModelVersion
from .serving import accepted_placements


def start(experiment):
    """Start serving the experiment's arms; raises ValidationError with every reason it cannot.

    Every experiment row is locked first, in one order: two admins starting experiments
    that share a placement queue here, and the second then sees the first running and is
    refused. (SQLite has no row locks; it serialises writers by itself.)
    """
    with transaction.atomic():
        list(Experiment.objects.select_for_update().order_by("pk").only("pk"))
        current = Experiment.objects.get(pk=experiment.pk)
        problems = start_problems(current)
        if problems:
            raise ValidationError(problems)
        Experiment.objects.filter(pk=current.pk).update(
            status=Experiment.Status.RUNNING, started_at=timezone.now()
        )
    experiment.refresh_from_db()
    return experiment


def start_problems(experiment):
    """Why ``experiment`` cannot start now, in words (an empty list: it can)."""
    if experiment.status != Experiment.Status.DRAFT:
        return [f"Only a draft experiment can start; {experiment.name!r} is {experiment.status}."]
    problems = []
    placements = experiment.placements
    if not isinstance(placements, list) or not all(isinstance(p, str) for p in placements):
        problems.append("Placements must be a list of placement names (empty: all).")
        placements = []
    accepted = accepted_placements()
    unknown = sorted(set(placements) - accepted)
    if unknown:
        names = ", ".join(repr(name) for name in sorted(accepted - {""}))
        problems.append(
            f"Unknown placement(s) {', '.join(map(repr, unknown))}: use {names} "
            '(RECOMMENDER["PLACEMENT_NAMES"] or "PLACEMENTS").'
        )
    if experiment.primary_metric not in METRICS:
        problems.append(
            f"Unknown primary metric {experiment.primary_metric!r}: use one of "
            f"{', '.join(METRICS)}."
        )
    if experiment.attribution_hours < 1:
        problems.append("The attribution window must be at least one hour.")
    problems += _arm_problems(experiment)
    for other in Experiment.objects.running().exclude(pk=experiment.pk):
        if other.covers(placements):
            shared = (
                "every placement"
                if not other.placements or not placements
                else ", ".join(sorted(set(other.placements) & set(placements)))
            )
            problems.append(
                f"{other.name!r} is running in {shared}: at most one experiment runs per "
                "placement. Stop it first, or choose other placements."
            )
    return problems


def _arm_problems(experiment):
    arms = list(experiment.arms.select_related("version"))
    problems = []
    if len(arms) < 2:
        problems.append(
            f"An experiment needs at least two arms; {experiment.name!r} has {len(arms)}."
        )
    seen, popularity = set(), 0
    for arm in arms:
        if arm.ranker == Arm.Ranker.POPULARITY:
            popularity += 1
            continue
        version = arm.version
        if version.status != ModelVersion.Status.READY:
            problems.append(
                f"Arm {arm.name}: v{version.pk} is {version.status}; only a ready "
                "(trained and evaluated) version can serve."
            )
        elif not version.artifact:
            problems.append(f"Arm {arm.name}: v{version.pk} has no model artifact to serve.")
        elif arm.ranker == Arm.Ranker.ITEMKNN:
            problems += _item_knn_problems(arm)
        # A version arm and an item-kNN arm on one version differ: the model against its kNN.
        if (version.pk, arm.ranker) in seen:
            what = "item-kNN of " if arm.ranker == Arm.Ranker.ITEMKNN else ""
            problems.append(
                f"Arm {arm.name}: {what}v{version.pk} is already another arm; arms must differ."
            )
        seen.add((version.pk, arm.ranker))
    if popularity > 1:
        problems.append("Only one arm can serve the popular items; arms must differ.")
    return problems


def _item_knn_problems(arm):
    """Why ``arm`` cannot serve its version's item-kNN lists: none in its artifact, or no
    artifact to read. The artifact's own header says (its tensors' shapes, no data
    loaded): what training recorded elsewhere may predate the lists or omit them."""
    from .ml.artifact import ArtifactError
    from .ml.hybrid import knn_list_length

    version = arm.version
    try:
        header = artifacts.read_header(version.artifact)
    except (ArtifactError, OSError) as exc:
        return [f"Arm {arm.name}: v{version.pk}'s model artifact cannot be read ({exc})."]
    if knn_list_length(header["shapes"]):
        return []
    return [
        f"Arm {arm.name}: v{version.pk} ({header['model_name']}) has no item-kNN lists to "
        "serve: validation gave item-kNN no part in its ranking or similar items. Choose "
        "a version whose page shows item-kNN in its blend, or one that serves item-kNN."
    ]


def arm_promotion_problem(arm):
    """Why ``arm`` itself cannot serve everyone ("" if it can): an item-kNN arm on a hybrid
    serves lists that are no version of their own, so there is nothing to activate."""
    if arm.ranker == Arm.Ranker.ITEMKNN and arm.version.model_name != "itemknn":
        return (
            f"it serves the item-kNN lists inside v{arm.version_id}, which no version serves "
            'alone. Train one with MODEL "itemknn" (recommender_train --model itemknn) and '
            "activate it from its page."
        )
    return ""


def stop(experiment, decision=""):
    """Stop the experiment: every shopper is served by the active version again.

    ``decision`` says why, in words (kept on the row). Raises ValidationError unless the
    experiment is running.
    """
    with transaction.atomic():
        current = Experiment.objects.select_for_update().get(pk=experiment.pk)
        if current.status != Experiment.Status.RUNNING:
            raise ValidationError(
                f"Only a running experiment can stop; {current.name!r} is {current.status}."
            )
        Experiment.objects.filter(pk=current.pk).update(
            status=Experiment.Status.STOPPED,
            stopped_at=timezone.now(),
            decision=decision or "Stopped; everyone is served by the active version again.",
        )
    experiment.refresh_from_db()
    return experiment


def promote(experiment, arm, decision=""):
    """Make ``arm`` what serves everyone, and stop the experiment: one action, one transaction.

    A version arm's version becomes the active one (``ModelVersion.activate``), and so does
    an item-kNN arm's when that version serves item-kNN itself (the same lists, the same
    score); the kNN lists inside a hybrid are no version of their own and cannot. The popular
    items' arm wins by switching every version off: with no active version every shopper
    gets the popular items, until a version is activated again (from its page, or by the
    next training run, which is promoted when none is active). An experiment promotes once.
    """
    with transaction.atomic():
        current = Experiment.objects.select_for_update().get(pk=experiment.pk)
        if arm.experiment_id != current.pk:
            raise ValidationError(f"Arm {arm.name} is not an arm of {current.name!r}.")
        if current.status == Experiment.Status.DRAFT:
            raise ValidationError(f"{current.name!r} has not started: there is nothing to promote.")
        if current.promoted_arm_id is not None:
            raise ValidationError(
                f"{current.name!r} has already promoted arm {current.promoted_arm}."
            )
        problem = arm_promotion_problem(arm)
        if problem:
            raise ValidationError(f"Arm {arm.name} cannot be promoted: {problem}")
        if arm.ranker in (Arm.Ranker.VERSION, Arm.Ranker.ITEMKNN):
            try:
                arm.version.activate()
            except ValueError as exc:
                raise ValidationError(str(exc)) from None
            serves = f"v{arm.version_id} is now the active version"
        else:
            for version in ModelVersion.objects.select_for_update().filter(is_active=True):
                ModelVersion.objects.filter(pk=version.pk).update(is_active=False)
            serves = "no version is active: every shopper gets the popular items"
        text = f"Promoted arm {arm.name}: {serves}."
        Experiment.objects.filter(pk=current.pk).update(
            status=Experiment.Status.STOPPED,
            stopped_at=current.stopped_at or timezone.now(),
            promoted_arm=arm,
            decision=f"{decision} {text}" if decision else text,
        )
    experiment.refresh_from_db()
    return experiment
