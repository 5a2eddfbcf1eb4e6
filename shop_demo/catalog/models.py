"""The demo store's catalogue and orders: what any small Django shop has."""

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.urls import reverse


class Category(models.Model):
    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=100, unique=True)
    # Hue of the generated product pictures, so a category looks like itself.
    hue = models.PositiveSmallIntegerField(default=200)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "categories"

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("catalog:category", args=[self.slug])


class ProductQuerySet(models.QuerySet):
    def sellable(self):
        """Products the shop shows and sells: active and in stock."""
        return self.filter(is_active=True, stock__gt=0)


class Product(models.Model):
    class Role(models.TextChoices):
        MAIN = "main"
        ACCESSORY = "accessory"
        CONSUMABLE = "consumable"
        REFILL = "refill"

    category = models.ForeignKey(Category, on_delete=models.PROTECT, related_name="products")
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=220, unique=True)
    description = models.TextField(blank=True, default="")
    price = models.DecimalField(max_digits=10, decimal_places=2)
    stock = models.PositiveIntegerField(default=0)
    is_active = models.BooleanField(default=True)
    # What the simulator's sequential patterns hang on: accessories follow a main
    # product, refills follow a consumable. A real store would not need this.
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MAIN)
    companion = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="companions",
        help_text="The main product an accessory fits, or the consumable a refill refills.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ProductQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        indexes = [
            models.Index(fields=["category", "is_active"], name="catalog_product_cat_active")
        ]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("catalog:product", args=[self.slug])


class Order(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"Order {self.pk}"

    @property
    def total(self):
        return sum((line.price * line.quantity for line in self.lines.all()), Decimal("0"))


class OrderLine(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
    product = models.ForeignKey(Product, on_delete=models.PROTECT)
    quantity = models.PositiveIntegerField()
    price = models.DecimalField(max_digits=10, decimal_places=2)

    def __str__(self):
        return f"{self.quantity} × {self.product}"
