from .cart import SessionCart
from .models import Category


def shop(request):
    """Navigation categories and the cart size for every demo page."""
    session = getattr(request, "session", None)
    return {
        "nav_categories": Category.objects.all(),
        "cart_count": len(SessionCart(session)) if session is not None else 0,
    }
