"""The demo store's business rules, named in settings.RECOMMENDER as dotted paths."""

from django.urls import reverse


def sellable_products(queryset):
    """Only active, in-stock products may be recommended."""
    return queryset.filter(is_active=True, stock__gt=0).select_related("category")


def active_products(queryset):
    """Events may be recorded for any active product, in stock or not."""
    return queryset.filter(is_active=True)


def product_as_json(product):
    """The API's view of a product (RECOMMENDER["ITEM_SERIALIZER"])."""
    return {
        "id": product.pk,
        "name": product.name,
        "price": str(product.price),
        "category": product.category_id,
        "url": product.get_absolute_url(),
        "image": reverse("catalog:product_image", args=[product.slug]),
    }
