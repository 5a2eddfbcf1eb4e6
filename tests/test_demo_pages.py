"""The demo store's pages, cart and checkout, and the events they record."""

import xml.etree.ElementTree as ET

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from recommender.models import Event
from shop_demo.catalog import views
from shop_demo.catalog.models import Category, Order, Product
from shop_demo.catalog.simulation import build_catalogue, write_catalogue

pytestmark = pytest.mark.django_db


@pytest.fixture
def shop():
    """A small catalogue made the way seed_demo makes one: 3 categories, 60 products."""
    write_catalogue(build_catalogue(products=60, seed=3))
    return Product.objects.sellable().filter(role="main").select_related("category").order_by("pk")


@pytest.fixture
def product(shop):
    return shop.first()


@pytest.fixture
def shopper():
    return get_user_model().objects.create_user("alice", password="pw")


def add_to_cart(client, product, quantity=1):
    return client.post(
        reverse("catalog:cart"), {"action": "add", "product": product.pk, "quantity": quantity}
    )


def test_home_lists_products_with_tracking_attributes(client, shop):
    response = client.get(reverse("catalog:home"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "Featured" in html and "New arrivals" in html
    assert html.count("data-rec-item=") >= 8
    assert f'href="{reverse("catalog:category", args=[Category.objects.first().slug])}"' in html
    assert "recommender/tracker.js" in html  # the tracker tag sits before </body>
    assert html.index("tracker.js") > html.index("</footer>")


def test_category_page_paginates_active_products(client, shop, monkeypatch):
    monkeypatch.setattr(views, "PRODUCTS_PER_PAGE", 5)
    category = Category.objects.first()
    listed = Product.objects.filter(category=category, is_active=True).order_by("name", "pk")
    response = client.get(reverse("catalog:category", args=[category.slug]), {"page": 2})
    assert response.status_code == 200
    assert [p.pk for p in response.context["products"]] == [p.pk for p in listed[5:10]]
    assert category.name in response.content.decode()
    assert 'rel="next"' in response.content.decode()


def test_category_page_sorts_by_price(client, shop):
    category = Category.objects.first()
    response = client.get(reverse("catalog:category", args=[category.slug]), {"sort": "-price"})
    prices = [p.price for p in response.context["products"]]
    assert prices == sorted(prices, reverse=True)


def test_product_page_marks_the_view_and_offers_the_cart(client, product):
    response = client.get(reverse("catalog:product", args=[product.slug]))
    assert response.status_code == 200
    html = response.content.decode()
    assert f'data-rec-view="{product.pk}"' in html
    assert product.name in html and str(product.price) in html
    assert 'name="csrfmiddlewaretoken"' in html and 'value="add"' in html
    assert (
        f'src="{reverse("catalog:product_image", args=[product.slug])}" alt="{product.name}"'
        in html
    )
    assert not Event.objects.exists(), "views are recorded by the browser tracker, not the server"


def test_product_page_shows_companions(client, shop):
    main = Product.objects.filter(
        role="main", companions__is_active=True, companions__stock__gt=0, is_active=True
    ).first()
    response = client.get(reverse("catalog:product", args=[main.slug]))
    assert set(response.context["goes_with"]) <= set(main.companions.all())
    assert response.context["goes_with"]


@pytest.mark.parametrize("name", ["catalog:product", "catalog:category", "catalog:product_image"])
def test_unknown_slug_is_404(client, shop, name):
    assert client.get(reverse(name, args=["no-such-thing"])).status_code == 404


def test_inactive_product_is_404(client, shop):
    hidden = Product.objects.filter(is_active=False).first()
    assert client.get(reverse("catalog:product", args=[hidden.slug])).status_code == 404


def test_product_image_is_cacheable_deterministic_svg(client, product):
    url = reverse("catalog:product_image", args=[product.slug])
    response = client.get(url)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("image/svg+xml")
    assert "max-age=86400" in response["Cache-Control"]
    root = ET.fromstring(response.content)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.find("{http://www.w3.org/2000/svg}title").text == product.name
    assert client.get(url).content == response.content
    assert client.get(url, headers={"if-none-match": response["ETag"]}).status_code == 304


def test_cart_add_records_add_to_cart_with_quantity(client, product):
    response = add_to_cart(client, product, 2)
    assert response.status_code == 302
    assert client.session["cart"] == {str(product.pk): 2}
    event = Event.objects.get()
    assert (event.kind, event.item_id, event.value, event.page) == (
        "add_to_cart",
        product.pk,
        2.0,
        "/cart/",
    )
    assert event.user is None and event.session_key
    page = client.get(reverse("catalog:cart"))
    assert page.status_code == 200 and product.name in page.content.decode()
    assert page.context["cart_count"] == 2


def test_cart_update_and_remove_record_the_difference(client, product):
    add_to_cart(client, product, 3)
    client.post(reverse("catalog:cart"), {"action": "update", "product": product.pk, "quantity": 1})
    client.post(reverse("catalog:cart"), {"action": "update", "product": product.pk, "quantity": 4})
    client.post(reverse("catalog:cart"), {"action": "remove", "product": product.pk})
    recorded = list(Event.objects.order_by("id").values_list("kind", "value"))
    assert recorded == [
        ("add_to_cart", 3.0),
        ("remove_from_cart", 2.0),
        ("add_to_cart", 3.0),
        ("remove_from_cart", 4.0),
    ]
    assert client.session["cart"] == {}


def test_a_broken_session_cart_is_ignored(client, product):
    session = client.session
    session["cart"] = {"x": 1, str(product.pk): "two", "999999": 1}
    session.save()
    response = client.get(reverse("catalog:cart"))
    assert response.status_code == 200 and response.context["lines"] == []


def test_cart_never_holds_more_than_the_stock(client, product):
    Product.objects.filter(pk=product.pk).update(stock=2)
    add_to_cart(client, product, 5)
    assert client.session["cart"] == {str(product.pk): 2}
    assert Event.objects.get().value == 2.0


def test_cart_changes_need_the_csrf_token(product):
    client = Client(enforce_csrf_checks=True)
    assert add_to_cart(client, product).status_code == 403
    assert not Event.objects.exists()


def test_checkout_requires_login(client, product):
    add_to_cart(client, product)
    response = client.get(reverse("catalog:checkout"))
    assert response.status_code == 302
    assert response.url == f"{reverse('login')}?next={reverse('catalog:checkout')}"
    assert client.post(reverse("catalog:checkout")).status_code == 302
    assert not Order.objects.exists()


def test_checkout_creates_order_decrements_stock_and_records_purchases(client, shop, shopper):
    first, second = shop[0], shop[1]
    stock_before = {p.pk: p.stock for p in (first, second)}
    client.force_login(shopper)
    add_to_cart(client, first, 2)
    add_to_cart(client, second, 1)
    assert client.get(reverse("catalog:checkout")).status_code == 200
    response = client.post(reverse("catalog:checkout"))
    order = Order.objects.get()
    assert response.status_code == 302 and response.url == reverse("catalog:order", args=[order.pk])
    assert order.user == shopper
    assert sorted(order.lines.values_list("product_id", "quantity")) == sorted(
        [(first.pk, 2), (second.pk, 1)]
    )
    for item, quantity in ((first, 2), (second, 1)):
        item.refresh_from_db()
        assert item.stock == stock_before[item.pk] - quantity
    purchases = Event.objects.filter(kind="purchase", user=shopper)
    assert sorted(purchases.values_list("item_id", "value")) == sorted(
        [(first.pk, 2.0), (second.pk, 1.0)]
    )
    assert client.session["cart"] == {}
    page = client.get(response.url)
    assert page.status_code == 200 and first.name in page.content.decode()


def test_a_product_withdrawn_during_checkout_costs_only_its_own_purchase_event(
    client, shop, shopper, monkeypatch
):
    """Recording never breaks a checkout: the order's other lines are still recorded."""
    first, second = shop[0], shop[1]
    place_order = views.place_order

    def place_then_withdraw(user, quantities):
        order = place_order(user, quantities)
        Product.objects.filter(pk=second.pk).update(is_active=False)
        return order

    monkeypatch.setattr(views, "place_order", place_then_withdraw)
    client.force_login(shopper)
    add_to_cart(client, first, 2)
    add_to_cart(client, second, 1)
    response = client.post(reverse("catalog:checkout"))
    order = Order.objects.get()
    assert response.url == reverse("catalog:order", args=[order.pk])
    purchases = Event.objects.filter(kind="purchase", user=shopper)
    assert list(purchases.values_list("item_id", "value")) == [(first.pk, 2.0)]


def test_purchase_event_ids_are_stable_but_not_computable_from_the_order_line(
    client, shop, shopper
):
    import uuid

    client.force_login(shopper)
    add_to_cart(client, shop[0], 1)
    client.post(reverse("catalog:checkout"))
    line = Order.objects.get().lines.get()
    stored = Event.objects.get(kind="purchase").event_id
    assert stored == views.purchase_event_id(line)
    guessable = {
        uuid.uuid5(uuid.UUID("6f1c3a52-8d1e-4f5b-9a0c-2b7e5d4c3a10"), f"order-line-{line.pk}"),
        uuid.uuid5(uuid.NAMESPACE_OID, f"order-line-{line.pk}"),
    }
    assert stored not in guessable


def test_the_cart_and_its_events_survive_login(client, product, shopper):
    add_to_cart(client, product, 2)
    response = client.post(
        reverse("login"), {"username": "alice", "password": "pw", "next": "/checkout/"}
    )
    assert response.url == "/checkout/"
    client.post(reverse("catalog:checkout"))
    kinds = list(Event.objects.filter(user=shopper).order_by("id").values_list("kind", "value"))
    assert kinds == [("add_to_cart", 2.0), ("purchase", 2.0)]


def test_checkout_refuses_what_is_no_longer_in_stock(client, product, shopper):
    client.force_login(shopper)
    add_to_cart(client, product, 2)
    Product.objects.filter(pk=product.pk).update(stock=1)
    response = client.post(reverse("catalog:checkout"))
    assert response.url == reverse("catalog:cart")
    assert not Order.objects.exists()
    assert not Event.objects.filter(kind="purchase").exists()
    product.refresh_from_db()
    assert product.stock == 1


def test_orders_are_private(client, shop, shopper):
    order = Order.objects.create(user=shopper)
    client.force_login(get_user_model().objects.create_user("mallory", password="pw"))
    assert client.get(reverse("catalog:order", args=[order.pk])).status_code == 404


def test_login_page_and_login_logout(client, shopper):
    page = client.get(reverse("login"))
    assert page.status_code == 200 and 'name="password"' in page.content.decode()
    response = client.post(
        reverse("login"), {"username": "alice", "password": "pw", "next": "/cart/"}
    )
    assert response.status_code == 302 and response.url == "/cart/"
    assert "Log out" in client.get(reverse("catalog:home")).content.decode()
    client.post(reverse("logout"))
    assert "Log in" in client.get(reverse("catalog:home")).content.decode()


@pytest.mark.parametrize("model", ["category", "product", "order"])
def test_admin_pages_render(client, shop, model):
    admin = get_user_model().objects.create_superuser("boss", password="pw")
    order = Order.objects.create(user=admin)
    order.lines.create(product=shop[0], quantity=2, price=shop[0].price)
    client.force_login(admin)
    changelist = client.get(reverse(f"admin:catalog_{model}_changelist"))
    assert changelist.status_code == 200
    obj = {"category": Category.objects.first(), "product": shop[0], "order": order}[model]
    assert client.get(reverse(f"admin:catalog_{model}_change", args=[obj.pk])).status_code == 200


def test_admin_edits_stock_in_the_list(client, shop):
    client.force_login(get_user_model().objects.create_superuser("boss", password="pw"))
    product = shop[0]
    url = reverse("admin:catalog_product_changelist") + f"?q={product.slug}"
    page = client.get(url)
    formset = page.context["cl"].formset
    data = {f"form-{key}": value for key, value in formset.management_form.initial.items()}
    for index, form in enumerate(formset.forms):
        data.update(
            {
                f"form-{index}-id": form.instance.pk,
                f"form-{index}-stock": form.instance.stock,
                f"form-{index}-is_active": "on" if form.instance.is_active else "",
            }
        )
        if form.instance.pk == product.pk:
            data[f"form-{index}-stock"] = 77
    data["_save"] = "Save"
    assert client.post(url, data).status_code == 302
    product.refresh_from_db()
    assert product.stock == 77


@pytest.mark.parametrize("prefix", ["/", "/shop/"])
def test_the_api_view_of_a_product_links_where_reverse_does(product, prefix):
    from django.urls import set_script_prefix

    from shop_demo.catalog.rules import product_as_json

    set_script_prefix(prefix)
    try:
        data = product_as_json(product)
        assert data["url"] == product.get_absolute_url() == f"{prefix}p/{product.slug}/"
        assert data["image"] == reverse("catalog:product_image", args=[product.slug])
    finally:
        set_script_prefix("/")
