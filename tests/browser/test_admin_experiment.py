"""An experiment's page in a real browser: verdict, arms, charts; then promote the winner.

With ``RECOMMENDER_SCREENSHOTS=docs/screenshots`` it also writes the documentation's
screenshot of the page (``admin-experiment.png``).
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from recommender.models import ModelVersion

from ..experiment_data import arm, make_experiment, populate, ready_version
from .conftest import check_and_capture, save_docs_screenshot, sign_in_to_admin

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_read_an_experiment_and_promote_its_winner(page, catalog):
    serving = ready_version(model_name="hybrid")
    serving.activate()
    challenger = ready_version(model_name="attention+knn")
    start = timezone.now() - timedelta(days=13, hours=20)
    experiment = make_experiment(
        name="Attention model against the served hybrid",
        arms=[("A", serving, 50), ("B", challenger, 50)],
        placements=["home", "product"],
        started_at=start,
    )
    items = catalog[:6]
    populate(arm(experiment, "A"), items, shoppers=1400, clickers=420, buyers=56, start=start, days=13.8)  # fmt: skip
    populate(arm(experiment, "B"), items, shoppers=1400, clickers=500, buyers=120, start=start, days=13.8, seed=1)  # fmt: skip
    sign_in_to_admin(page)
    page.goto(f"/admin/recommender/experiment/{experiment.pk}/change/")

    verdict = page.locator("#experiment-verdict .rec-verdict").inner_text()
    assert verdict.startswith("B beats A on purchases per shopper, +") and verdict.endswith("95 %.")
    assert (
        page.locator("#experiment-arms th[data-arm='B'] .rec-badge-active").text_content()
        == "winner"
    )
    assert page.locator("#experiment-charts svg.rec-chart").count() == 6
    # Every arm on every metric, and the lift: each with its band.
    assert page.locator("#experiment-charts g.band path").count() == 11
    check_and_capture(page, "admin-experiment")
    save_docs_screenshot(page, "admin-experiment", until="#experiment-charts")
    assert page.js_errors == []

    with page.expect_navigation():
        page.click(f"#experiment-promote-{arm(experiment, 'B').pk}")
    assert "becomes the active version" in page.locator("#experiment-promote-effect").inner_text()
    with page.expect_navigation():
        page.click("#experiment-promote-confirm")
    assert (
        f"v{challenger.pk} is now the active version" in page.locator(".messagelist").inner_text()
    )
    assert ModelVersion.objects.get(is_active=True).pk == challenger.pk
    assert page.locator("#experiment-verdict .rec-badge").first.text_content() == "stopped"
