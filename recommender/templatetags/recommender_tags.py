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
        '<script src="{}" data-endpoint="{}" data-csrf-token="{}" data-flush-ms="{}" defer></script>',
        static("recommender/tracker.js"),
        reverse("recommender:events"),
        token,
        int(flush_ms),
    )
