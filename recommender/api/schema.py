"""The API's own OpenAPI schema and Swagger UI, working with none of the store's settings.

A store need not set DRF's ``DEFAULT_SCHEMA_CLASS`` nor ``SPECTACULAR_SETTINGS``: the
views here describe this app's endpoints only (the store's own DRF views may use any
schema class), and the Swagger UI is served from the installed sidecar package, so no
request leaves the site (``drf_spectacular_sidecar`` must be in ``INSTALLED_APPS``).
"""

from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.settings import patched_settings, spectacular_settings
from drf_spectacular.utils import extend_schema as spectacular_extend_schema
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView, _get_sidecar_url

from .. import __version__
from .throttles import ShopperRateThrottle

TITLE = "recommender API"


def extend_schema(**kwargs):
    """drf-spectacular's ``extend_schema``, based on its AutoSchema whatever the site's default.

    The decorator builds its schema class at import time from ``DEFAULT_SCHEMA_CLASS``;
    a store that never set it would get DRF's own AutoSchema, which cannot describe
    anything to drf-spectacular (``schema/`` answered 500).
    """

    def decorator(method):
        method.kwargs = {"schema": AutoSchema}
        return spectacular_extend_schema(**kwargs)(method)

    return decorator


class RecommenderSchemaGenerator(SchemaGenerator):
    """Only this app's endpoints, wherever the store includes its URLs."""

    def _initialise_endpoints(self):
        super()._initialise_endpoints()
        self.endpoints = [
            endpoint
            for endpoint in self.endpoints
            if getattr(endpoint[3], "cls", None) is not None
            and endpoint[3].cls.__module__ == "recommender.api.views"
        ]


class SchemaView(SpectacularAPIView):
    # Generating the schema costs real CPU: throttled like the read endpoints.
    throttle_classes = [ShopperRateThrottle]
    generator_class = RecommenderSchemaGenerator
    custom_settings = {"TITLE": TITLE, "VERSION": __version__}


class SwaggerView(SpectacularSwaggerView):
    """Swagger UI from the sidecar's static files, never a CDN."""

    title = TITLE

    def get(self, request, *args, **kwargs):
        # Swagger UI's validator badge would fetch validator.swagger.io: off.
        ui_settings = {**spectacular_settings.SWAGGER_UI_SETTINGS, "validatorUrl": None}
        with patched_settings({"SWAGGER_UI_SETTINGS": ui_settings}):
            return super().get(request, *args, **kwargs)

    @staticmethod
    def _swagger_ui_resource(filename):
        return _get_sidecar_url(f"swagger-ui-dist/{filename}")

    @staticmethod
    def _swagger_ui_favicon():
        return _get_sidecar_url("swagger-ui-dist/favicon-32x32.png")
