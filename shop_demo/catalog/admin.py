"""Admin of the demo store: what a shop owner edits every day."""

from django.contrib import admin
from django.db.models import Count
from django.urls import reverse
from django.utils.html import format_html

from .models import Category, Order, OrderLine, Product


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "hue", "product_count"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(product_total=Count("products"))

    @admin.display(description="products", ordering="product_total")
    def product_count(self, category):
        return category.product_total


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ["thumbnail", "name", "category", "price", "stock", "is_active", "role"]
    list_display_links = ["thumbnail", "name"]
    list_editable = ["stock", "is_active"]
    list_filter = ["is_active", "category", "role"]
    list_select_related = ["category"]
    search_fields = ["name", "slug", "description"]
    prepopulated_fields = {"slug": ["name"]}
    autocomplete_fields = ["companion"]
    list_per_page = 50
    actions = ["activate", "deactivate"]

    @admin.display(description="")
    def thumbnail(self, product):
        return format_html(
            '<img src="{}" alt="" width="32" height="32" style="border-radius:4px">',
            reverse("catalog:product_image", args=[product.slug]),
        )

    @admin.action(description="Activate selected products")
    def activate(self, request, queryset):
        self.message_user(request, f"{queryset.update(is_active=True)} product(s) activated.")

    @admin.action(description="Deactivate selected products")
    def deactivate(self, request, queryset):
        self.message_user(request, f"{queryset.update(is_active=False)} product(s) deactivated.")


class OrderLineInline(admin.TabularInline):
    model = OrderLine
    extra = 0
    autocomplete_fields = ["product"]


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["__str__", "user", "created_at", "line_count", "total"]
    list_filter = ["created_at"]
    list_select_related = ["user"]
    search_fields = ["user__username", "pk"]
    date_hierarchy = "created_at"
    readonly_fields = ["created_at"]
    inlines = [OrderLineInline]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(lines_total=Count("lines"))
            .prefetch_related("lines")
        )

    @admin.display(description="lines", ordering="lines_total")
    def line_count(self, order):
        return order.lines_total
