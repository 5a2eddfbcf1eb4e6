"""Template tags of the recommender. ``{% load recommender_tags %}``."""

from django import template
from django.middleware.csrf import get_token
from django.templatetags.static import static
from django.urls import reverse
from django.utils.html import format_html

register = template.Library()


@register.simple_tag(takes_context=True)
def recommender_tracker(context, flush_ms=2000):
    """The tracker script, told where to send events and the page's CSRF token.

    Put it once per page, before ``</body>``.
    """
    request = context.get("request")
    token = get_token(request) if request is not None else ""
    return format_html(
        '<script src="{}" data-endpoint="{}" data-impressions-endpoint="{}" data-csrf-token="{}" '
        'data-flush-ms="{}" defer></script>',
        static("recommender/tracker.js"),
        reverse("recommender:events"),
        reverse("recommender:impressions"),
        token,
        int(flush_ms),
    )


def _shopper(context):
    from ..shoppers import shopper_of

    request = context.get("request")
    if request is None:
        return {"user": None, "session_key": ""}
    return shopper_of(request, create=False)


def _safely(make_list, what):
    """A carousel must never break the page: on an error, log it and show nothing."""
    import logging

    from ..serving import BadRequest, RecommendationList

    try:
        return make_list()
    except BadRequest as exc:  # the template asks for something the settings do not allow
        logging.getLogger("recommender").error("Could not compute %s: %s", what, exc)
    except Exception:
        logging.getLogger("recommender").exception("Could not compute %s", what)
    return RecommendationList([])


@register.simple_tag(takes_context=True)
def recommended_products(context, limit=8, placement="", category=None):
    """``{% recommended_products limit=8 placement="home" as products %}``: for this shopper."""
    from .. import serving

    return _safely(
        lambda: serving.recommend(
            **_shopper(context), limit=limit, placement=placement, category=category
        ),
        "recommendations",
    )


# The item and popular tags take the context for the shopper: in an experiment's
# placement, their arm decides what is shown.


@register.simple_tag(takes_context=True)
def similar_products(context, item, limit=8, placement=""):
    """``{% similar_products product as products %}``: closest items by learned embedding."""
    from .. import serving

    return _safely(
        lambda: serving.similar(item, limit=limit, placement=placement, **_shopper(context)),
        "similar items",
    )


@register.simple_tag(takes_context=True)
def bought_together(context, item, limit=8, placement=""):
    """``{% bought_together product as products %}``: what buyers of this item also bought."""
    from .. import serving

    return _safely(
        lambda: serving.bought_together(
            item, limit=limit, placement=placement, **_shopper(context)
        ),
        "bought together",
    )


@register.simple_tag(takes_context=True)
def popular_products(context, limit=8, placement="", category=None, window="popular"):
    """``{% popular_products limit=8 as products %}``: popular or trending items."""
    from .. import serving

    return _safely(
        lambda: serving.popular(
            limit=limit,
            placement=placement,
            category=category,
            window=window,
            **_shopper(context),
        ),
        "popular items",
    )


@register.inclusion_tag("recommender/carousel.html")
def product_carousel(
    products,
    title="Recommended for you",
    placement=None,
    item_template="recommender/carousel_item.html",
    show_reasons=False,
):
    """An accessible, scrollable row of products carrying the recommendation's id (and, in
    an experiment, its arm: ``data-rec-arm``).

    Override ``recommender/carousel_item.html`` in your templates to render your items.
    ``show_reasons=True`` puts "Because you viewed <item>" under each personal
    recommendation that has a reason (``recommender/carousel_reason.html`` words it).
    """
    items = list(products or [])
    reasons = list(getattr(products, "reasons", None) or []) if show_reasons else []
    reasons += [None] * (len(items) - len(reasons))
    return {
        "products": items,
        "entries": list(zip(items, reasons, strict=False)),
        "title": title,
        "placement": placement if placement is not None else getattr(products, "placement", ""),
        "recommendation_id": getattr(products, "recommendation_id", None) or "",
        "version_id": getattr(products, "version_id", None),
        "arm_id": getattr(products, "arm_id", None),
        "source": getattr(products, "source", ""),
        "item_template": item_template,
    }
