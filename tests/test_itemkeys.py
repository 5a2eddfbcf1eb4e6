"""Item keys at the JSON boundaries, in the demo store (integer keys).

UUID- and slug-keyed stores are run end to end in test_keyed_stores.py; here the integer
store keeps its JSON as it was (numbers), and text naming an item (a URL's, a template's)
finds the same item as the key itself.
"""

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from recommender import events, itemkeys, serving, training
from recommender.models import Recommendation
from shop_demo.catalog.models import Category, Product

from .serving_fixtures import install_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def shelf():
    category = Category.objects.create(name="C", slug="c")
    return [
        Product.objects.create(
            category=category, name=f"P{i}", slug=f"p{i}", price=Decimal("1.00"), stock=5
        )
        for i in range(12)
    ]


def test_integer_keys_stay_numbers_in_json_and_text_reads_back_as_the_key():
    assert itemkeys.integer_keys()
    assert itemkeys.to_json(7) == 7 and itemkeys.from_json(7) == 7
    assert itemkeys.from_json("7") == 7
    with pytest.raises(ValidationError):
        itemkeys.from_json("seven")


def test_lists_and_training_rows_hold_integer_keys_as_before(shelf):
    events.record_many([{"kind": "view", "item": p.pk} for p in shelf[:3]], session_key="s1")
    recs = serving.popular(limit=3)
    assert Recommendation.objects.get(pk=recs.recommendation_id).items[:3] == [
        p.pk for p in shelf[:3]
    ]
    assert {row[1] for row in training.export_interactions()} == {p.pk for p in shelf[:3]}


def test_similar_items_by_the_key_as_text_are_those_of_the_item(shelf):
    install_version(shelf)
    by_text = serving.similar(str(shelf[0].pk), limit=4)
    by_item = serving.similar(shelf[0], limit=4)
    assert len(by_text) == 4 and by_text.items == by_item.items


def test_a_text_that_names_no_item_is_a_bad_request(shelf):
    install_version(shelf)
    with pytest.raises(serving.BadRequest, match="not a valid item id"):
        serving.similar("no-such-item")


def test_items_excluded_by_their_key_as_text_are_left_out(shelf):
    install_version(shelf)
    events.record_many([{"kind": "view", "item": shelf[0].pk}], session_key="s1")
    first = serving.recommend(session_key="s1", limit=3).items[0]
    again = serving.recommend(session_key="s1", limit=3, exclude=[str(first.pk)])
    assert first not in again.items and len(again) == 3
