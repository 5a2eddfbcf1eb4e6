from django.urls import path

from . import views

app_name = "recommender"

urlpatterns = [
    path("events/", views.EventIngestView.as_view(), name="events"),
]
