import pytest
from django.core import checks
from django.test import override_settings


def ids(errors):
    return sorted({e.id for e in errors if e.id.startswith("recommender.")})


def run_checks():
    return checks.run_checks()


def test_the_demo_configuration_passes():
    assert ids(run_checks()) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "recommender.E001"),
        ("catalog_Product", "recommender.E001"),
        ("catalog.Missing", "recommender.E002"),
    ],
)
def test_a_missing_or_wrong_item_model(value, expected):
    with override_settings(RECOMMENDER_ITEM_MODEL=value):
        assert expected in ids(run_checks())


def test_a_missing_cache():
    with override_settings(RECOMMENDER={"CACHE_ALIAS": "nowhere"}):
        assert "recommender.E003" in ids(run_checks())


def test_an_unknown_storage():
    with override_settings(RECOMMENDER={"ARTIFACT_STORAGE": "nowhere"}):
        assert "recommender.E004" in ids(run_checks())


def test_an_unwritable_artifact_location(tmp_path):
    # A regular file where the folder should be cannot be written into, even by root.
    blocker = tmp_path / "media"
    blocker.write_text("not a folder")
    with override_settings(MEDIA_ROOT=str(blocker)):
        assert "recommender.E005" in ids(run_checks())


def test_unknown_settings_and_bad_dotted_paths():
    with override_settings(RECOMMENDER={"MAX_BATCH": 3, "ITEM_FILTER": "nowhere.at_all"}):
        found = ids(run_checks())
    assert "recommender.W001" in found and "recommender.E006" in found


def test_bad_event_kinds():
    with override_settings(RECOMMENDER={"EVENT_KINDS": []}):
        assert "recommender.E007" in ids(run_checks())


def messages(errors, check_id):
    return [e.msg for e in errors if e.id == check_id]


@pytest.mark.parametrize(
    ("recommender", "expected"),
    [
        (
            {"TRAINING": {"lrr": 1e-3}},
            'RECOMMENDER["TRAINING"]["lrr"]: unknown key; expected one of',
        ),
        ({"TRAINING": {"epochs": "ten"}}, 'RECOMMENDER["TRAINING"]["epochs"]: must be int'),
        ({"TRAINING": {"max_len": 20}}, 'RECOMMENDER["TRAINING"]["max_len"]: not a setting here'),
        (
            {"TRAINING": {"visit_start_share": 1.0}},
            'RECOMMENDER["TRAINING"]["visit_start_share"]: must be between 0 and 1',
        ),
        ({"CLEANING": {"min_item_cnt": 3}}, 'RECOMMENDER["CLEANING"]["min_item_cnt"]: unknown key'),
        ({"CLEANING": {"burst_kinds": "view"}}, 'RECOMMENDER["CLEANING"]["burst_kinds"]: must be'),
        ({"TRAIN_SCHEDULE": {"hours": "4"}}, 'RECOMMENDER["TRAIN_SCHEDULE"]["hours"]: unknown key'),
        (
            {"TRAIN_SCHEDULE": {"minute": "61"}},
            'RECOMMENDER["TRAIN_SCHEDULE"]: not a valid crontab',
        ),
        ({"TRAIN_SCHEDULE": "30 3 * * *"}, 'RECOMMENDER["TRAIN_SCHEDULE"]: must be a dict'),
        (
            {"PLACEMENTS": {"cart": {"diversty": 2}}},
            'RECOMMENDER["PLACEMENTS"]["cart"]["diversty"]: unknown key',
        ),
        (
            {"PLACEMENTS": {"cart": {"exclude_seen": "no"}}},
            'RECOMMENDER["PLACEMENTS"]["cart"]["exclude_seen"]: must be',
        ),
        ({"MODEL_CONFIG": {"dimm": 32}}, 'RECOMMENDER["MODEL_CONFIG"]["dimm"]: unknown key'),
        ({"MODEL_CONFIG": {"dim": "32"}}, 'RECOMMENDER["MODEL_CONFIG"]["dim"]: must be int'),
        ({"MODEL_CONFIG": {"summary": "max"}}, 'RECOMMENDER["MODEL_CONFIG"]: does not build'),
        (
            {"MODEL_CONFIG": {"max_len": 20}},
            'RECOMMENDER["MODEL_CONFIG"]["max_len"]: not a setting',
        ),
        ({"MODEL": "cnn_dnm"}, 'RECOMMENDER["MODEL"]: unknown model'),
        ({"MODEL": "hybrid"}, 'RECOMMENDER["MODEL"]: unknown model'),
        ({"HISTORY_LENGTH": 0}, 'RECOMMENDER["HISTORY_LENGTH"]: must be a whole number'),
    ],
)
def test_a_bad_key_or_type_inside_a_dict_setting_is_named(recommender, expected):
    with override_settings(RECOMMENDER=recommender):
        found = messages(run_checks(), "recommender.E010")
    assert any(message.startswith(expected) for message in found), found


def test_good_partial_dict_settings_pass():
    good = {
        "TRAINING": {"lr": 1e-3, "max_seconds": None, "num_threads": 2},
        "CLEANING": {"burst_kinds": ["view", "click"], "kind_weights": {"view": 0.5}},
        "TRAIN_SCHEDULE": {"hour": 4},
        "PLACEMENTS": {"home": {"diversity": 2, "exclude_seen": False}},
        "MODEL": "cnn",
        "MODEL_CONFIG": {"dim": 32, "dropout": 0, "dilations": [1, 2]},
    }
    with override_settings(RECOMMENDER=good):
        assert messages(run_checks(), "recommender.E010") == []


def test_checking_the_settings_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import os, sys, django; os.environ['DJANGO_SETTINGS_MODULE'] = 'shop_demo.settings';"
        "django.setup(); from django.core import checks; checks.run_checks();"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
