from django.urls import path

from shop_demo.urls import urlpatterns as shop_urlpatterns

from . import views

urlpatterns = [
    path("bench/page/", views.page, name="bench-page"),
    path("bench/ping/", views.ping, name="bench-ping"),
    path("bench/bare-event/", views.bare_event, name="bench-bare-event"),
    path("bench/products/", views.ProductListBaseline.as_view(), name="bench-products"),
    path("bench/serving-warm/", views.serving_warm, name="bench-serving-warm"),
    *shop_urlpatterns,
]
