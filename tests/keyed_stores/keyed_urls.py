from django.contrib import admin
from django.http import HttpResponse
from django.template import RequestContext, Template
from django.urls import include, path

from recommender.conf import get_item_model

# One page with every carousel tag, each in its own marked section.
CAROUSELS = Template(
    "{% load recommender_tags %}"
    "{% recommended_products limit=4 as mine %}"
    "{% similar_products item limit=4 as alike %}"
    "{% similar_products key limit=4 as alike_by_key %}"
    "{% bought_together item limit=4 as together %}"
    "{% popular_products limit=4 as top %}"
    "<!--mine-->{% product_carousel mine %}<!--/mine-->"
    "<!--alike-->{% product_carousel alike %}<!--/alike-->"
    "<!--alike_by_key-->{% product_carousel alike_by_key %}<!--/alike_by_key-->"
    "<!--together-->{% product_carousel together %}<!--/together-->"
    "<!--top-->{% product_carousel top %}<!--/top-->"
)


def carousels(request, pk):
    item = get_item_model()._default_manager.get(pk=pk)
    context = {"item": item, "key": pk}  # the key as the URL gave it, text
    return HttpResponse(CAROUSELS.render(RequestContext(request, context)))


urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/recommender/", include("recommender.api.urls")),
    path("carousels/<str:pk>/", carousels),
]
