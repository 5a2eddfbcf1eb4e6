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
