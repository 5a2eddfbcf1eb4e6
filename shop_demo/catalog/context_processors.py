from .models import Category


def shop(request):
    """Navigation categories and the cart size for every demo page."""
    cart = request.session.get("cart", {}) if hasattr(request, "session") else {}
    return {
        "nav_categories": Category.objects.all(),
        "cart_count": sum(cart.values()) if isinstance(cart, dict) else 0,
    }
