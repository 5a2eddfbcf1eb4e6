"""The demo store's business rules, named in settings.RECOMMENDER as dotted paths."""


def sellable_products(queryset):
    """Only active, in-stock products may be recommended."""
    return queryset.filter(is_active=True, stock__gt=0)


def active_products(queryset):
    """Events may be recorded for any active product, in stock or not."""
    return queryset.filter(is_active=True)


def product_category(product):
    return product.category_id
