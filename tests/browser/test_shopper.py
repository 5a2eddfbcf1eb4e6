"""A shopper in a real browser: views recorded by the tracker change the next carousel."""

from collections import Counter

import pytest

from recommender import serving
from recommender.models import Event
from shop_demo.catalog.models import Product

from .conftest import check_and_capture, wait_until
from .shop_data import build_shop, department_history, train_first_version

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

HOME_CAROUSEL = 'section.rec-carousel[data-rec-placement="home"]'
VIEWS = 5


@pytest.fixture(autouse=True)
def fresh_process_state():
    serving.active_model.reset()
    yield
    serving.active_model.reset()


def carousel(page):
    """What the home carousel shows: its list attributes and its items, in order."""
    section = page.locator(HOME_CAROUSEL)
    section.wait_for()
    items = page.eval_on_selector_all(
        f"{HOME_CAROUSEL} .rec-carousel__item [data-rec-item]",
        "links => links.map(a => ({pk: Number(a.dataset.recItem),"
        " category: a.querySelector('.card-category').textContent.trim()}))",
    )
    return {
        "recommendation": section.get_attribute("data-rec-recommendation"),
        "source": section.get_attribute("data-rec-source"),
        "version": section.get_attribute("data-rec-version"),
        "items": items,
    }


def test_views_of_one_category_steer_the_home_carousel_and_clicks_are_attributed(page):
    build_shop()
    department_history()
    version = train_first_version()
    diversity = serving.placement_rules("home")["diversity"]

    page.goto("/")
    before = carousel(page)
    assert len(before["items"]) == 10 and before["source"] == "popular"
    shown_before = Counter(item["category"] for item in before["items"])

    # The category the carousel shows least (popularity cannot point at it) is the one we browse.
    sellable = Product.objects.sellable().select_related("category")
    departments = sorted({p.category.name for p in sellable})
    wanted = min(departments, key=lambda name: (shown_before[name], name))
    viewed = list(sellable.filter(category__name=wanted).order_by("pk")[:VIEWS])
    for product in viewed:
        page.goto(product.get_absolute_url())  # leaving each page flushes its view (sendBeacon)
        assert page.locator("main").get_attribute("data-rec-view") == str(product.pk)
    page.evaluate("window.recommenderTracker.flush()")  # the last page's view, without leaving
    wait_until(
        lambda: Event.objects.filter(kind="view").exclude(page="").count() >= VIEWS,
        message=f"the tracker's {VIEWS} views to be stored",
    )
    views = list(Event.objects.filter(kind="view").exclude(page="").order_by("occurred_at"))
    assert [e.item_id for e in views] == [p.pk for p in viewed]
    assert (
        len({e.session_key for e in views}) == 1
        and views[0].session_key
        and views[0].user_id is None
    )

    page.goto("/")
    after = carousel(page)
    assert after["source"] == "model" and after["version"] == str(version.pk)
    assert after["recommendation"] and after["recommendation"] != before["recommendation"]
    shown_after = Counter(item["category"] for item in after["items"])
    # The model ranks the browsed category first: the top slots, up to the placement's
    # per-category cap, are all of it, and it is shown more than before.
    assert [item["category"] for item in after["items"][:diversity]] == [wanted] * diversity, after[
        "items"
    ]
    assert shown_after[wanted] == diversity > shown_before[wanted]
    assert not {item["pk"] for item in after["items"]} & {
        p.pk for p in viewed
    }  # seen items are not offered
    assert not page.js_errors

    check_and_capture(page, "home")

    first = page.locator(f"{HOME_CAROUSEL} .rec-carousel__item [data-rec-item]").first
    clicked_pk = int(first.get_attribute("data-rec-item"))
    with page.expect_navigation():
        first.click()
    assert page.locator("main").get_attribute("data-rec-view") == str(clicked_pk)
    page.evaluate("window.recommenderTracker.flush()")
    click = wait_until(
        lambda: Event.objects.filter(kind="click").first(), message="the click event"
    )
    assert click.item_id == clicked_pk and click.placement == "home" and click.page == "/"
    assert str(click.recommendation_id) == after["recommendation"]
    assert click.session_key == views[0].session_key

    check_and_capture(page, "product")
    assert not page.js_errors
