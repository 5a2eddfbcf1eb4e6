from django.apps import AppConfig


class CatalogConfig(AppConfig):
    name = "shop_demo.catalog"
    label = "catalog"
    verbose_name = "Demo catalogue"
    default_auto_field = "django.db.models.BigAutoField"
