"""DRF exception handler: a database that cannot answer now is a 503 with Retry-After.

A PostgreSQL restart (or failover) breaks the connections that web processes keep open
(``CONN_MAX_AGE``): the next query on each raises ``OperationalError`` or
``InterfaceError``, and Django closes that connection at the end of the request, so the
request after it reconnects. Without this handler that one request is a 500 with a
traceback; with it, the client is told the truth — try again shortly — and clients that
retry (the tracker re-sends a batch with the same event ids, which are stored once) lose
nothing. Every other exception goes to DRF's own handler.

Wire it in the store's settings::

    REST_FRAMEWORK = {..., "EXCEPTION_HANDLER": "recommender.api.errors.exception_handler"}
"""

import logging

from django.db import InterfaceError, OperationalError
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

logger = logging.getLogger("recommender.api")

RETRY_AFTER_SECONDS = 1


def exception_handler(exc, context):
    if isinstance(exc, (OperationalError, InterfaceError)):
        view = context.get("view")
        logger.warning(
            "Database unavailable in %s (%s: %s); answered 503.",
            type(view).__name__ if view else "an API view",
            type(exc).__name__,
            str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "",
        )
        set_rollback()
        return Response(
            {"detail": "The database is unavailable for a moment; retry shortly."},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    return drf_exception_handler(exc, context)
