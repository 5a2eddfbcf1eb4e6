from django.urls import path, re_path

from . import views
from .schema import SchemaView, SwaggerView

app_name = "recommender"

urlpatterns = [
    path("events/", views.EventIngestView.as_view(), name="events"),
    path("impressions/", views.ImpressionsView.as_view(), name="impressions"),
    path("recommendations/", views.MyRecommendationsView.as_view(), name="recommendations"),
    path(
        "users/<int:user_id>/recommendations/",
        views.UserRecommendationsView.as_view(),
        name="user-recommendations",
    ),
    path("items/<str:item_id>/similar/", views.SimilarItemsView.as_view(), name="similar"),
    path(
        "items/<str:item_id>/bought-together/",
        views.BoughtTogetherView.as_view(),
        name="bought-together",
    ),
    path("popular/", views.PopularItemsView.as_view(), name="popular"),
    # The API's OpenAPI schema and Swagger UI, with none of the store's settings needed.
    path("schema/", SchemaView.as_view(), name="schema"),
    path("docs/", SwaggerView.as_view(url_name="recommender:schema"), name="docs"),
    # Any other path under the API (an item id with a slash, a negative user id) gets the
    # API's JSON 404, not the site's HTML page. Only paths ending in "/": APPEND_SLASH still
    # redirects "events" to "events/".
    re_path(r"^.*/$", views.not_found, name="not-found"),
]
