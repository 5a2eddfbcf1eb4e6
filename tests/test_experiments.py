"""An experiment's lifecycle: who may start it, with what arms, where; stopping; promoting."""

import threading
import time

import pytest
from django.core.exceptions import ValidationError
from django.db import connection

from recommender import experiment_lifecycle as lifecycle
from recommender.models import Arm, Experiment, ModelVersion

from .experiment_data import arm, make_experiment, ready_version

pytestmark = pytest.mark.django_db


def draft(**fields):
    return make_experiment(running=False, **fields)


def start_problems(experiment):
    with pytest.raises(ValidationError) as refused:
        lifecycle.start(experiment)
    experiment.refresh_from_db()
    assert experiment.status == Experiment.Status.DRAFT
    return " ".join(refused.value.messages)


def test_a_valid_draft_starts():
    experiment = draft(placements=["home", "cart"])
    lifecycle.start(experiment)
    assert experiment.status == Experiment.Status.RUNNING and experiment.started_at is not None


def test_an_experiment_needs_two_arms():
    experiment = draft(arms=[("A", ready_version(), 50)])
    assert "at least two arms" in start_problems(experiment)


def test_arms_must_be_ready_versions_with_artifacts_and_differ():
    training = ModelVersion.objects.create(status=ModelVersion.Status.RUNNING)
    no_file = ready_version()
    ModelVersion.objects.filter(pk=no_file.pk).update(artifact="")
    same = ready_version()
    experiment = draft(
        arms=[
            ("A", training, 50),
            ("B", no_file, 50),
            ("C", same, 50),
            ("D", same, 50),
            ("E", None, 50),
            ("F", None, 50),
        ]
    )
    problems = start_problems(experiment)
    assert f"Arm A: v{training.pk} is running; only a ready" in problems
    assert f"Arm B: v{no_file.pk} has no model artifact" in problems
    assert f"Arm D: v{same.pk} is already another arm" in problems
    assert "Only one arm can serve the popular items" in problems


def test_placements_must_be_the_stores_names():
    experiment = draft(placements=["home", "sidebar"])
    problems = start_problems(experiment)
    assert "Unknown placement(s) 'sidebar'" in problems and "'home'" in problems


def test_a_placement_runs_at_most_one_experiment():
    make_experiment(name="home test", placements=["home", "product"])
    assert "'home test' is running in home" in start_problems(draft(placements=["cart", "home"]))
    # Every placement overlaps every other experiment.
    assert "running in every placement" in start_problems(draft(placements=[]))
    other = draft(placements=["cart"])
    lifecycle.start(other)
    assert other.status == Experiment.Status.RUNNING


def test_only_a_draft_starts_and_only_a_running_one_stops():
    experiment = make_experiment()
    assert "Only a draft experiment can start" in start_problems_of_running(experiment)
    lifecycle.stop(experiment, "Enough seen.")
    assert experiment.status == Experiment.Status.STOPPED and experiment.decision == "Enough seen."
    assert experiment.stopped_at is not None
    with pytest.raises(ValidationError, match="Only a running experiment can stop"):
        lifecycle.stop(experiment)
    # A stopped experiment does not block its placements.
    lifecycle.start(draft())


def start_problems_of_running(experiment):
    with pytest.raises(ValidationError) as refused:
        lifecycle.start(experiment)
    return " ".join(refused.value.messages)


def test_promoting_a_version_arm_activates_it_and_stops_the_experiment():
    serving = ready_version()
    serving.activate()
    challenger = ready_version()
    experiment = make_experiment(arms=[("A", serving, 50), ("B", challenger, 50)])
    lifecycle.promote(experiment, arm(experiment, "B"))
    challenger.refresh_from_db()
    assert challenger.is_active and ModelVersion.objects.filter(is_active=True).count() == 1
    assert experiment.status == Experiment.Status.STOPPED
    assert experiment.promoted_arm.name == "B"
    assert f"v{challenger.pk} is now the active version" in experiment.decision
    with pytest.raises(ValidationError, match="already promoted"):
        lifecycle.promote(experiment, arm(experiment, "A"))


def test_promoting_the_popular_items_switches_every_version_off():
    serving = ready_version()
    serving.activate()
    experiment = make_experiment(arms=[("A", serving, 50), ("Popular", None, 50)])
    lifecycle.stop(experiment)
    lifecycle.promote(experiment, arm(experiment, "Popular"))
    assert not ModelVersion.objects.filter(is_active=True).exists()
    assert "every shopper gets the popular items" in experiment.decision


def test_promotion_needs_a_started_experiment_and_its_own_arm():
    experiment = draft()
    with pytest.raises(ValidationError, match="has not started"):
        lifecycle.promote(experiment, arm(experiment, "A"))
    running = make_experiment()
    with pytest.raises(ValidationError, match="is not an arm of"):
        lifecycle.promote(running, arm(experiment, "A"))
    assert not ModelVersion.objects.filter(is_active=True).exists()


def test_arms_are_fixed_once_started():
    experiment = draft()
    assert experiment.arms_editable
    lifecycle.start(experiment)
    assert not experiment.arms_editable


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_admins_starting_overlapping_experiments_at_once_start_one(monkeypatch):
    """Both check for a running experiment in the same instant; the row lock makes one wait.

    The check is slowed down so that, without the lock, both would pass it.
    """
    original = lifecycle.start_problems

    def slow(experiment):
        problems = original(experiment)
        time.sleep(0.5)
        return problems

    monkeypatch.setattr(lifecycle, "start_problems", slow)
    first, second = draft(placements=["home"]), draft(placements=["home", "cart"])
    barrier, outcomes = threading.Barrier(2), {}

    def start(experiment):
        try:
            barrier.wait()
            lifecycle.start(experiment)
            outcomes[experiment.name] = "started"
        except ValidationError as exc:
            outcomes[experiment.name] = " ".join(exc.messages)
        finally:
            connection.close()

    threads = [threading.Thread(target=start, args=(e,)) for e in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(o == "started" for o in outcomes.values()) == [False, True], outcomes
    refused = next(o for o in outcomes.values() if o != "started")
    assert "is running in home" in refused
    assert Experiment.objects.running().count() == 1


def test_arm_rows_say_what_they_serve():
    version = ready_version()
    experiment = make_experiment(arms=[("A", version, 50), ("Popular", None, 50)])
    assert str(arm(experiment, "A")) == f"A: v{version.pk}"
    assert arm(experiment, "Popular").ranker == Arm.Ranker.POPULARITY
