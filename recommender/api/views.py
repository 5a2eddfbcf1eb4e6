"""DRF endpoints. They hold no logic: events go to ``recommender.events``."""

import json

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.http import Http404, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from drf_spectacular.authentication import SessionScheme
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiExample, OpenApiParameter
from rest_framework import status
from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import ParseError, PermissionDenied
from rest_framework.permissions import AllowAny, BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import events, itemkeys, serving
from ..conf import recommender_settings
from ..shoppers import shopper_of
from .schema import extend_schema
from .serializers import (
    ErrorSerializer,
    EventBatchInSerializer,
    EventsStoredSerializer,
    ImpressionsCountedSerializer,
    ImpressionsInSerializer,
    RecommendationListSerializer,
    recommendation_list_as_json,
)
from .throttles import EventsRateThrottle, ShopperRateThrottle

# Largest request body the events endpoint reads (a full batch is far below this).
MAX_EVENTS_BODY_BYTES = 256 * 1024

# Answers every write / read endpoint may give besides its own (for the OpenAPI schema).
WRITE_ERRORS = {400: ErrorSerializer, 403: ErrorSerializer, 429: ErrorSerializer}
READ_ERRORS = {400: ErrorSerializer, 429: ErrorSerializer}


class _CsrfCheck(CsrfViewMiddleware):
    def _reject(self, request, reason):
        return reason


class DeferredCsrfSessionAuthentication(SessionAuthentication):
    """Session authentication whose CSRF check the view runs itself, after parsing."""

    def enforce_csrf(self, request):
        return None


class DeferredCsrfSessionScheme(SessionScheme):
    """The OpenAPI schema describes it as the session cookie it is (writes also need CSRF)."""

    target_class = DeferredCsrfSessionAuthentication
    name = "sessionCookieWithCsrf"

    def get_security_definition(self, auto_schema):
        return {
            **super().get_security_definition(auto_schema),
            "description": "The session cookie; writes also send the CSRF token (X-CSRFToken, or csrf_token in the body).",
        }


def _enforce_csrf(request, body_token=None):
    """CSRF for cookie-identified shoppers, anonymous ones included (``request`` is Django's).

    DRF only checks CSRF for authenticated session users; an anonymous shopper is also
    identified by the session cookie, so a forged cross-site post could write events into
    their history. ``navigator.sendBeacon`` cannot set headers, so the tracker may send
    the token in the body as ``csrf_token`` instead of the X-CSRFToken header.
    """

    if body_token and "HTTP_X_CSRFTOKEN" not in request.META:
        request.META["HTTP_X_CSRFTOKEN"] = body_token
    check = _CsrfCheck(lambda _request: None)
    check.process_request(request)
    reason = check.process_view(request, None, (), {})
    if reason:
        raise PermissionDenied(f"CSRF failed: {reason}")


class SessionWriteMixin:
    """JSON body parsing with a size limit, and CSRF for cookie-identified shoppers."""

    permission_classes = [AllowAny]
    schema = AutoSchema()  # whatever the site's DEFAULT_SCHEMA_CLASS (see .schema)
    # JSON is parsed here, not by DRF, so the size limit applies before parsing.
    parser_classes = []

    def get_authenticators(self):
        return [
            DeferredCsrfSessionAuthentication() if isinstance(auth, SessionAuthentication) else auth
            for auth in super().get_authenticators()
        ]

    def check_csrf(self, request, body_token=None):
        if not self._token_authenticated(request):
            _enforce_csrf(request._request, body_token)

    @staticmethod
    def _token_authenticated(request):
        authenticator = request.successful_authenticator
        return authenticator is not None and not isinstance(authenticator, SessionAuthentication)

    @staticmethod
    def _read_json(request):
        """The JSON body of Django's ``request``, within the size limit."""
        content_type = (request.content_type or "").split(";")[0].strip().lower()
        if content_type not in ("application/json", "text/plain", ""):
            raise ParseError(f"Send JSON (application/json), not {content_type!r}.")
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise ParseError("Invalid Content-Length.") from None
        if length > MAX_EVENTS_BODY_BYTES:
            raise ParseError(f"Request body too large: at most {MAX_EVENTS_BODY_BYTES} bytes.")
        body = request.read(MAX_EVENTS_BODY_BYTES + 1)
        if len(body) > MAX_EVENTS_BODY_BYTES:
            raise ParseError(f"Request body too large: at most {MAX_EVENTS_BODY_BYTES} bytes.")
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ParseError(f"Malformed JSON: {exc}") from None
        except RecursionError:
            # json.loads recurses per nesting level: "[[[[...]]]]" within the size limit would crash it.
            raise ParseError("Malformed JSON: nested too deeply.") from None


class EventIngestView(SessionWriteMixin, APIView):
    """Record one event, or a batch, for the current shopper.

    The tracker's posts (identified by the session cookie, no Authorization header) are
    answered by ``_ingest`` straight from Django's request: the same throttle, CSRF check,
    limits, errors and exception handler as the DRF path, without DRF's request wrapping,
    authenticator loop, content negotiation and renderer, which cost about as much CPU as
    storing the event. Other clients (token or other authentication) go through DRF.
    """

    throttle_classes = [EventsRateThrottle]

    def dispatch(self, request, *args, **kwargs):
        if request.method != "POST" or not self._cookie_shopper(request):
            return super().dispatch(request, *args, **kwargs)
        self.args, self.kwargs, self.request, self.headers = args, kwargs, request, {}
        try:
            for throttle in self.get_throttles():
                if not throttle.allow_request(request, self):
                    self.throttled(request, throttle.wait())
            data, status_code = self._ingest(request)
        except Exception as exc:  # noqa: BLE001 - the API's exception handler decides, as in DRF
            response = self.get_exception_handler()(exc, self.get_exception_handler_context())
            if response is None:
                raise
            headers = {
                name: value for name, value in response.items() if name.lower() != "content-type"
            }
            return JsonResponse(response.data, status=response.status_code, headers=headers)
        return JsonResponse(data, status=status_code)

    def _cookie_shopper(self, request):
        return "HTTP_AUTHORIZATION" not in request.META and any(
            issubclass(auth, SessionAuthentication) for auth in self.authentication_classes
        )

    @extend_schema(
        request={"application/json": EventBatchInSerializer},
        responses={201: EventsStoredSerializer, **WRITE_ERRORS},
        examples=[
            OpenApiExample(
                "A view", value={"events": [{"kind": "view", "item": "42"}]}, request_only=True
            )
        ],
        summary="Record shopper events",
        description=(
            'One event object, a list of events, or {"events": [...]} (at most MAX_BATCH_SIZE). '
            "The shopper is the logged-in user or the anonymous session; a batch is stored whole or not at all."
        ),
    )
    def post(self, request):
        data, status_code = self._ingest(
            request._request, token_authenticated=self._token_authenticated(request)
        )
        return Response(data, status=status_code)

    def _ingest(self, request, token_authenticated=False):
        """Parse, check CSRF, record: (response data, status). ``request`` is Django's."""
        payload = self._read_json(request)
        items, token = self._unwrap(payload)
        if not token_authenticated:
            _enforce_csrf(request, token)
        try:
            result = events.record_many(items, **shopper_of(request))
        except events.EventValidationError as exc:
            return {
                "detail": str(exc),
                "errors": {str(k): v for k, v in exc.errors.items()},
            }, status.HTTP_400_BAD_REQUEST
        return {"stored": result.stored, "duplicates": result.duplicates}, status.HTTP_201_CREATED

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
            raise ParseError('Send an event object, a list of events or {"events": [...]}.')
        limit = recommender_settings.MAX_BATCH_SIZE
        if len(payload) > limit:
            raise ParseError(f"At most {limit} events per request, got {len(payload)}.")
        if token is not None and not isinstance(token, str):
            raise ParseError("'csrf_token' must be a string.")
        return payload, token


class ImpressionsView(SessionWriteMixin, APIView):
    """The tracker reports which recommendation lists were seen on screen."""

    throttle_classes = [EventsRateThrottle]

    @extend_schema(
        request={"application/json": ImpressionsInSerializer},
        responses={200: ImpressionsCountedSerializer, **WRITE_ERRORS},
        summary="Count impressions of recommendation lists",
    )
    def post(self, request):
        payload = self._read_json(request._request)
        if not isinstance(payload, dict):
            raise ParseError('Send {"recommendations": [ids]}.')
        serializer = ImpressionsInSerializer(data=payload)
        if not serializer.is_valid():
            return Response(
                {"detail": "Invalid impressions.", "errors": serializer.errors}, status=400
            )
        self.check_csrf(request, serializer.validated_data.get("csrf_token"))
        counted = serving.record_impressions(serializer.validated_data["recommendations"])
        return Response({"counted": counted})


LIMIT = OpenApiParameter("limit", int, description="How many items (1..MAX_LIMIT, default 10).")
PLACEMENT = OpenApiParameter(
    "placement",
    str,
    description=(
        "Where the list is shown: one of the store's placement names (PLACEMENT_NAMES, "
        "PLACEMENTS; by default home, category, product, product-similar, "
        "product-bought-together, cart, checkout, search). Any other is a 400."
    ),
)
CATEGORY = OpenApiParameter("category", str, description="Only items of this category.")
REASONS = OpenApiParameter(
    "reasons",
    bool,
    description=(
        "true: each item's `reason` names the shopper's own history item that added most to "
        "its score (computed once per list, then cached); false (default): `reason` is null."
    ),
)


class ServingView(APIView):
    """Read endpoints: parameters are checked, service errors become 400s."""

    permission_classes = [AllowAny]
    throttle_classes = [ShopperRateThrottle]
    schema = AutoSchema()  # whatever the site's DEFAULT_SCHEMA_CLASS (see .schema)

    def params(self, request, *names):
        query = request.query_params
        unknown = set(query) - set(names) - {"format"}
        if unknown:
            shown = ", ".join(repr(name)[:40] for name in sorted(unknown)[:5])
            raise serving.BadRequest(f"Unknown parameter(s): {shown}.")
        for name in names:
            # Placement is stored with the list it names, and PostgreSQL refuses NUL in text.
            if "\x00" in query.get(name, ""):
                raise serving.BadRequest(f"{name} must not contain NUL characters.")
        values = {"limit": query.get("limit", 10), "placement": query.get("placement", "")}
        if "category" in names and query.get("category") not in (None, ""):
            values["category"] = query["category"]
        if "window" in names:
            values["window"] = query.get("window", "popular")
        return {k: v for k, v in values.items() if k in names and k != "reasons"}

    @staticmethod
    def wants_reasons(request):
        value = request.query_params.get("reasons", "false").lower()
        if value not in ("true", "false", "1", "0"):
            raise serving.BadRequest("reasons must be true or false.")
        return value in ("true", "1")

    def answer(self, make_list, request=None):
        try:
            reasons = request is not None and self.wants_reasons(request)
            recs = make_list()
        except serving.BadRequest as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        return Response(recommendation_list_as_json(recs, reasons=reasons))

    @staticmethod
    def get_item(pk):
        """The item, or the same 404 for an unknown item and one the store hides."""
        try:
            pk = itemkeys.from_json(pk)
        except ValidationError:
            raise Http404("No such item.") from None
        item = serving.visible_item(pk)
        if item is None:
            raise Http404("No such item.")
        return item


class MyRecommendationsView(ServingView):
    """The current shopper's recommendations (logged-in user, or anonymous session)."""

    @extend_schema(
        parameters=[LIMIT, PLACEMENT, CATEGORY, REASONS],
        responses={200: RecommendationListSerializer, **READ_ERRORS},
    )
    def get(self, request):
        return self.answer(
            lambda: serving.recommend(
                **shopper_of(request._request, create=False),
                **self.params(request, "limit", "placement", "category", "reasons"),
            ),
            request,
        )


class CanViewShopperData(BasePermission):
    """Staff who may read shoppers' events in the admin (``recommender.view_event``).

    A user's recommendations are computed from their events, so they show as much of what
    the user did: being staff (say, a catalogue editor) is not enough to read them.
    """

    def has_permission(self, request, view):
        user = request.user
        return bool(
            user
            and user.is_authenticated
            and user.is_staff
            and user.has_perm("recommender.view_event")
        )


class UserRecommendationsView(ServingView):
    """Staff with ``recommender.view_event``: any user's recommendations, as that user sees them."""

    permission_classes = [CanViewShopperData]

    @extend_schema(
        parameters=[LIMIT, PLACEMENT, CATEGORY, REASONS],
        responses={
            200: RecommendationListSerializer,
            **READ_ERRORS,
            403: ErrorSerializer,
            404: ErrorSerializer,
        },
    )
    def get(self, request, user_id):
        user = get_user_model()._default_manager.filter(pk=user_id).first()
        if user is None:
            raise Http404("No such user.")
        # Staff looking: the user's arm decides the list, but they were not served it.
        return self.answer(
            lambda: serving.recommend(
                user=user,
                expose=False,
                **self.params(request, "limit", "placement", "category", "reasons"),
            ),
            request,
        )


class SimilarItemsView(ServingView):
    @extend_schema(
        parameters=[LIMIT, PLACEMENT],
        responses={200: RecommendationListSerializer, **READ_ERRORS, 404: ErrorSerializer},
    )
    def get(self, request, item_id):
        item = self.get_item(item_id)
        return self.answer(
            lambda: serving.similar(
                item,
                **shopper_of(request._request, create=False),
                **self.params(request, "limit", "placement"),
            )
        )


class BoughtTogetherView(ServingView):
    @extend_schema(
        parameters=[LIMIT, PLACEMENT],
        responses={200: RecommendationListSerializer, **READ_ERRORS, 404: ErrorSerializer},
    )
    def get(self, request, item_id):
        item = self.get_item(item_id)
        return self.answer(
            lambda: serving.bought_together(
                item,
                **shopper_of(request._request, create=False),
                **self.params(request, "limit", "placement"),
            )
        )


class PopularItemsView(ServingView):
    @extend_schema(
        parameters=[
            LIMIT,
            PLACEMENT,
            CATEGORY,
            OpenApiParameter("window", str, enum=["popular", "trending"]),
        ],
        responses={200: RecommendationListSerializer, **READ_ERRORS},
    )
    def get(self, request):
        return self.answer(
            lambda: serving.popular(
                **shopper_of(request._request, create=False),
                **self.params(request, "limit", "placement", "category", "window"),
            )
        )


def not_found(request, *args, **kwargs):
    """The API's answer to a path it does not have: JSON, like its other errors."""
    return JsonResponse({"detail": "Not found."}, status=404)
