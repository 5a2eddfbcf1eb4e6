"""The session cart: ``request.session["cart"] = {str(product_pk): quantity}``.

Keys are strings because the session is stored as JSON. The cart knows nothing about
events; the views decide what a change means and record it.
"""

from dataclasses import dataclass
from decimal import Decimal

from .models import Product

SESSION_KEY = "cart"


@dataclass
class CartLine:
    product: Product
    quantity: int

    @property
    def subtotal(self):
        return self.product.price * self.quantity

    @property
    def available(self):
        return self.product.is_active and self.product.stock >= self.quantity


class SessionCart:
    def __init__(self, session):
        self.session = session
        raw = session.get(SESSION_KEY, {})
        # Anything odd in the session (an old format, a hand-edited cookie store) is dropped.
        self.quantities = {
            str(pk): quantity
            for pk, quantity in (raw.items() if isinstance(raw, dict) else [])
            if str(pk).isdigit() and isinstance(quantity, int) and quantity > 0
        }

    def quantity_of(self, product):
        return self.quantities.get(str(product.pk), 0)

    def set(self, product, quantity):
        """Set a product's quantity (0 removes it); returns the previous quantity."""
        previous = self.quantity_of(product)
        if quantity > 0:
            self.quantities[str(product.pk)] = quantity
        else:
            self.quantities.pop(str(product.pk), None)
        self.save()
        return previous

    def clear(self):
        self.quantities = {}
        self.save()

    def save(self):
        self.session[SESSION_KEY] = dict(self.quantities)
        self.session.modified = True

    def lines(self):
        """Cart lines with their products, in the order they were added; unknown ids dropped."""
        products = Product.objects.select_related("category").in_bulk(
            [int(pk) for pk in self.quantities]
        )
        return [
            CartLine(products[int(pk)], quantity)
            for pk, quantity in self.quantities.items()
            if int(pk) in products
        ]

    def __len__(self):
        return sum(self.quantities.values())

    @staticmethod
    def total(lines):
        return sum((line.subtotal for line in lines), Decimal("0"))
