"""An experiment on the demo with simulated live traffic: the arm that knows the shoppers wins.

Popular items (A, the control) against item-kNN fitted on the seeded history (B), 50/50, in
every placement the demo's pages show, started as the admin starts it. Gunicorn serves the
demo; responsive shoppers (``simulate_shoppers``' browsing, in-process) visit it over HTTP,
with hidden tastes that item-kNN has learned from their history and popularity has not.
The results are read with ``experiment_results``, the admin page's own code.

Primary metric: clicks per shopper. The shopper is the unit that is randomised, so each
shopper's clicks are one independent value, and it needs only clicks (the most frequent
response): the minimum sample, 100 shoppers and 30 clicking shoppers per arm, is what
holds the verdict back here, not the evidence. The click-through rate would declare
sooner (its minimum, 100 impressions, is a dozen shoppers' worth), but its variance takes
each list as one independent cluster, and the popular arm's lists are shared: four rows
(one per placement) for all its shoppers in a run this short, too few to estimate a
variance from.
"""

import math

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from recommender import experiment_lifecycle, experiment_results, sequential
from recommender.models import Arm, Assignment, Event, Experiment, Recommendation
from recommender.pseudonyms import list_owner
from shop_demo.catalog import live_shoppers

from .live_demo import itemknn_version, seed_small_demo, served

# Every placement the demo's pages show a carousel in (templates/catalog/*.html).
PLACEMENTS = ["home", "cart", "product-similar", "product-bought-together"]
# About 280 of them are served from an arm (an anonymous shopper who leaves after the first
# page has no shopper key yet): 140 a side, the minimum sample of 100 four deviations away.
SHOPPERS = 300
SEED = 4


def start_experiment(version):
    experiment = Experiment.objects.create(
        name="Item-kNN against the popular items",
        placements=PLACEMENTS,
        primary_metric="clicks_per_shopper",
        salt=f"live-experiment-{SEED}",  # the signed-in shoppers' arms, the same every run
    )
    Arm.objects.create(experiment=experiment, name="A", ranker=Arm.Ranker.POPULARITY, share=50)
    Arm.objects.create(
        experiment=experiment, name="B", ranker=Arm.Ranker.VERSION, version=version, share=50
    )
    return experiment_lifecycle.start(experiment)


def arm_of_each_shopper(experiment):
    """``{list owner pseudonym: arm id}`` and ``{("u", user id) or ("s", key): (arm id, when)}``."""
    users = get_user_model().objects.in_bulk(
        Assignment.objects.filter(experiment=experiment, user__isnull=False).values_list(
            "user_id", flat=True
        )
    )
    by_owner, by_shopper = {}, {}
    for user_id, session_key, arm_id, assigned_at in Assignment.objects.filter(
        experiment=experiment
    ).values_list("user_id", "session_key", "arm_id", "assigned_at"):
        if user_id is not None:
            by_owner[list_owner(user=users[user_id])] = arm_id
            by_shopper[("u", user_id)] = (arm_id, assigned_at)
        else:
            by_owner[list_owner(session_key=session_key)] = arm_id
            by_shopper[("s", session_key)] = (arm_id, assigned_at)
    return by_owner, by_shopper


@pytest.mark.postgres
@pytest.mark.slow
def test_item_knn_beats_the_popular_items_on_simulated_live_traffic(transactional_db, client):
    seed_small_demo()
    knn = itemknn_version()
    assert not knn.is_active  # outside the experiment nothing personal is served
    experiment = start_experiment(knn)
    popular_arm, knn_arm = experiment.arms.get(name="A"), experiment.arms.get(name="B")
    started = timezone.now()
    with served() as server:
        summary = live_shoppers.run(
            server.url, shoppers=SHOPPERS, rate=50, seed=SEED, concurrency=4
        )
    assert summary.errors == 0, summary.error_messages
    assert summary.shoppers == SHOPPERS and summary.throttled == 0

    result = experiment_results.results(experiment)
    control, treatment = result.arms
    assert (control.arm, treatment.arm) == (popular_arm, knn_arm)

    # Both arms got shoppers by their shares (50/50: within four standard deviations).
    exposed = control.shoppers + treatment.shoppers
    assert exposed == Assignment.objects.filter(experiment=experiment).count() > 0.9 * SHOPPERS
    assert abs(control.shoppers - exposed / 2) <= 4 * math.sqrt(exposed) / 2, (
        control.shoppers,
        treatment.shoppers,
    )

    # Every list served in the experiment came from the arm of the shopper who got it.
    lists = Recommendation.objects.filter(created_at__gte=started)
    popular_lists = lists.filter(arm=popular_arm)
    knn_lists = lists.filter(arm=knn_arm)
    assert set(popular_lists.values_list("source", "version")) == {("popular", None)}
    assert set(popular_lists.values_list("placement", flat=True)) == set(PLACEMENTS)
    made_by_knn = knn_lists.filter(source__in=["model", "similar"])
    assert set(made_by_knn.values_list("version", flat=True)) == {knn.pk}
    assert set(made_by_knn.values_list("source", "placement")) == {
        ("model", "home"),
        ("model", "cart"),
        ("similar", "product-similar"),
    }
    # Outside the arms: only the popular items shown before a visitor had a shopper key.
    assert set(lists.filter(arm__isnull=True).values_list("source", "owner", "placement")) <= {
        ("popular", "", "home")
    }
    by_owner, by_shopper = arm_of_each_shopper(experiment)
    personal = list(lists.exclude(owner="").values_list("owner", "arm_id"))
    assert len(personal) > 100
    assert all(by_owner.get(owner) == arm_id for owner, arm_id in personal)
    # Each list a shopper clicked (shared ones too) was one of their own arm's.
    arm_of_list = dict(lists.values_list("pk", "arm_id"))
    clicks = Event.objects.filter(
        kind=Event.Kind.CLICK, recommendation_id__in=list(arm_of_list)
    ).values_list("user_id", "session_key", "recommendation_id", "occurred_at")
    clicked_from = {popular_arm.pk: 0, knn_arm.pk: 0}
    for user_id, session_key, list_id, occurred_at in clicks:
        arm_id = arm_of_list[list_id]
        shopper = ("u", user_id) if user_id is not None else ("s", session_key)
        if arm_id is None:
            # A visitor's first page, before they had a shopper key (their click gives
            # them one): served in no arm, and before any assignment of theirs.
            assert user_id is None
            assert shopper not in by_shopper or by_shopper[shopper][1] >= occurred_at
            continue
        assert by_shopper[shopper][0] == arm_id, shopper
        clicked_from[arm_id] += 1
    assert min(clicked_from.values()) > 100, clicked_from

    # The verdict names item-kNN the winner on clicks per shopper, by the always-valid test.
    for arm in (control, treatment):
        estimate = arm.estimates["clicks_per_shopper"]
        assert estimate.units >= sequential.MIN_UNITS
        assert estimate.successes >= sequential.MIN_SUCCESSES
    assert result.winner is treatment, result.verdict
    ((_, decision),) = result.decisions
    assert decision.state == "winner" and decision.comparison.low > 0
    assert result.verdict[0].startswith("B beats A on clicks per shopper, +"), result.verdict
    # What the clicks led to: add-to-carts and purchases of the clicked items, in both arms.
    assert min(control.carts, treatment.carts, control.purchases, treatment.purchases) > 0
    # Where a metric waits for its minimum sample (purchases per shopper: popular items sell
    # to fewer than 30 shoppers here), the shoppers it says it needs are more than it has.
    for key in experiment_results.METRICS:
        estimates = [arm.estimates[key] for arm in result.arms]
        if not sequential.has_minimum_sample(estimates):
            needed = sequential.needed_units(estimates)
            assert needed is None or needed > min(e.units for e in estimates), (key, estimates)

    # The admin's experiment page says the same.
    client.force_login(get_user_model().objects.create_superuser("boss", "b@example.com", "pw"))
    page = client.get(f"/admin/recommender/experiment/{experiment.pk}/change/")
    assert page.status_code == 200
    assert page.context["result"].verdict == result.verdict
    assert result.verdict[0] in page.content.decode()
