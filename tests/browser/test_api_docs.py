"""The API's Swagger UI renders with no request leaving the site, with no schema settings."""

from urllib.parse import urlsplit

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def no_schema_settings(settings):
    """A store that set neither DRF's DEFAULT_SCHEMA_CLASS nor SPECTACULAR_SETTINGS."""
    settings.REST_FRAMEWORK = {
        key: value
        for key, value in settings.REST_FRAMEWORK.items()
        if key != "DEFAULT_SCHEMA_CLASS"
    }
    del settings.SPECTACULAR_SETTINGS


def test_swagger_ui_renders_offline_without_schema_settings(page, live_server, no_schema_settings):
    site = urlsplit(live_server.url).netloc
    left = []

    def only_the_site(route):
        if urlsplit(route.request.url).netloc == site:
            route.continue_()
        else:
            left.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_site)
    response = page.goto("/api/recommender/docs/")
    assert response.status == 200
    page.locator(".swagger-ui .info .title", has_text="recommender API").wait_for()
    page.locator(".opblock-summary-path", has_text="/api/recommender/events/").first.wait_for()
    assert page.locator(".opblock").count() >= 7
    assert left == [] and page.js_errors == []
    schema = page.request.get("/api/recommender/schema/?format=json")
    assert schema.status == 200 and "/api/recommender/popular/" in schema.json()["paths"]
