"""DRF endpoints. They hold no logic: events go to ``recommender.events``."""

import json

from django.middleware.csrf import CsrfViewMiddleware
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import status
from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import ParseError, PermissionDenied
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import events
from ..conf import recommender_settings
from ..shoppers import shopper_of
from .serializers import ErrorSerializer, EventBatchInSerializer, EventsStoredSerializer
from .throttles import EventsRateThrottle

# Largest request body the events endpoint reads (a full batch is far below this).
MAX_EVENTS_BODY_BYTES = 256 * 1024


class _CsrfCheck(CsrfViewMiddleware):
    def _reject(self, request, reason):
        return reason


class DeferredCsrfSessionAuthentication(SessionAuthentication):
    """Session authentication whose CSRF check the view runs itself, after parsing."""

    def enforce_csrf(self, request):
        return None


def _enforce_csrf(request):
    """CSRF for cookie-identified shoppers, anonymous ones included.

    DRF only checks CSRF for authenticated session users; an anonymous shopper is also
    identified by the session cookie, so a forged cross-site post could write events into
    their history. ``navigator.sendBeacon`` cannot set headers, so the tracker may send
    the token in the body as ``csrf_token`` instead of the X-CSRFToken header.
    """

    check = _CsrfCheck(lambda _request: None)
    check.process_request(request)
    reason = check.process_view(request, None, (), {})
    if reason:
        raise PermissionDenied(f"CSRF failed: {reason}")


class EventIngestView(APIView):
    """Record one event, or a batch, for the current shopper."""

    permission_classes = [AllowAny]
    throttle_classes = [EventsRateThrottle]
    # JSON is parsed here, not by DRF, so the size limit applies before parsing.
    parser_classes = []

    @extend_schema(
        request=EventBatchInSerializer,
        responses={201: EventsStoredSerializer, 400: ErrorSerializer, 403: ErrorSerializer, 429: ErrorSerializer},
        examples=[OpenApiExample("A view", value={"events": [{"kind": "view", "item": "42"}]}, request_only=True)],
        summary="Record shopper events",
        description=(
            "One event object, a list of events, or {\"events\": [...]} (at most MAX_BATCH_SIZE). "
            "The shopper is the logged-in user or the anonymous session; a batch is stored whole or not at all."
        ),
    )
    def get_authenticators(self):
        return [
            DeferredCsrfSessionAuthentication() if isinstance(auth, SessionAuthentication) else auth
            for auth in super().get_authenticators()
        ]

    def post(self, request):
        payload = self._read_json(request)
        items, token = self._unwrap(payload)
        if not self._token_authenticated(request):
            if token and "HTTP_X_CSRFTOKEN" not in request.META:
                request.META["HTTP_X_CSRFTOKEN"] = token
            _enforce_csrf(request._request)
        try:
            result = events.record_many(items, **shopper_of(request._request))
        except events.EventValidationError as exc:
            return Response(
                {"detail": str(exc), "errors": {str(k): v for k, v in exc.errors.items()}},
                status=status.HTTP_400_BAD_REQUEST,
            )
        return Response({"stored": result.stored, "duplicates": result.duplicates}, status=status.HTTP_201_CREATED)

    @staticmethod
    def _token_authenticated(request):
        authenticator = request.successful_authenticator
        return authenticator is not None and not isinstance(authenticator, SessionAuthentication)

    @staticmethod
    def _read_json(request):
        content_type = request.content_type.split(";")[0].strip().lower()
        if content_type not in ("application/json", "text/plain", ""):
            raise ParseError(f"Send JSON (application/json), not {content_type!r}.")
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise ParseError("Invalid Content-Length.") from None
        if length > MAX_EVENTS_BODY_BYTES:
            raise ParseError(f"Request body too large: at most {MAX_EVENTS_BODY_BYTES} bytes.")
        body = request._request.read(MAX_EVENTS_BODY_BYTES + 1)
        if len(body) > MAX_EVENTS_BODY_BYTES:
            raise ParseError(f"Request body too large: at most {MAX_EVENTS_BODY_BYTES} bytes.")
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ParseError(f"Malformed JSON: {exc}") from None

    @staticmethod
    def _unwrap(payload):
        """(list of event dicts, csrf token from the body or None)."""
        token = None
        if isinstance(payload, dict) and "events" in payload:
            token = payload.get("csrf_token")
            payload = payload["events"]
            if not isinstance(payload, list):
                raise ParseError("'events' must be a list.")
        elif isinstance(payload, dict):
            payload = [payload]
        elif not isinstance(payload, list):
            raise ParseError("Send an event object, a list of events or {\"events\": [...]}.")
        limit = recommender_settings.MAX_BATCH_SIZE
        if len(payload) > limit:
            raise ParseError(f"At most {limit} events per request, got {len(payload)}.")
        if token is not None and not isinstance(token, str):
            raise ParseError("'csrf_token' must be a string.")
        return payload, token
