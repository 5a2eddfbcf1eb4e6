"""The documentation tells the truth about settings, and its links resolve.

Every ``RECOMMENDER`` key the settings reference documents is in ``conf.DEFAULTS`` with
the same default, every key of ``DEFAULTS`` is documented, and every setting-like name any
page or the README mentions exists (a README once named a setting that never did).
"""

import ast
import re
from pathlib import Path

import pytest
from django.conf import global_settings

from recommender.conf import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]
SETTINGS_PAGE = DOCS / "settings.md"

# Upper-case names the docs may mention that are not RECOMMENDER keys: Django's own
# settings, those of DRF, drf-spectacular and Celery, and environment variables.
OTHER_NAMES = set(dir(global_settings)) | {
    "RECOMMENDER",
    "RECOMMENDER_ITEM_MODEL",
    "REST_FRAMEWORK",
    "DEFAULT_SCHEMA_CLASS",
    "EXCEPTION_HANDLER",
    "NUM_PROXIES",
    "SPECTACULAR_SETTINGS",
    "CELERY_BROKER_URL",
    "CELERY_BEAT_SCHEDULER",
    "CELERY_TASK_ROUTES",
    "DJANGO_DEBUG",
    "DJANGO_SECRET_KEY",
    "TEST_POSTGRES_URL",
    "TEST_REDIS_URL",
    "RECOMMENDER_REQUIRE_SERVICES",
    "RECOMMENDER_PSEUDONYM_KEY",
    "LOGGING",
}


def documented_settings():
    """``{name: default}`` from the reference's ``### `NAME` `` headings."""
    found = {}
    text = SETTINGS_PAGE.read_text()
    for match in re.finditer(r"^### `([A-Z0-9_]+)`\n\nDefault: `(.+)`$", text, re.M):
        found[match.group(1)] = ast.literal_eval(match.group(2))
    return found


def test_the_settings_reference_documents_exactly_the_defaults():
    documented = documented_settings()
    assert sorted(set(DEFAULTS) - set(documented)) == [], "undocumented settings"
    assert sorted(set(documented) - set(DEFAULTS)) == [], "documented settings that do not exist"
    for name, default in documented.items():
        assert default == DEFAULTS[name], f"{name}: the docs say {default!r}"


def named_settings(text):
    """Setting-like names: RECOMMENDER dict keys in code, and `UPPER_CASE` names in prose."""
    names = set()
    for opening in re.finditer(r"^( *)RECOMMENDER = \{$", text, re.M):
        closing = re.compile(rf"^{opening.group(1)}\}}", re.M).search(text, opening.end())
        block = text[opening.end() : closing.start()]
        names |= set(re.findall(r'^\s*"([A-Z][A-Z0-9_]+)":', block, re.M))
    names |= set(re.findall(r'RECOMMENDER\["([A-Z][A-Z0-9_]+)"\]', text))
    names |= set(re.findall(r"`([A-Z][A-Z0-9]*_[A-Z0-9_]+)`", text))
    names |= set(re.findall(r'`"([A-Z][A-Z0-9]*_[A-Z0-9_]+)":', text))
    return names


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_setting_a_page_names_exists(page):
    unknown = named_settings(page.read_text()) - set(DEFAULTS) - OTHER_NAMES
    assert sorted(unknown) == []


def test_the_check_catches_the_setting_the_old_readme_named():
    old = 'RECOMMENDER = {\n    "ITEM_CATEGORY": "shop.rules.product_category",\n}'
    assert named_settings(old) - set(DEFAULTS) == {"ITEM_CATEGORY"}


def relative_links(text):
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"^[a-z]+:", target) and not target.startswith("#"):
            yield target.split("#")[0]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_resolves(page):
    broken = [
        target for target in relative_links(page.read_text()) if not (page.parent / target).exists()
    ]
    assert broken == []


def test_the_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme) < 5_000
    assert "make demo" in readme and "make test" in readme and "docs/screenshots/" in readme
