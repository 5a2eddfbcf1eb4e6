"""Always-valid inference for experiments: a mixture sequential probability ratio test.

Why this test. A store owner opens the experiment page every day and acts on what it
says. A fixed-horizon test (a t-test at 95 %) read daily declares a false winner far more
often than 5 % of the time: with 30 looks, about a quarter of A/A experiments would show
"significant" on some day. The mixture sequential probability ratio test (mSPRT) of
Johari, Pekelis and Walsh, "Always valid inference: continuous monitoring of A/B tests"
(Operations Research 70(3), 2022; arXiv 1512.04922, 2015) keeps its error rate however
often it is read: its likelihood ratio is a martingale under the null hypothesis, so by
Ville's inequality the chance that it *ever* crosses 1/alpha is at most alpha. The
owner may look daily, stop when it declares, or run on: the 5 % holds for all of it.

What is tested. The relative lift of a treatment arm over the control, on the log scale:
``theta = log(mean_B / mean_A)``. Its estimate ``log(m_B) - log(m_A)`` is asymptotically
normal with variance ``V = var(m_B)/m_B**2 + var(m_A)/m_A**2`` (delta method), where
``var(m)`` is the variance of the arm's estimated mean (per-shopper variance / shoppers).
The log scale makes the prior free of units: the same prior suits purchases per shopper,
purchase value per shopper and click-through rate.

The prior (the "mixture"). Under the alternative the log-lift is drawn from
``N(0, tau**2)`` with ``tau = MIXTURE_SD = 0.2``: lifts of roughly -20 % to +20 % are
typical, larger ones possible. The mixture likelihood ratio for the normal estimate is

    Lambda = sqrt(V / (V + tau**2)) * exp(tau**2 * theta**2 / (2 * V * (V + tau**2)))

and the test declares when ``Lambda >= 1 / alpha``. Inverting it gives an always-valid
confidence interval (every theta0 the test would not reject),

    theta +- sqrt(2 * V * (V + tau**2) / tau**2 * (log(1/alpha) + log((V + tau**2) / V) / 2))

which is wider than a fixed-horizon interval (the price of peeking) and narrows as the
data grow; the relative lift's interval is ``exp`` of its ends, minus one. ``tau`` sets
where the test is sharpest: near the sample where ``V`` is about ``tau**2 / 10``.

Where the guarantee needs care. The variance is estimated from the data (a plug-in, as in
Johari et al.'s deployed version), so the guarantee is asymptotic: it needs enough
shoppers and enough of them converting for the normal approximation to hold. Hence the
minimum sample (``needed_units``): no verdict before every arm has ``MIN_UNITS`` units and
``MIN_SUCCESSES`` units with a non-zero value (shoppers who purchased, clicks). Holding a
verdict back is itself a stopping rule, so it can only lower the error rate. The seeded A/A
simulation in ``tests/test_sequential.py`` checks the whole rule, looked at daily.

More than two arms: each treatment is compared with the control (the first arm) at
``alpha / (arms - 1)`` (Bonferroni), so the chance of any false winner stays at most alpha.

This module is pure Python (no Django): the admin and the tests' simulation call the same
functions.
"""

import math
from dataclasses import dataclass

# Standard deviation of the log-lift under the alternative (the normal mixture's prior).
MIXTURE_SD = 0.2
# The minimum sample: units (shoppers, or impressions for CTR) and units with a non-zero
# value (converting shoppers, clicks) every arm needs before any verdict.
MIN_UNITS = 100
MIN_SUCCESSES = 30


@dataclass(frozen=True)
class Estimate:
    """One arm's metric: its value, the variance of that value, and how much data it rests on.

    ``units`` are the denominator's units (exposed shoppers, or impressions for CTR);
    ``successes`` how many of them have a non-zero value (shoppers with a purchase, clicks).
    """

    value: float
    variance: float
    units: int
    successes: int


def mean_estimate(units, total, total_squares, successes):
    """The mean of a per-unit value from its sums: ``units`` n, ``total`` sum(x), sum(x**2).

    Units without any event count as zeros (they are in ``units`` but add nothing to the
    sums), so the mean is per exposed shopper, not per active one.
    """
    if units <= 0:
        return Estimate(0.0, 0.0, 0, 0)
    mean = total / units
    spread = max(total_squares / units - mean * mean, 0.0)
    if units > 1:
        spread *= units / (units - 1)
    return Estimate(mean, spread / units, units, successes)


def ratio_estimate(units, numerator, denominator, sums, successes):
    """A ratio of sums over clusters, e.g. clicks / impressions over recommendation lists.

    ``sums`` holds ``(sum num**2, sum num*den, sum den**2)`` over the clusters. The
    variance is the delta method's for a ratio of cluster totals, which lets the clicks
    of one list (one shopper looking more than once) be correlated. ``units`` is the
    denominator's total (impressions), the scale the minimum sample is stated in.
    """
    if denominator <= 0:
        return Estimate(0.0, 0.0, int(units), int(successes))
    ratio = numerator / denominator
    num_sq, num_den, den_sq = sums
    residual = max(num_sq - 2 * ratio * num_den + ratio * ratio * den_sq, 0.0)
    return Estimate(ratio, residual / denominator**2, int(units), int(successes))


def _half_width(variance, alpha, tau):
    """Half the width of the always-valid interval of a normal estimate with ``variance``."""
    tau2 = tau * tau
    return math.sqrt(
        2
        * variance
        * (variance + tau2)
        / tau2
        * (math.log(1 / alpha) + 0.5 * math.log((variance + tau2) / variance))
    )


def likelihood_ratio(theta, variance, tau=MIXTURE_SD):
    """The mixture likelihood ratio of ``theta`` (an estimate, null value 0) with ``variance``."""
    tau2 = tau * tau
    exponent = tau2 * theta * theta / (2 * variance * (variance + tau2))
    return math.sqrt(variance / (variance + tau2)) * math.exp(min(exponent, 700.0))


def interval(estimate, alpha, tau=MIXTURE_SD):
    """Always-valid interval ``(low, high)`` of one arm's value, or None without data.

    Built on the log scale like the lift's (so it stays above zero); None when the value
    is zero or its variance unknown, as with no conversions yet.
    """
    if estimate.value <= 0 or estimate.variance <= 0:
        return None
    variance = estimate.variance / estimate.value**2
    half = _half_width(variance, alpha, tau)
    centre = math.log(estimate.value)
    return math.exp(centre - half), math.exp(centre + half)


@dataclass(frozen=True)
class Comparison:
    """A treatment against the control: relative lift, its interval, the always-valid p."""

    lift: float
    low: float
    high: float
    p_value: float
    alpha: float

    @property
    def significant(self):
        return self.p_value <= self.alpha


def compare(control, treatment, alpha, tau=MIXTURE_SD):
    """The treatment's relative lift over the control, with its always-valid interval.

    None when either value is zero or has no variance (nothing to take a ratio of yet).
    The p-value is ``1 / Lambda`` (at most 1): it is below ``alpha`` exactly when the
    interval leaves out zero lift.
    """
    if min(control.value, treatment.value) <= 0:
        return None
    variance = treatment.variance / treatment.value**2 + control.variance / control.value**2
    if variance <= 0:
        return None
    theta = math.log(treatment.value / control.value)
    half = _half_width(variance, alpha, tau)
    p_value = min(1.0, 1.0 / likelihood_ratio(theta, variance, tau))
    return Comparison(
        lift=math.expm1(theta),
        low=math.expm1(theta - half),
        high=math.expm1(theta + half),
        p_value=p_value,
        alpha=alpha,
    )


def needed_units(estimates, min_units=MIN_UNITS, min_successes=MIN_SUCCESSES):
    """Units per arm the minimum sample asks for, or None while an arm has no success yet.

    Every arm needs ``min_units`` units and ``min_successes`` of them with a non-zero
    value; the second is turned into units at each arm's own success rate so far, and the
    arm that needs most sets the number. (A rate pooled over the arms would understate it
    whenever the arms differ: the weaker arm, short of successes, would already have the
    units the pooled rate asks for, and the page would read "400 of the 240 needed".)
    With no success in an arm its rate is unknown, and so is the number.
    """
    if not estimates or any(e.successes <= 0 for e in estimates):
        return None
    return max(min_units, *(math.ceil(min_successes * e.units / e.successes) for e in estimates))


def has_minimum_sample(estimates, min_units=MIN_UNITS, min_successes=MIN_SUCCESSES):
    """Whether every arm has the units and the non-zero units the test needs."""
    return all(e.units >= min_units and e.successes >= min_successes for e in estimates)


def comparison_alpha(alpha, arms):
    """The alpha of each treatment-versus-control comparison (Bonferroni over the treatments)."""
    return alpha / max(arms - 1, 1)


@dataclass(frozen=True)
class Decision:
    """What the test says today about one treatment against the control.

    ``state`` is ``"waiting"`` (minimum sample not reached: ``needed`` units per arm),
    ``"winner"`` (the interval of ``comparison`` leaves out zero: the treatment wins when
    its lift is positive, the control when negative) or ``"no winner"``.
    """

    state: str
    needed: int | None
    comparison: Comparison | None


def decide(
    control, treatment, alpha, tau=MIXTURE_SD, min_units=MIN_UNITS, min_successes=MIN_SUCCESSES
):
    """Today's decision between two arms; ``alpha`` is this comparison's (Bonferroni'd) own."""
    needed = needed_units([control, treatment], min_units, min_successes)
    if not has_minimum_sample([control, treatment], min_units, min_successes):
        return Decision("waiting", needed, compare(control, treatment, alpha, tau))
    comparison = compare(control, treatment, alpha, tau)
    if comparison is not None and comparison.significant:
        return Decision("winner", needed, comparison)
    return Decision("no winner", needed, comparison)


def units_to_detect(relative_variance, lift, alpha, tau=MIXTURE_SD):
    """Units per arm at which a true relative ``lift`` would reach the test's boundary.

    ``relative_variance`` is a unit's variance over the squared mean (the squared
    coefficient of variation; about ``1 / rate`` for a rare conversion). Planning only:
    it says how long an experiment of this traffic needs to see ``lift``, nothing more.
    """
    theta = abs(math.log1p(lift))
    if theta == 0 or relative_variance <= 0:
        return None
    low, high = 1, 1
    while _half_width(2 * relative_variance / high, alpha, tau) > theta:
        high *= 2
        if high > 10**12:
            return None
    while low < high:
        middle = (low + high) // 2
        if _half_width(2 * relative_variance / middle, alpha, tau) > theta:
            low = middle + 1
        else:
            high = middle
    return high
