"""Request and response shapes of the API, for validation errors and the OpenAPI schema.

Event validation itself lives in ``recommender.events`` (the one write path); these
serializers only describe the payloads.
"""

from rest_framework import serializers


class EventInSerializer(serializers.Serializer):
    kind = serializers.CharField(help_text="view, click, add_to_cart, remove_from_cart, purchase, or a kind the store added.")
    item = serializers.CharField(help_text="Primary key of the store's item.")
    value = serializers.FloatField(required=False, allow_null=True, help_text="Quantity, price or rating.")
    occurred_at = serializers.CharField(required=False, help_text="ISO 8601 with time zone, or milliseconds since the epoch.")
    event_id = serializers.UUIDField(required=False, help_text="Client-made id; a retry with the same id is stored once.")
    placement = serializers.CharField(required=False, allow_blank=True)
    page = serializers.CharField(required=False, allow_blank=True)
    recommendation_id = serializers.UUIDField(required=False, allow_null=True)


class EventBatchInSerializer(serializers.Serializer):
    events = EventInSerializer(many=True)


class EventsStoredSerializer(serializers.Serializer):
    stored = serializers.IntegerField(help_text="Events newly stored.")
    duplicates = serializers.IntegerField(help_text="Events already stored earlier (same event_id), skipped.")


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
    errors = serializers.DictField(required=False, help_text="Per event index: {field: reason}.")
