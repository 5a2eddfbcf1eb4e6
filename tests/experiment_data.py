"""Experiments with shoppers, lists and events made directly, as serving and tracking would.

Serving assigns shoppers and stores each list with its arm; here ``serve`` writes those
rows itself, and clicks and purchases go through ``events.record``, the one way in, so
they are attributed exactly as in production.
"""

import itertools
from datetime import timedelta

from django.utils import timezone

from recommender import events
from recommender.models import Arm, Assignment, Experiment, ModelVersion, Recommendation
from recommender.pseudonyms import list_owner

_names = itertools.count(1)


def ready_version(**fields):
    """A trained, servable version (its artifact is never read by these tests)."""
    n = next(_names)
    return ModelVersion.objects.create(
        **{
            "status": ModelVersion.Status.READY,
            "model_name": "hybrid",
            "artifact": f"recommender/models/test-{n}.pt",
            "artifact_sha256": "0" * 64,
            "metrics": {"valid": {"ndcg@10": 0.03}},
            **fields,
        }
    )


def make_experiment(name=None, arms=None, *, running=True, started_at=None, **fields):
    """An experiment with ``arms`` ``[(name, version or None for popularity, share)]``."""
    experiment = Experiment.objects.create(name=name or f"experiment {next(_names)}", **fields)
    if arms is None:
        arms = [("A", ready_version(), 50), ("B", ready_version(), 50)]
    for arm_name, version, share in arms:
        Arm.objects.create(
            experiment=experiment,
            name=arm_name,
            ranker=Arm.Ranker.VERSION if version else Arm.Ranker.POPULARITY,
            version=version,
            share=share,
        )
    if running:
        Experiment.objects.filter(pk=experiment.pk).update(
            status=Experiment.Status.RUNNING,
            started_at=started_at or timezone.now() - timedelta(days=3),
        )
        experiment.refresh_from_db()
    return experiment


def arm(experiment, name):
    return experiment.arms.get(name=name)


def serve(arm, items, *, user=None, session_key="", at=None, impressions=1, personal=True):
    """Assign the shopper to ``arm`` (once) and store one list served to them from it."""
    at = at or timezone.now()
    shopper = {"user": user} if user is not None else {"session_key": session_key}
    Assignment.objects.get_or_create(
        experiment=arm.experiment, **shopper, defaults={"arm": arm, "assigned_at": at}
    )
    return Recommendation.objects.create(
        source=Recommendation.Source.MODEL if arm.version_id else Recommendation.Source.POPULAR,
        version=arm.version,
        arm=arm,
        items=[item.pk for item in items],
        owner=list_owner(user=user, session_key=session_key) if personal else "",
        impressions=impressions,
        created_at=at,
    )


def act(kind, item, *, user=None, session_key="", at=None, rec=None, value=None):
    """Record one event through the one way in (attribution included)."""
    fields = {"occurred_at": at or timezone.now()}
    if rec is not None:
        fields["recommendation_id"] = rec.pk
    if value is not None:
        fields["value"] = value
    return events.record(kind, item, user=user, session_key=session_key, **fields)


def populate(arm, items, *, shoppers, clickers, buyers, start, days, seed=0, prefix=None):
    """Many shoppers at once (bulk rows, for results pages): each served one list of ``arm``.

    Shopper ``i`` arrives ``days * i / shoppers`` days after ``start``; ``clickers`` of
    them, drawn at random, click an item of their list a minute later; ``buyers`` of those
    and a quarter of the others add it to the cart, and the ``buyers`` buy it (1-3 units)
    ten minutes after the click. Rows are written directly, as
    ``events.record`` would have attributed them.
    """
    import random

    from recommender.models import Event

    rng = random.Random(seed)
    prefix = prefix or f"{arm.experiment_id}-{arm.name}"
    assignments, lists, rows = [], [], []
    order = list(range(shoppers))
    rng.shuffle(order)
    rank = {shopper: position for position, shopper in enumerate(order)}
    for i in range(shoppers):
        at = start + timedelta(days=days * i / shoppers)
        key = f"{prefix}-{i}"
        shown = rng.sample(items, 3)
        assignments.append(
            Assignment(experiment_id=arm.experiment_id, arm=arm, session_key=key, assigned_at=at)
        )
        rec = Recommendation(
            source=Recommendation.Source.MODEL if arm.version_id else Recommendation.Source.POPULAR,
            version_id=arm.version_id,
            arm=arm,
            items=[item.pk for item in shown],
            owner=list_owner(session_key=key),
            impressions=rng.randint(1, 3),
            created_at=at,
        )
        lists.append(rec)
        if rank[i] < clickers:
            item = shown[0]
            rows.append(
                Event(
                    session_key=key,
                    item=item,
                    kind="click",
                    occurred_at=at + timedelta(minutes=1),
                    recommendation_id=rec.pk,
                )
            )
            if rank[i] < buyers + (clickers - buyers) // 4:
                rows.append(
                    Event(
                        session_key=key,
                        item=item,
                        kind="add_to_cart",
                        value=1,
                        occurred_at=at + timedelta(minutes=5),
                    )
                )
            if rank[i] < buyers:
                rows.append(
                    Event(
                        session_key=key,
                        item=item,
                        kind="purchase",
                        value=rng.randint(1, 3),
                        occurred_at=at + timedelta(minutes=11),
                    )
                )
    Assignment.objects.bulk_create(assignments)
    Recommendation.objects.bulk_create(lists)
    Event.objects.bulk_create(rows)
