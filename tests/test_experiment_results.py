"""What an experiment's arms are credited with: only genuine, attributable events count."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from recommender import experiment_results
from recommender.models import Experiment

from .experiment_data import act, arm, make_experiment, serve

pytestmark = pytest.mark.django_db


@pytest.fixture
def now():
    return timezone.now()


@pytest.fixture
def experiment(now):
    return make_experiment(started_at=now - timedelta(days=2))


def arm_result(result, name):
    return next(a for a in result.arms if a.arm.name == name)


def test_a_shoppers_click_and_purchase_after_it_count_for_their_arm(experiment, catalog, now):
    a = arm(experiment, "A")
    ann = get_user_model().objects.create_user("ann")
    rec = serve(a, catalog[:3], user=ann, at=now - timedelta(hours=5), impressions=2)
    act("click", catalog[1], user=ann, rec=rec, at=now - timedelta(hours=4))
    act("add_to_cart", catalog[1], user=ann, at=now - timedelta(hours=3), value=2)
    act("purchase", catalog[1], user=ann, at=now - timedelta(hours=2), value=2)
    serve(a, catalog[:3], session_key="quiet-one", at=now - timedelta(hours=5))

    result = experiment_results.results(experiment, now)
    got = arm_result(result, "A")
    assert (got.shoppers, got.impressions, got.clicks) == (2, 3, 1)
    assert (got.carts, got.purchases, got.value) == (1, 1, 2.0)
    # Per exposed shopper: the quiet one counts as a zero.
    assert got.estimates["purchases_per_shopper"].value == pytest.approx(0.5)
    assert got.estimates["revenue_per_shopper"].value == pytest.approx(1.0)
    assert got.estimates["ctr"].value == pytest.approx(1 / 3)
    assert got.per_impression(got.purchases) == pytest.approx(1 / 3)
    other = arm_result(result, "B")
    assert (other.shoppers, other.clicks, other.purchases) == (0, 0, 0)


def test_a_click_on_a_list_not_shown_to_the_shopper_does_not_count(experiment, catalog, now):
    a, b = arm(experiment, "A"), arm(experiment, "B")
    serve(a, catalog[:3], session_key="ann", at=now - timedelta(hours=5))
    bobs = serve(b, catalog[:3], session_key="bob", at=now - timedelta(hours=5))
    shared = serve(b, catalog[:3], session_key="bob", at=now - timedelta(hours=5), personal=False)
    # Ann (arm A) replays Bob's personal list: events.record drops the credit.
    act("click", catalog[0], session_key="ann", rec=bobs, at=now - timedelta(hours=4))
    # A shared list of arm B was never served to Ann: kept by record, refused here.
    act("click", catalog[1], session_key="ann", rec=shared, at=now - timedelta(hours=4))
    act("purchase", catalog[1], session_key="ann", at=now - timedelta(hours=3), value=1)
    # A shopper in no arm at all clicks the shared list: nobody's click.
    act("click", catalog[2], session_key="stranger", rec=shared, at=now - timedelta(hours=4))

    result = experiment_results.results(experiment, now)
    for name in ("A", "B"):
        got = arm_result(result, name)
        assert (got.clicks, got.purchases) == (0, 0), name
        assert got.estimates["clicks_per_shopper"].value == 0


def test_purchases_count_only_within_the_window_after_a_click_on_the_same_item(
    experiment, catalog, now
):
    experiment.attribution_hours = 24
    experiment.save()
    a = arm(experiment, "A")
    rec = serve(a, catalog[:3], session_key="ann", at=now - timedelta(hours=47))
    act("purchase", catalog[0], session_key="ann", at=now - timedelta(hours=46, minutes=30))
    act("click", catalog[0], session_key="ann", rec=rec, at=now - timedelta(hours=46))
    act("purchase", catalog[0], session_key="ann", at=now - timedelta(hours=45), value=3)
    act("purchase", catalog[1], session_key="ann", at=now - timedelta(hours=44), value=5)
    act("purchase", catalog[0], session_key="ann", at=now - timedelta(hours=21), value=7)

    got = arm_result(experiment_results.results(experiment, now), "A")
    # Only the one an hour after the click: not before it, not another item, not 25 h later.
    assert (got.clicks, got.purchases, got.value) == (1, 1, 3.0)


def test_other_arms_events_do_not_count_and_each_arm_gets_its_own(experiment, catalog, now):
    a, b = arm(experiment, "A"), arm(experiment, "B")
    users = get_user_model().objects
    for i in range(3):
        shopper = users.create_user(f"a{i}")
        rec = serve(a, catalog[:3], user=shopper, at=now - timedelta(hours=10))
        act("click", catalog[0], user=shopper, rec=rec, at=now - timedelta(hours=9))
    for i in range(2):
        shopper = users.create_user(f"b{i}")
        rec = serve(b, catalog[:3], user=shopper, at=now - timedelta(hours=10))
        act("click", catalog[2], user=shopper, rec=rec, at=now - timedelta(hours=9))
        act("purchase", catalog[2], user=shopper, at=now - timedelta(hours=8), value=1)
        # Clicked twice: one click per (shopper, list, item).
        act("click", catalog[2], user=shopper, rec=rec, at=now - timedelta(hours=7))

    result = experiment_results.results(experiment, now)
    got_a, got_b = arm_result(result, "A"), arm_result(result, "B")
    assert (got_a.shoppers, got_a.clicks, got_a.purchases) == (3, 3, 0)
    assert (got_b.shoppers, got_b.clicks, got_b.purchases) == (2, 2, 2)
    assert got_b.estimates["purchases_per_shopper"].successes == 2


def test_another_experiments_lists_do_not_count(experiment, catalog, now):
    other = make_experiment(started_at=now - timedelta(days=2))
    ann = get_user_model().objects.create_user("ann")
    serve(arm(experiment, "A"), catalog[:3], user=ann, at=now - timedelta(hours=5))
    rec = serve(arm(other, "A"), catalog[:3], user=ann, at=now - timedelta(hours=5))
    act("click", catalog[0], user=ann, rec=rec, at=now - timedelta(hours=4))
    act("purchase", catalog[0], user=ann, at=now - timedelta(hours=3), value=1)
    mine = arm_result(experiment_results.results(experiment, now), "A")
    assert (mine.clicks, mine.purchases) == (0, 0)
    theirs = arm_result(experiment_results.results(other, now), "A")
    assert (theirs.clicks, theirs.purchases) == (1, 1)


def test_daily_values_are_cumulative_and_squares_are_of_shopper_totals(experiment, catalog, now):
    a = arm(experiment, "A")
    start = experiment.started_at
    ann = get_user_model().objects.create_user("ann")
    # Ann buys on two days (1 then 2 units), Bob once (4 units) on the second day.
    rec = serve(a, catalog[:3], user=ann, at=start + timedelta(minutes=5))
    act("click", catalog[0], user=ann, rec=rec, at=start + timedelta(minutes=10))
    act("purchase", catalog[0], user=ann, at=start + timedelta(minutes=20), value=1)
    rec2 = serve(a, catalog[:3], user=ann, at=start + timedelta(days=1, minutes=5))
    act("click", catalog[1], user=ann, rec=rec2, at=start + timedelta(days=1, minutes=10))
    act("purchase", catalog[1], user=ann, at=start + timedelta(days=1, minutes=20), value=2)
    rec3 = serve(a, catalog[:3], session_key="bob", at=start + timedelta(days=1, minutes=5))
    act("click", catalog[2], session_key="bob", rec=rec3, at=start + timedelta(days=1, minutes=9))
    act(
        "purchase", catalog[2], session_key="bob", at=start + timedelta(days=1, minutes=30), value=4
    )

    result = experiment_results.results(experiment, now)
    got = arm_result(result, "A")
    daily = got.daily["revenue_per_shopper"]
    assert len(daily) == len(result.days) == 3
    first_day = [d for d in daily if d.units][0]
    assert first_day.value == pytest.approx(1.0)  # one shopper, one unit
    last = daily[-1]
    # Totals: Ann 3, Bob 4; mean 3.5, sample variance 0.5, of the mean 0.25.
    assert (last.units, last.value, last.successes) == (2, pytest.approx(3.5), 2)
    assert last.variance == pytest.approx(0.25)
    purchases = got.daily["purchases_per_shopper"][-1]
    # Ann 2 purchases, Bob 1: the same spread.
    assert purchases.value == pytest.approx(1.5) and purchases.variance == pytest.approx(0.25)


def test_a_stopped_experiment_counts_purchases_one_window_after_it_stopped(catalog, now):
    experiment = make_experiment(started_at=now - timedelta(days=3), attribution_hours=6)
    a = arm(experiment, "A")
    rec = serve(a, catalog[:3], session_key="ann", at=now - timedelta(hours=30))
    act("click", catalog[0], session_key="ann", rec=rec, at=now - timedelta(hours=26))
    Experiment.objects.filter(pk=experiment.pk).update(
        status=Experiment.Status.STOPPED, stopped_at=now - timedelta(hours=25)
    )
    experiment.refresh_from_db()
    act("click", catalog[1], session_key="ann", rec=rec, at=now - timedelta(hours=24))
    act("purchase", catalog[0], session_key="ann", at=now - timedelta(hours=22), value=1)
    act("purchase", catalog[1], session_key="ann", at=now - timedelta(hours=23), value=1)
    got = arm_result(experiment_results.results(experiment, now), "A")
    # The click before the stop and its purchase count; the click after it does not.
    assert (got.clicks, got.purchases) == (1, 1)


def test_a_draft_has_no_results_but_says_so(db):
    experiment = make_experiment(running=False)
    result = experiment_results.results(experiment)
    assert result.days == [] and result.verdict == ["Not started: no verdict before it runs."]


# --------------------------------------------------------------------------- verdicts


def decided_experiment(catalog, now, rates, shoppers=1000, **fields):
    """A running experiment with one arm per ``rates`` entry ``(name, clickers, buyers)``."""
    from .experiment_data import populate, ready_version

    start = now - timedelta(days=10)
    experiment = make_experiment(
        arms=[(name, ready_version(), 50) for name, _, _ in rates], started_at=start, **fields
    )
    for seed, (name, clickers, buyers) in enumerate(rates):
        populate(
            arm(experiment, name), catalog[:6], shoppers=shoppers, clickers=clickers,
            buyers=buyers, start=start, days=9, seed=seed,
        )  # fmt: skip
    return experiment


def test_the_verdict_waits_for_the_minimum_sample_and_says_how_far_it_is(catalog, now):
    experiment = decided_experiment(catalog, now, [("A", 40, 8), ("B", 40, 20)], shoppers=200)
    result = experiment_results.results(experiment, now)
    # 30 purchasing shoppers in A at its 8 in 200: 750 shoppers per arm.
    assert result.verdict == [
        "No winner yet: 200 of the 750 shoppers per arm needed before the test declares "
        "anything (A against B on purchases per shopper)."
    ]
    assert result.winner is None


def test_no_conversions_yet_says_what_is_missing(catalog, now):
    experiment = decided_experiment(catalog, now, [("A", 10, 0), ("B", 10, 0)], shoppers=50)
    [sentence] = experiment_results.results(experiment, now).verdict
    assert sentence.startswith("No winner yet: no shoppers who purchased in A or B yet;")


def test_an_arm_without_conversions_is_named(catalog, now):
    experiment = decided_experiment(catalog, now, [("A", 10, 0), ("B", 10, 4)], shoppers=50)
    [sentence] = experiment_results.results(experiment, now).verdict
    assert sentence.startswith("No winner yet: no shoppers who purchased in A yet;")


def test_equal_arms_give_no_winner_and_the_range_they_are_within(catalog, now):
    experiment = decided_experiment(catalog, now, [("A", 300, 60), ("B", 300, 62)])
    result = experiment_results.results(experiment, now)
    [sentence] = result.verdict
    comparison = result.decisions[0][1].comparison
    low, high = (
        experiment_results.format_lift(comparison.low),
        experiment_results.format_lift(comparison.high),
    )
    assert sentence == (
        f"No winner yet: B is within {low} and {high} of A on purchases per shopper (95 %), "
        "1,000 shoppers per arm."
    )
    assert comparison.low < 0 < comparison.high


def test_the_control_can_win_and_the_lift_is_then_its_own(catalog, now):
    experiment = decided_experiment(
        catalog, now, [("A", 400, 120), ("B", 400, 45)], primary_metric="purchases_per_shopper"
    )
    result = experiment_results.results(experiment, now)
    [sentence] = result.verdict
    assert sentence.startswith("A beats B on purchases per shopper, +")
    assert result.winner.arm.name == "A"
    comparison = result.decisions[0][1].comparison
    assert comparison.lift < 0 and comparison.high < 0


def test_three_arms_are_each_compared_with_the_control_at_a_bonferroni_alpha(catalog, now):
    experiment = decided_experiment(
        catalog,
        now,
        [("A", 300, 40), ("B", 300, 110), ("C", 300, 42)],
        primary_metric="revenue_per_shopper",
    )
    result = experiment_results.results(experiment, now)
    assert result.comparison_alpha == pytest.approx(0.025)
    assert [d.comparison.alpha for _, d in result.decisions] == pytest.approx([0.025, 0.025])
    first, second = result.verdict
    assert first.startswith("B beats A on purchase value per shopper, +")
    assert second.startswith("No winner yet: C is within")
    assert result.winner is None  # B beats A, but C against A is open


def test_lifts_are_printed_with_a_real_minus_and_sensible_digits():
    assert experiment_results.format_lift(0.123) == "+12 %"
    assert experiment_results.format_lift(-0.035) == "\u22123.5 %"
    assert experiment_results.format_lift(0.0) == "+0.0 %"
