"""The experiments' test: known values, and its error rate and power in seeded simulations.

The simulations look at an experiment every day for 30 days, as a store owner would, and
apply the same rule as the admin (``sequential.decide``: minimum sample, then the mSPRT).
"""

import math

import numpy as np
import pytest

from recommender import sequential

ALPHA = 0.05


def test_the_interval_ends_are_where_the_likelihood_ratio_reaches_one_over_alpha():
    estimate = sequential.Estimate(0.04, 0.0001, 1000, 40)
    low, high = sequential.interval(estimate, ALPHA)
    variance = estimate.variance / estimate.value**2
    for end in (low, high):
        theta = math.log(end / estimate.value)
        assert sequential.likelihood_ratio(theta, variance) == pytest.approx(1 / ALPHA)
    # Always valid costs width: wider than the fixed-horizon 95 % interval of the same data.
    fixed = 1.96 * math.sqrt(variance)
    assert math.log(high / estimate.value) > fixed


def test_no_difference_gives_p_one_and_an_interval_around_zero():
    arm = sequential.mean_estimate(2000, 80, 100, 70)
    comparison = sequential.compare(arm, arm, ALPHA)
    assert comparison.lift == 0 and comparison.p_value == 1.0
    assert comparison.low < 0 < comparison.high and not comparison.significant


def test_sums_give_the_mean_and_the_variance_of_the_mean():
    values = np.array([0, 0, 1, 3, 0, 2, 0, 0])
    estimate = sequential.mean_estimate(len(values), values.sum(), (values**2).sum(), 3)
    assert estimate.value == pytest.approx(values.mean())
    assert estimate.variance == pytest.approx(values.var(ddof=1) / len(values))


def test_a_ratio_over_clusters_has_the_delta_method_variance():
    shown = np.array([3, 1, 4, 2, 5], dtype=float)
    clicked = np.array([1, 0, 2, 0, 1], dtype=float)
    estimate = sequential.ratio_estimate(
        shown.sum(),
        clicked.sum(),
        shown.sum(),
        ((clicked**2).sum(), (clicked * shown).sum(), (shown**2).sum()),
        clicked.sum(),
    )
    ratio = clicked.sum() / shown.sum()
    assert estimate.value == pytest.approx(ratio)
    assert estimate.variance == pytest.approx(
        ((clicked - ratio * shown) ** 2).sum() / shown.sum() ** 2
    )


def test_swapping_the_arms_inverts_the_lift_and_keeps_the_p_value():
    a = sequential.mean_estimate(6000, 180, 260, 170)
    b = sequential.mean_estimate(6000, 280, 400, 256)
    ab, ba = sequential.compare(a, b, ALPHA), sequential.compare(b, a, ALPHA)
    assert (1 + ab.lift) * (1 + ba.lift) == pytest.approx(1)
    assert (1 + ab.low) * (1 + ba.high) == pytest.approx(1)
    assert ab.p_value == pytest.approx(ba.p_value)
    assert ab.significant and ab.lift > 0  # 4.7 % against 3 % of 6000 shoppers each


def test_nothing_is_declared_before_the_minimum_sample():
    # A huge lift, but only 20 purchasing shoppers in the control.
    a = sequential.mean_estimate(400, 20, 20, 20)
    b = sequential.mean_estimate(400, 80, 80, 80)
    decision = sequential.decide(a, b, ALPHA)
    assert decision.state == "waiting" and decision.comparison.significant
    # 30 successes in the control at its rate of 20 in 400: 600 shoppers per arm.
    assert decision.needed == 600
    assert sequential.decide(a, b, ALPHA, min_successes=20).state == "winner"


def test_the_minimum_sample_is_unknown_while_an_arm_has_no_success():
    nothing = sequential.mean_estimate(500, 0, 0, 0)
    some = sequential.mean_estimate(500, 200, 200, 200)
    assert sequential.needed_units([nothing, nothing]) is None
    assert sequential.needed_units([some, nothing]) is None
    assert sequential.decide(nothing, nothing, ALPHA).state == "waiting"


def test_the_minimum_sample_is_never_less_than_an_arm_short_of_successes_has():
    """Arms converting at very different rates: the weaker arm sets the number.

    Seen on the demo's live traffic: popular items got 19 buying shoppers of 166, the model
    95 of 201. At the rate pooled over both arms the test would have "needed" 100 shoppers
    per arm while waiting with 166.
    """
    weak = sequential.mean_estimate(166, 21, 25, 19)
    strong = sequential.mean_estimate(201, 156, 200, 95)
    decision = sequential.decide(weak, strong, ALPHA)
    assert decision.state == "waiting"
    assert decision.needed == math.ceil(30 * 166 / 19) == 263
    assert decision.needed > min(weak.units, strong.units)
    assert sequential.needed_units([strong, strong]) == 100  # MIN_UNITS binds


def test_units_to_detect_is_where_the_interval_shrinks_to_the_lift():
    relative_variance = 1 / 0.03  # a 3 % conversion
    n = sequential.units_to_detect(relative_variance, 0.10, ALPHA)
    half = sequential._half_width
    assert half(2 * relative_variance / n, ALPHA, sequential.MIXTURE_SD) <= math.log(1.1)
    assert half(2 * relative_variance / (n - 1), ALPHA, sequential.MIXTURE_SD) > math.log(1.1)


# --------------------------------------------------------------------------- simulations


def simulate(
    *,
    reps=200,
    days=30,
    shoppers_per_day=300,
    shares=(0.5, 0.5),
    rate=0.03,
    lift=0.0,
    metric="purchases",
    seed=0,
    test="msprt",
):
    """Share of ``reps`` experiments in which a winner is declared on any of ``days`` daily looks.

    Shoppers arrive each day (Poisson), split by ``shares``; a shopper buys with
    probability ``rate`` (times ``1 + lift`` in every arm after the first), 1 + Poisson(0.3)
    times, and ``metric="value"`` gives each purchase a log-normal value (a long tail).
    ``test="t"`` applies a fixed-horizon 95 % z-test instead, read every day the same way.
    """
    rng = np.random.default_rng(seed)
    arms = len(shares)
    sums = np.zeros((3, reps, arms))  # shoppers, sum, sum of squares
    successes = np.zeros((reps, arms))
    declared = np.zeros(reps, dtype=bool)
    alpha = sequential.comparison_alpha(ALPHA, arms)
    for _ in range(days):
        for arm, share in enumerate(shares):
            new = rng.poisson(shoppers_per_day * share, size=reps)
            buyers = rng.binomial(new, min(rate * (1 + (lift if arm else 0)), 1))
            owner = np.repeat(np.arange(reps), buyers)
            values = 1.0 + rng.poisson(0.3, size=owner.size)
            if metric == "value":
                values = values * rng.lognormal(3.0, 1.0, size=owner.size)
            sums[0, :, arm] += new
            sums[1, :, arm] += np.bincount(owner, weights=values, minlength=reps)
            sums[2, :, arm] += np.bincount(owner, weights=values**2, minlength=reps)
            successes[:, arm] += buyers
        for rep in np.flatnonzero(~declared):
            estimates = [
                sequential.mean_estimate(
                    int(sums[0, rep, arm]),
                    sums[1, rep, arm],
                    sums[2, rep, arm],
                    int(successes[rep, arm]),
                )  # fmt: skip
                for arm in range(arms)
            ]
            for treatment in estimates[1:]:
                if test == "t":
                    difference = treatment.value - estimates[0].value
                    spread = math.sqrt(treatment.variance + estimates[0].variance)
                    declared[rep] |= spread > 0 and abs(difference) / spread > 1.96
                else:
                    decision = sequential.decide(estimates[0], treatment, alpha)
                    declared[rep] |= decision.state == "winner"
    return declared.mean()


@pytest.mark.parametrize(
    "setting",
    [
        {},
        {"shares": (0.8, 0.2), "metric": "value"},
        {"shares": (0.2, 0.8), "rate": 0.01, "shoppers_per_day": 600},
        {"shares": (1 / 3, 1 / 3, 1 / 3), "seed": 3},
    ],
    ids=["purchases 50/50", "value 80/20", "rare 20/80", "three arms"],
)
def test_an_a_a_experiment_looked_at_daily_declares_no_winner_in_95_percent(setting):
    assert simulate(**setting) <= 0.05


def test_the_simulation_would_catch_a_test_that_is_not_valid_under_peeking():
    # The same A/A experiments read daily with a fixed-horizon test: far above 5 %.
    assert simulate(test="t") > 0.15


def test_a_real_lift_is_detected():
    # +40 % on a 5 % conversion, 200 shoppers a day per arm: found in about 9 of 10 runs.
    assert simulate(rate=0.05, lift=0.4, shoppers_per_day=400, seed=1) >= 0.8


def test_click_through_rate_over_lists_declares_no_winner_in_an_a_a_experiment():
    rng = np.random.default_rng(7)
    reps, days, lists_per_day = 200, 30, 400
    declared = 0
    for _ in range(reps):
        sums = np.zeros((2, 6))  # per arm: shown, clicked, c*c, c*n, n*n, lists
        ever = False
        for _ in range(days):
            for arm in range(2):
                shown = 1 + rng.poisson(1.5, size=lists_per_day)
                # Lists differ in appeal (a shopper in the mood, or not): clustered clicks.
                clicked = rng.binomial(shown, rng.beta(1, 24, size=lists_per_day))
                sums[arm] += [
                    shown.sum(), clicked.sum(), (clicked**2).sum(), (clicked * shown).sum(),
                    (shown**2).sum(), lists_per_day,
                ]  # fmt: skip
            a, b = (
                sequential.ratio_estimate(s[0], s[1], s[0], (s[2], s[3], s[4]), s[1]) for s in sums
            )
            ever |= sequential.decide(a, b, ALPHA).state == "winner"
        declared += ever
    assert declared / reps <= 0.05
