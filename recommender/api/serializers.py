"""Request and response shapes of the API, for validation errors and the OpenAPI schema.

Event validation itself lives in ``recommender.events`` (the one write path); these
serializers only describe the payloads.
"""

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers


class EventInSerializer(serializers.Serializer):
    kind = serializers.CharField(
        help_text="view, click, add_to_cart, remove_from_cart, purchase, or a kind the store added."
    )
    item = serializers.CharField(help_text="Primary key of the store's item.")
    value = serializers.FloatField(
        required=False, allow_null=True, help_text="Quantity, price or rating."
    )
    occurred_at = serializers.CharField(
        required=False, help_text="ISO 8601 with time zone, or milliseconds since the epoch."
    )
    event_id = serializers.UUIDField(
        required=False,
        help_text="Client-made id, unique per shopper: a retry with the same id is stored once.",
    )
    placement = serializers.CharField(required=False, allow_blank=True)
    page = serializers.CharField(required=False, allow_blank=True)
    recommendation_id = serializers.UUIDField(
        required=False,
        allow_null=True,
        help_text="The list the item was shown in; kept only if that list holds the item and was shown to this shopper.",
    )


class EventBatchInSerializer(serializers.Serializer):
    events = EventInSerializer(many=True, help_text="At most MAX_BATCH_SIZE (default 100) events.")
    csrf_token = serializers.CharField(
        required=False, help_text="For navigator.sendBeacon, which cannot set X-CSRFToken."
    )


class EventsStoredSerializer(serializers.Serializer):
    stored = serializers.IntegerField(help_text="Events newly stored.")
    duplicates = serializers.IntegerField(
        help_text="Events this shopper already stored (same event_id), skipped."
    )


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
    errors = serializers.DictField(required=False, help_text="Per event index: {field: reason}.")


@extend_schema_field({"oneOf": [{"type": "integer"}, {"type": "string"}]})
class ItemIdField(serializers.Field):
    """The store's primary key as it is: an integer or a string."""


class ReasonSerializer(serializers.Serializer):
    id = ItemIdField(help_text="The shopper's own item (from their latest events).")
    name = serializers.CharField()
    url = serializers.CharField(required=False)
    kind = serializers.CharField(
        help_text="The shopper's event on it that training weighs most: view, click, "
        "add_to_cart, purchase, or a kind the store added."
    )


class RecommendedItemSerializer(serializers.Serializer):
    id = ItemIdField()
    name = serializers.CharField()
    url = serializers.CharField(required=False)
    score = serializers.FloatField()
    reason = ReasonSerializer(
        allow_null=True,
        help_text="Personal recommendations: the item of the shopper's own history that "
        "added most to this one's score, with ?reasons=true. Null otherwise, for popular "
        "items, item lists and with REASONS off.",
    )


class RecommendationListSerializer(serializers.Serializer):
    recommendation_id = serializers.UUIDField(
        allow_null=True, help_text="Send it back with clicks (recommendation_id) to attribute them."
    )
    model_version = serializers.IntegerField(
        allow_null=True, help_text="The model version that produced the list; null for popularity."
    )
    source = serializers.ChoiceField(choices=["model", "similar", "bought_together", "popular"])
    placement = serializers.CharField()
    arm_id = serializers.IntegerField(
        allow_null=True,
        help_text="The experiment arm the list was served for; null outside experiments.",
    )
    items = RecommendedItemSerializer(many=True)


class ImpressionsCountedSerializer(serializers.Serializer):
    counted = serializers.IntegerField(
        help_text="Lists whose impressions were counted (unknown ids are skipped)."
    )


class ImpressionsInSerializer(serializers.Serializer):
    recommendations = serializers.ListField(child=serializers.UUIDField(), max_length=50)
    csrf_token = serializers.CharField(required=False)


def item_as_json(item):
    """The store's ITEM_SERIALIZER, or id / name / url."""
    from .. import itemkeys
    from ..conf import recommender_settings

    custom = recommender_settings.ITEM_SERIALIZER
    if custom is not None:
        return custom(item)
    data = {"id": itemkeys.to_json(item.pk), "name": str(item)}
    if hasattr(item, "get_absolute_url"):
        data["url"] = item.get_absolute_url()
    return data


def recommendation_list_as_json(recs, reasons=False):
    """A RecommendationList as the API gives it; its reasons are read (computed) only if
    ``reasons``, else every ``reason`` is null."""
    shown = recs.reasons if reasons else [None] * len(recs.items)
    return {
        "recommendation_id": recs.recommendation_id,
        "model_version": recs.version_id,
        "source": recs.source,
        "placement": recs.placement,
        "arm_id": recs.arm_id,
        "items": [
            {
                **item_as_json(item),
                "score": round(float(score), 6),
                "reason": reason_as_json(reason),
            }
            for item, score, reason in zip(recs.items, recs.scores, shown, strict=False)
        ],
    }


def reason_as_json(reason):
    """A serving.Reason as the API gives it: the item as ITEM_SERIALIZER (or id / name /
    url) gives it, and the kind of the shopper's event; None stays None."""
    if reason is None:
        return None
    return {**item_as_json(reason.item), "kind": reason.kind}
