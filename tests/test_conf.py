import pytest
from django.core.files.storage import default_storage
from django.test import override_settings

from recommender.conf import DEFAULTS, RecommenderSettings, get_item_model, recommender_settings
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


def test_a_partial_train_schedule_keeps_the_default_minute():
    from recommender.schedule import periodic_tasks

    with override_settings(RECOMMENDER={"TRAIN_SCHEDULE": {"hour": "4"}}):
        assert recommender_settings.TRAIN_SCHEDULE == {"minute": "30", "hour": "4"}
        nightly = periodic_tasks()["recommender-train"]["schedule"]
    # Once a night at 04:30, not every minute from 04:00 to 04:59.
    assert nightly.minute == {30} and nightly.hour == {4}
    assert DEFAULTS["TRAIN_SCHEDULE"] == {"minute": "30", "hour": "3"}  # not changed in place


def test_partial_training_settings_keep_the_other_defaults():
    with override_settings(RECOMMENDER={"TRAINING": {"lr": 1e-3}}):
        assert recommender_settings.TRAINING == {
            "max_seconds": 900,
            "epochs": 60,
            "patience": 4,
            "lr": 1e-3,
        }


def test_nested_dicts_merge_and_other_values_replace():
    defaults = {"A": {"x": 1, "inner": {"p": 1, "q": 2}}, "B": [1, 2], "C": {}}
    settings = RecommenderSettings(defaults)
    with override_settings(RECOMMENDER={"A": {"inner": {"q": 3}}, "B": [3], "C": {"k": 1}}):
        assert settings.A == {"x": 1, "inner": {"p": 1, "q": 3}}
        assert settings.B == [3]
        assert settings.C == {"k": 1}


def test_a_run_keeps_the_defaults_its_settings_and_its_own_config_leave_unset():
    from recommender import training
    from recommender.models import ModelVersion

    with override_settings(RECOMMENDER={"TRAINING": {"lr": 1e-3}}):
        cfg = training._settings_for(ModelVersion(config={"TRAINING": {"epochs": 2}}))
        config = training.train_config_for(cfg)
    assert (config.lr, config.epochs, config.patience, config.max_seconds) == (1e-3, 2, 4, 900)


def test_one_setting_decides_the_history_length_of_training():
    from recommender import training
    from recommender.models import ModelVersion

    with override_settings(RECOMMENDER={"HISTORY_LENGTH": 7}):
        cfg = training._settings_for(ModelVersion(config={}))
        assert training.train_config_for(cfg).max_len == 7
        assert training.model_config_for(cfg)["max_len"] == 7
    with override_settings(RECOMMENDER={"MODEL_CONFIG": {"max_len": 9}}):
        cfg = training._settings_for(ModelVersion(config={}))
        with pytest.raises(training.TrainingError, match="HISTORY_LENGTH decides"):
            training.model_config_for(cfg)


def test_a_trained_model_reads_as_many_events_as_it_was_trained_on(db):
    from recommender import serving, training
    from recommender.ml import artifact
    from tests.store_data import FAST_CONFIG, make_catalogue, make_history

    make_history(make_catalogue())
    tiny = {**FAST_CONFIG, "TRAINING": {**FAST_CONFIG["TRAINING"], "epochs": 1}}
    with override_settings(RECOMMENDER={**tiny, "HISTORY_LENGTH": 7}):
        version = training.run_training(training.request_training().pk)
        with default_storage.open(version.artifact, "rb") as stored:
            config = artifact.load_artifact(stored).model_config
        # A net served alone holds max_len itself; blended with item-kNN, its net does.
        assert config.get("net_config", config)["max_len"] == 7
        assert serving.active_model.get().history_length == 7


def test_serving_reads_the_history_length_of_the_loaded_model_not_the_setting(
    db, catalog, monkeypatch
):
    """An artifact trained before HISTORY_LENGTH changed keeps reading its own length."""
    from recommender import events, serving
    from tests.serving_fixtures import install_version

    install_version(catalog, max_len=5)
    events.record_many([{"kind": "view", "item": p.pk} for p in catalog[:6]], session_key="s1")
    asked = []
    real = serving.shopper_activity

    def spy(*args, **kwargs):
        asked.append(kwargs.get("length"))
        return real(*args, **kwargs)

    monkeypatch.setattr(serving, "shopper_activity", spy)
    with override_settings(RECOMMENDER={"HISTORY_LENGTH": 50}):
        serving.recommend(session_key="s1", limit=3)
    assert asked == [5]


def test_the_built_in_kinds_are_the_ones_the_model_knows():
    """ml/ cannot import the app's settings: the two lists of built-in kinds must agree."""
    from recommender.conf import BUILTIN_EVENT_KINDS, event_kind_weights
    from recommender.ml import data
    from recommender.models import Event

    assert BUILTIN_EVENT_KINDS == data.KNOWN_KINDS
    assert [kind.value for kind in Event.Kind] == list(BUILTIN_EVENT_KINDS)
    assert event_kind_weights() == data.DEFAULT_KIND_WEIGHTS
    with override_settings(RECOMMENDER={"CLEANING": {"kind_weights": {"view": 0.5}}}):
        assert event_kind_weights()["view"] == 0.5
        assert event_kind_weights()["purchase"] == 1.0  # default_kind_weight
