from django.apps import AppConfig


class RecommenderConfig(AppConfig):
    name = "recommender"
    verbose_name = "Recommender"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import checks  # noqa: F401 - registers the system checks

        connect_signals()


def connect_signals():
    """Connect the app's receivers (from ``ready``, so importing a module connects nothing).

    Here rather than in the modules that send or receive, so that none of serving,
    shoppers and signals imports another to wire them together.
    """
    from django.contrib.auth.signals import user_logged_in

    from .serving import invalidate_shopper
    from .shoppers import attach_session_events
    from .signals import events_recorded

    user_logged_in.connect(attach_session_events, dispatch_uid="recommender.attach_session_events")
    events_recorded.connect(
        invalidate_shopper, dispatch_uid="recommender.serving.invalidate_shopper"
    )
