"""Pages of the demo store.

The store records cart and purchase events server-side through ``recommender.events``,
exactly as a real store's own cart and order code would; product views and clicks are
recorded in the browser by the recommender's tracker (see ``templates/base.html``).
"""

import logging
import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import F, OuterRef, Subquery
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import get_conditional_response, patch_cache_control
from django.utils.crypto import salted_hmac
from django.utils.http import quote_etag, url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods

from recommender.events import EventValidationError, record, record_many
from recommender.shoppers import shopper_of

from .cart import SessionCart
from .forms import MAX_QUANTITY, AddToCartForm, CartActionForm
from .models import Category, Order, OrderLine, Product
from .svg import product_svg, stable_number

logger = logging.getLogger(__name__)

PRODUCTS_PER_PAGE = 24
HOME_SHELF_SIZE = 8
SORTS = {
    "name": ("name", "Name"),
    "price": ("price", "Price: low to high"),
    "-price": ("-price", "Price: high to low"),
    "new": ("-created_at", "Newest"),
}
RECORD_BATCH = 100


def listed_products():
    """What the shop lists: active products (sold-out ones are shown as sold out)."""
    return Product.objects.filter(is_active=True).select_related("category")


@require_GET
def home(request):
    top_of_category = (
        Product.objects.sellable()
        .filter(category=OuterRef("pk"), role=Product.Role.MAIN)
        .order_by("-price", "pk")
        .values("pk")[:1]
    )
    featured_pks = Category.objects.annotate(top=Subquery(top_of_category)).values_list(
        "top", flat=True
    )
    featured = listed_products().filter(pk__in=[pk for pk in featured_pks if pk])[:HOME_SHELF_SIZE]
    new_arrivals = (
        listed_products().filter(stock__gt=0).order_by("-created_at", "-pk")[:HOME_SHELF_SIZE]
    )
    return render(
        request, "catalog/home.html", {"featured": featured, "new_arrivals": new_arrivals}
    )


@require_GET
def category(request, slug):
    current = get_object_or_404(Category, slug=slug)
    sort = request.GET.get("sort", "name")
    if sort not in SORTS:
        sort = "name"
    products = listed_products().filter(category=current).order_by(SORTS[sort][0], "pk")
    page = Paginator(products, PRODUCTS_PER_PAGE).get_page(request.GET.get("page"))
    return render(
        request,
        "catalog/category.html",
        {
            "category": current,
            "page_obj": page,
            "products": page.object_list,
            "sort": sort,
            "sorts": [(key, label) for key, (_, label) in SORTS.items()],
        },
    )


@require_GET
def product_detail(request, slug):
    product = get_object_or_404(listed_products(), slug=slug)
    goes_with = listed_products().filter(companion=product, stock__gt=0).order_by("name")[:4]
    return render(
        request,
        "catalog/product.html",
        {
            "product": product,
            "goes_with": goes_with,
            "form": AddToCartForm(),
            "in_cart": SessionCart(request.session).quantity_of(product),
        },
    )


@require_GET
def product_image(request, slug):
    """The product's generated picture; the same for a slug on every request, so cacheable.

    Only listed products have one: an inactive product's name must not be disclosed.
    """
    product = get_object_or_404(listed_products(), slug=slug)
    body = product_svg(product)
    etag = quote_etag(f"{stable_number(body):08x}")
    response = get_conditional_response(request, etag=etag) or HttpResponse(
        body, content_type="image/svg+xml; charset=utf-8"
    )
    response["ETag"] = etag
    patch_cache_control(response, public=True, max_age=86400)
    response["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    response["X-Content-Type-Options"] = "nosniff"
    return response


def record_for_shopper(request, kind, product, quantity):
    """Record a cart event; a rejected event is logged, never a broken cart."""
    try:
        record(kind, product, value=quantity, page=request.path, **shopper_of(request))
    except EventValidationError as exc:
        logger.warning("Cart event not recorded: %s", exc)


@require_http_methods(["GET", "POST"])
def cart(request):
    session_cart = SessionCart(request.session)
    if request.method == "POST":
        form = CartActionForm(request.POST)
        if not form.is_valid():
            messages.error(request, "That cart change was not understood.")
            return redirect("catalog:cart")
        change_cart(request, session_cart, **form.cleaned_data)
        return redirect(safe_next(request) or "catalog:cart")
    lines = session_cart.lines()
    return render(
        request,
        "catalog/cart.html",
        {
            "lines": lines,
            "total": SessionCart.total(lines),
            "all_available": all(line.available for line in lines),
        },
    )


def change_cart(request, session_cart, *, action, product, quantity):
    """Apply one cart change and record what it meant: items added or removed."""
    item = Product.objects.filter(pk=product).first()
    current = session_cart.quantity_of(item) if item is not None else 0
    # An inactive product not in the cart answers like a missing one: its name is not shown.
    if item is None or (not item.is_active and not current):
        messages.error(request, "That product does not exist.")
        return
    if action == CartActionForm.ADD:
        wanted = current + quantity
    elif action == CartActionForm.REMOVE:
        wanted = 0
    else:
        wanted = quantity
    if wanted > current:
        if not item.is_active:
            messages.error(request, f"{item.name} is no longer sold.")
            return
        limit = min(item.stock, MAX_QUANTITY)
        if wanted > limit:
            wanted = max(limit, current)
            messages.warning(request, f"At most {limit} of {item.name} can go in the cart.")
    session_cart.set(item, wanted)
    if wanted > current:
        record_for_shopper(request, "add_to_cart", item, wanted - current)
        messages.success(request, f"Added {wanted - current} × {item.name} to your cart.")
    elif wanted < current:
        record_for_shopper(request, "remove_from_cart", item, current - wanted)
        messages.info(request, f"Removed {current - wanted} × {item.name} from your cart.")


def safe_next(request):
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(
        target, {request.get_host()}, request.is_secure()
    ):
        return target
    return None


class OutOfStock(Exception):
    pass


@login_required
@require_http_methods(["GET", "POST"])
def checkout(request):
    session_cart = SessionCart(request.session)
    lines = session_cart.lines()
    if not lines:
        messages.info(request, "Your cart is empty.")
        return redirect("catalog:cart")
    if request.method == "GET":
        return render(
            request, "catalog/checkout.html", {"lines": lines, "total": SessionCart.total(lines)}
        )
    try:
        order = place_order(request.user, {line.product.pk: line.quantity for line in lines})
    except OutOfStock as exc:
        messages.error(request, str(exc))
        return redirect("catalog:cart")
    session_cart.clear()
    record_purchases(request, order)
    messages.success(request, f"Thank you! Order {order.pk} is placed.")
    return redirect("catalog:order", pk=order.pk)


def place_order(user, quantities):
    """Create the order and take its items out of stock, all or nothing."""
    with transaction.atomic():
        products = Product.objects.select_for_update().in_bulk(list(quantities))
        for pk, quantity in quantities.items():
            product = products.get(pk)
            if product is None or not product.is_active or product.stock < quantity:
                name = product.name if product else "A product"
                raise OutOfStock(f"{name} is not available in that quantity any more.")
        order = Order.objects.create(user=user)
        OrderLine.objects.bulk_create(
            OrderLine(
                order=order, product=products[pk], quantity=quantity, price=products[pk].price
            )
            for pk, quantity in quantities.items()
        )
        for pk, quantity in quantities.items():
            Product.objects.filter(pk=pk).update(stock=F("stock") - quantity)
    return order


def purchase_event_id(line):
    """The purchase event id of an order line: stable (recording twice stores once), secret.

    An HMAC under SECRET_KEY, not a hash of the line's number, so nobody can compute it.
    """
    digest = salted_hmac("shop_demo.purchase-event", f"order-line-{line.pk}", algorithm="sha256")
    return uuid.UUID(bytes=digest.digest()[:16], version=4)


def record_purchases(request, order):
    """One ``purchase`` event per order line, value = quantity: how a store reports sales.

    Recorded with ``partial=True``: a line whose product was deactivated meanwhile is
    reported and skipped, and the order's other lines are still recorded.
    """
    events = [
        {
            "kind": "purchase",
            "item": line.product_id,
            "value": line.quantity,
            "page": request.path,
            "event_id": purchase_event_id(line),
        }
        for line in order.lines.order_by("pk")
    ]
    shopper = shopper_of(request)
    for start in range(0, len(events), RECORD_BATCH):
        batch = events[start : start + RECORD_BATCH]
        result = record_many(batch, **shopper, partial=True)
        for index, reasons in result.rejected.items():
            logger.warning(
                "Purchase event of order %s, product %s not recorded: %s",
                order.pk,
                batch[index]["item"],
                reasons,
            )


@login_required
@require_GET
def order_detail(request, pk):
    order = get_object_or_404(Order.objects.filter(user=request.user), pk=pk)
    lines = order.lines.select_related("product__category")
    return render(request, "catalog/order.html", {"order": order, "lines": lines})
