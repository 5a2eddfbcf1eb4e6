"""Admin for events (read-only) and model versions."""

from django.contrib import admin
from django.utils.html import format_html

from .models import Event, ModelVersion


class ShopperTypeFilter(admin.SimpleListFilter):
    title = "shopper"
    parameter_name = "shopper"

    def lookups(self, request, model_admin):
        return [("user", "Logged-in users"), ("anonymous", "Anonymous sessions")]

    def queryset(self, request, queryset):
        if self.value() == "user":
            return queryset.filter(user__isnull=False)
        if self.value() == "anonymous":
            return queryset.filter(user__isnull=True)
        return queryset


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    """Events are evidence: staff may look and filter, never edit or add."""

    list_display = ["occurred_at", "kind", "item", "user", "short_session", "value", "placement"]
    list_filter = ["kind", ShopperTypeFilter, ("occurred_at", admin.DateFieldListFilter), "placement"]
    search_fields = ["=user__username", "=session_key", "=event_id", "=recommendation_id"]
    date_hierarchy = "occurred_at"
    list_select_related = ["item", "user"]
    raw_id_fields = ["item", "user"]
    show_full_result_count = False
    list_per_page = 100

    @admin.display(description="session", ordering="session_key")
    def short_session(self, event):
        return event.session_key[:8]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["__str__", "active_mark", "status", "trigger", "created_at", "duration", "val_ndcg10", "val_hr10", "coverage10"]
    list_filter = ["status", "is_active", "trigger"]
    readonly_fields = [f.name for f in ModelVersion._meta.fields]

    @admin.display(description="active", boolean=True, ordering="is_active")
    def active_mark(self, version):
        return version.is_active

    @admin.display(description="val NDCG@10")
    def val_ndcg10(self, version):
        return _fmt(version.metric("ndcg@10"))

    @admin.display(description="val HR@10")
    def val_hr10(self, version):
        return _fmt(version.metric("hr@10"))

    @admin.display(description="coverage@10")
    def coverage10(self, version):
        return _fmt(version.metric("coverage@10"))

    def has_add_permission(self, request):
        return False


def _fmt(value):
    return "—" if value is None else format_html("{}", f"{value:.4f}")
