import pytest
from django.test import override_settings

from recommender.conf import DEFAULTS, get_item_model, recommender_settings
from shop_demo.catalog.models import Product
from shop_demo.catalog.rules import sellable_products


def test_defaults_apply_when_not_overridden():
    with override_settings(RECOMMENDER={}):
        for name, default in DEFAULTS.items():
            assert getattr(recommender_settings, name) == default


def test_overrides_take_effect_and_are_dropped_afterwards():
    with override_settings(RECOMMENDER={"MAX_BATCH_SIZE": 7}):
        assert recommender_settings.MAX_BATCH_SIZE == 7
    assert recommender_settings.MAX_BATCH_SIZE == DEFAULTS["MAX_BATCH_SIZE"]


def test_dotted_paths_are_imported():
    assert recommender_settings.ITEM_FILTER is sellable_products


def test_unknown_names_raise():
    with pytest.raises(AttributeError, match="Unknown RECOMMENDER setting"):
        recommender_settings.NOT_A_SETTING  # noqa: B018


def test_item_model_is_the_stores():
    assert get_item_model() is Product
