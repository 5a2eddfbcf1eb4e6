"""Template tags: rendered carousels, escaping, overrides, and no torch at import."""

import re
import subprocess
import sys
from decimal import Decimal

import pytest
from django.template import Context, Template
from django.test import RequestFactory

from recommender import events, serving
from shop_demo.catalog.models import Category, Product

from .serving_fixtures import install_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def shelf():
    category = Category.objects.create(name="C", slug="c")
    products = [
        Product.objects.create(
            category=category, name=f"P{i}", slug=f"p{i}", price=Decimal(1), stock=3
        )
        for i in range(12)
    ]
    products.append(
        Product.objects.create(
            category=category, name="<script>alert(1)</script>", slug="evil", price=1, stock=3
        )
    )
    install_version(products)
    return products


def render(source, **context):
    request = RequestFactory().get("/")
    request.session = {"recommender_shopper": "s1"}
    request.user = __import__(
        "django.contrib.auth.models", fromlist=["AnonymousUser"]
    ).AnonymousUser()
    return Template("{% load recommender_tags %}" + source).render(
        Context({"request": request, **context})
    )


def test_a_carousel_of_recommendations_carries_attribution(shelf):
    events.record_many([{"kind": "view", "item": p.pk} for p in shelf[:3]], session_key="s1")
    html = render(
        '{% recommended_products limit=4 placement="product" as products %}'
        '{% product_carousel products title="For you" placement="product" %}'
    )
    recs = serving.recommend(session_key="s1", limit=4, placement="product")
    assert f'data-rec-recommendation="{recs.recommendation_id}"' in html
    assert (
        'data-rec-placement="product"' in html and f'data-rec-version="{recs.version_id}"' in html
    )
    assert html.count('class="rec-carousel__item"') == 4 and 'aria-label="For you"' in html
    for item in recs.items:
        assert f'data-rec-item="{item.pk}"' in html


def test_product_names_are_escaped(shelf):
    # A title from a variable is escaped too (literals in templates are the author's own).
    html = render(
        "{% product_carousel products title=title %}", products=[shelf[-1]], title="<b>t</b>"
    )
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>t</b>" not in html


def test_reasons_show_only_when_asked_and_are_escaped(shelf):
    evil = shelf[-1]
    events.record_many([{"kind": "view", "item": evil.pk}], session_key="s1")
    recs = serving.recommend(session_key="s1", limit=4)
    assert recs.source == "model" and {r.item.pk for r in recs.reasons if r} == {evil.pk}
    plain = render("{% recommended_products limit=4 as products %}{% product_carousel products %}")
    assert "Because you" not in plain and "rec-carousel__reason" not in plain
    html = render(
        "{% recommended_products limit=4 as products %}"
        "{% product_carousel products show_reasons=True %}"
    )
    shown = sum(r is not None for r in recs.reasons)
    assert html.count('<p class="rec-carousel__reason">') == shown > 0
    assert (
        html.count(
            'Because you viewed <span class="rec-carousel__reason-item">'
            "&lt;script&gt;alert(1)&lt;/script&gt;</span>"
        )
        == shown
    )
    assert "<script>alert" not in html


def test_the_reasons_wording_follows_the_shoppers_event(shelf):
    kinds = ["view", "click", "add_to_cart", "purchase", "wishlist"]
    given = [serving.Reason(shelf[7], kind) for kind in kinds] + [None]
    recs = serving.RecommendationList(shelf[:6], reasons_of=lambda items: given)
    html = render("{% product_carousel products show_reasons=True %}", products=recs)
    reasons = re.findall(r'<p class="rec-carousel__reason">(.*?)</p>', html)
    assert [re.sub(r"<[^>]+>", "", reason) for reason in reasons] == [
        "Because you viewed P7",
        "Because you viewed P7",
        "Because you added P7 to your cart",
        "Because you bought P7",
        "Because of P7",
    ]
    assert html.count('class="rec-carousel__item"') == 6


def test_the_store_overrides_the_item_template(shelf):
    html = render(
        "{% similar_products product limit=3 as items %}{% product_carousel items %}",
        product=shelf[0],
    )
    assert 'class="card' in html and "image.svg" in html  # the demo's product card


def test_an_empty_list_renders_nothing():
    assert render("{% product_carousel products %}", products=[]).strip() == ""


def test_a_failing_service_never_breaks_the_page(shelf, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(serving, "recommend", broken)
    html = render("{% recommended_products as products %}{% product_carousel products %}ok")
    assert html.strip() == "ok"


def test_importing_views_admin_and_tags_does_not_import_torch():
    code = (
        "import os, sys, django; os.environ['DJANGO_SETTINGS_MODULE'] = 'shop_demo.settings'; django.setup();"
        "import recommender.api.views, recommender.admin, recommender.templatetags.recommender_tags, "
        "recommender.serving, shop_demo.catalog.views, shop_demo.urls;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
