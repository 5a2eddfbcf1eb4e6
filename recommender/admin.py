"""Operating the recommender from the Django admin.

Events are read-only evidence with a dashboard and a "forget a shopper" page; model
versions can be retrained, watched while they train, compared and activated (rolled
back). Every custom page is a ``ModelAdmin.get_urls`` view wrapped in
``admin_site.admin_view`` (staff login) and checks a model permission:

* retrain:            ``recommender.add_modelversion`` (a run creates a version)
* activate/roll back: ``recommender.change_modelversion``
* progress JSON:      ``recommender.view_modelversion``
* events dashboard:   ``recommender.view_event``
* forget a shopper:   ``recommender.delete_event``
* start, stop, promote an experiment: ``recommender.run_experiment`` (a staff user
  without it sees the experiment's page and results, with no buttons; a POST is a 403)

The views hold no logic of their own: they call ``training``, ``ModelVersion.activate``,
``experiment_lifecycle``, ``reports``, ``experiment_results`` and ``privacy``.
"""

import math
from datetime import UTC, datetime, timedelta

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import ObjectDoesNotExist, PermissionDenied, ValidationError
from django.http import Http404, HttpResponseNotAllowed, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from . import (
    charts,
    experiment_lifecycle,
    experiment_results,
    privacy,
    reports,
    sequential,
    tasks,
    training,
)
from .conf import recommender_settings
from .models import Arm, Event, Experiment, ModelVersion

# --------------------------------------------------------------------------- events


class ShopperTypeFilter(admin.SimpleListFilter):
    title = "shopper"
    parameter_name = "shopper"

    def lookups(self, request, model_admin):
        return [("user", "Logged-in users"), ("anonymous", "Anonymous sessions")]

    def queryset(self, request, queryset):
        if self.value() == "user":
            return queryset.filter(user__isnull=False)
        if self.value() == "anonymous":
            return queryset.filter(user__isnull=True)
        return queryset


class ForgetShopperForm(forms.Form):
    """Name exactly one shopper: a username, a user id, or an anonymous session key."""

    username = forms.CharField(required=False, max_length=150)
    user_id = forms.IntegerField(required=False, min_value=1, label="User id")
    session_key = forms.CharField(required=False, max_length=40, label="Anonymous session key")

    def clean(self):
        data = super().clean()
        given = [
            name
            for name in ("username", "user_id", "session_key")
            if data.get(name) not in (None, "")
        ]
        if len(given) != 1:
            raise forms.ValidationError("Fill in exactly one of username, user id or session key.")
        User = get_user_model()
        if data.get("username"):
            try:
                data["user"] = User._default_manager.get(**{User.USERNAME_FIELD: data["username"]})
            except User.DoesNotExist:
                raise forms.ValidationError(f"No user is named {data['username']!r}.") from None
        elif data.get("user_id"):
            try:
                data["user"] = User._default_manager.get(pk=data["user_id"])
            except User.DoesNotExist:
                raise forms.ValidationError(f"No user has id {data['user_id']}.") from None
        else:
            data["user"] = None
        return data

    def shopper(self):
        return {
            "user": self.cleaned_data["user"],
            "session_key": self.cleaned_data.get("session_key") or "",
        }

    def describe(self):
        user = self.cleaned_data["user"]
        return (
            f"user {user} (id {user.pk})"
            if user
            else f"anonymous session {self.cleaned_data['session_key']}"
        )


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    """Events are evidence: staff may look and filter, never edit or add."""

    list_display = [
        "occurred_at",
        "kind",
        "item_or_deleted",
        "user",
        "short_session",
        "value",
        "placement",
    ]
    list_filter = [
        "kind",
        ShopperTypeFilter,
        ("occurred_at", admin.DateFieldListFilter),
        "placement",
    ]
    search_fields = ["=user__username", "=session_key", "=event_id", "=recommendation_id"]
    date_hierarchy = "occurred_at"
    list_select_related = ["user"]
    raw_id_fields = ["item", "user"]
    show_full_result_count = False
    list_per_page = 100

    def get_queryset(self, request):
        # Prefetched, not joined: an event whose product was deleted keeps its row (and
        # the join would hide it); one query for the page's items.
        return super().get_queryset(request).prefetch_related("item")

    @admin.display(description="item", ordering="item")
    def item_or_deleted(self, event):
        try:
            return event.item
        except ObjectDoesNotExist:
            return f"deleted item {event.item_id}"

    @admin.display(description="session", ordering="session_key")
    def short_session(self, event):
        return event.session_key[:8]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("dashboard/", wrap(self.dashboard_view), name="recommender_event_dashboard"),
            path("forget/", wrap(self.forget_view), name="recommender_event_forget"),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "can_forget": self.has_delete_permission(request)}
        return super().changelist_view(request, extra_context)

    def dashboard_view(self, request):
        """Events per kind per day, active shoppers, top items and carousel CTR."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        days = 30
        start, end = reports.day_range(days)
        day_list = reports.days_between(start, end)
        day_labels = [day.strftime("%b %d") for day in day_list]
        per_kind = reports.events_per_kind_per_day(start, end)
        kinds = [k for k in recommender_settings.EVENT_KINDS if k in per_kind] + sorted(
            set(per_kind) - set(recommender_settings.EVENT_KINDS)
        )
        events_chart = charts.bar_chart(
            day_labels,
            [(kind, [per_kind[kind].get(day, 0) for day in day_list]) for kind in kinds],
            stacked=True,
            title=f"Events per day, last {days} days",
            x_title="day",
            y_title="events",
            width=880,
            height=320,
            css_class="rec-events-chart",
            empty_message="No events in the last 30 days.",
        )
        ctr_rows = reports.carousel_ctr_per_day(start, end)
        ctr_chart = charts.line_chart(
            day_labels,
            [("CTR", [ctr for _, _, _, ctr in ctr_rows])],
            title="Carousel click-through rate per day",
            x_title="day",
            y_title="clicks / impressions",
            y_format=_percent,
            zero_based=True,
            width=880,
            height=260,
            css_class="rec-ctr-chart",
            empty_message="No carousel impressions in the last 30 days.",
        )
        now = timezone.now()
        shoppers = [
            (label, reports.active_shoppers(now - timedelta(days=n)))
            for label, n in (("last 24 hours", 1), ("last 7 days", 7), ("last 30 days", 30))
        ]
        week_start = now - timedelta(days=7)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Events overview",
            "days": days,
            "events_chart": events_chart,
            "ctr_chart": ctr_chart,
            "ctr_rows": [
                (day, shown, clicked, _percent(ctr))
                for day, shown, clicked, ctr in ctr_rows
                if shown or clicked
            ],
            "shoppers": shoppers,
            "top_viewed": reports.top_items(week_start, now, "view"),
            "top_purchased": reports.top_items(week_start, now, "purchase"),
            "totals": {kind: sum(per_kind[kind].values()) for kind in kinds},
        }
        return TemplateResponse(request, "admin/recommender/event/dashboard.html", context)

    def forget_view(self, request):
        """Privacy requests: preview, then delete one shopper's events and cached lists."""
        if not self.has_delete_permission(request):
            raise PermissionDenied
        form = ForgetShopperForm(request.POST or None)
        preview = None
        if request.method == "POST" and form.is_valid():
            # Confirm only the shopper whose deletion was previewed, not one typed in since.
            if request.POST.get("confirm") == form.describe():
                result = privacy.forget_shopper(**form.shopper())
                self.message_user(
                    request,
                    f"Forgot {form.describe()}: deleted {result.describe()} and their cached recommendations.",
                    messages.SUCCESS,
                )
                return HttpResponseRedirect(reverse("admin:recommender_event_changelist"))
            preview = privacy.preview_forget(**form.shopper())
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Forget a shopper",
            "form": form,
            "preview": preview,
            "who": form.describe() if preview is not None else "",
        }
        return TemplateResponse(request, "admin/recommender/event/forget.html", context)


# --------------------------------------------------------------------------- model versions


STAGE_PERCENT = {
    "starting": 1,
    "export": 3,
    "clean": 7,
    "train": 10,
    "evaluate": 91,
    "blend": 92,
    "refit": 93,
    "index": 95,
    "save": 97,
    "done": 100,
}


def progress_percent(version):
    """How far a run is, 0-100: the training epochs take the 10%-90% band."""
    if version.status == ModelVersion.Status.READY:
        return 100
    progress = version.progress or {}
    stage = progress.get("stage") or ""
    if stage == "train" and progress.get("epochs"):
        return round(
            10 + 80 * min(progress.get("epoch") or 0, progress["epochs"]) / progress["epochs"]
        )
    return STAGE_PERCENT.get(stage, 0)


def progress_payload(version):
    """What the change page's poller shows: the row's status and live progress."""
    return {
        "id": version.pk,
        "status": version.status,
        "status_label": version.get_status_display(),
        "is_active": version.is_active,
        "finished": version.status in (ModelVersion.Status.READY, ModelVersion.Status.FAILED),
        "percent": progress_percent(version),
        "progress": version.progress or {},
        "error": version.error,
        "decision": version.decision,
    }


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = [
        "version_link",
        "active_badge",
        "status_badge",
        "trigger",
        "created_at",
        "duration_display",
        "data_size",
        "val_hr10",
        "val_ndcg10",
        "coverage10",
        "impressions",
        "clicks",
        "ctr",
    ]
    list_display_links = None
    list_filter = ["status", "is_active", "trigger"]
    readonly_fields = [f.name for f in ModelVersion._meta.fields]
    fieldsets = [
        (None, {"fields": ["status", "is_active", "trigger", "model_name", "decision", "error"]}),
        (
            "When",
            {"fields": ["created_at", "started_at", "finished_at", "activated_at", "heartbeat_at"]},
        ),
        (
            "Data and results",
            {
                "classes": ["collapse"],
                "fields": ["data_stats", "metrics", "config", "curve", "progress"],
            },
        ),
        (
            "Artifact",
            {"classes": ["collapse"], "fields": ["artifact", "artifact_sha256", "task_id"]},
        ),
    ]
    actions = ["retrain_action", "activate_action"]

    def get_queryset(self, request):
        return reports.with_online_metrics(super().get_queryset(request))

    # ----------------------------------------------------------------- columns

    @admin.display(description="version", ordering="pk")
    def version_link(self, version):
        url = reverse("admin:recommender_modelversion_change", args=[version.pk])
        return format_html(
            '<a href="{}">v{} {}</a>', url, version.pk, version.model_name or "model"
        )

    @admin.display(description="active", ordering="is_active")
    def active_badge(self, version):
        if version.is_active:
            return mark_safe(
                '<span class="rec-badge rec-badge-active" title="Serving now">★ active</span>'
            )
        return mark_safe('<span class="rec-inactive"></span>')  # blank, not the admin's "-"

    @admin.display(description="status", ordering="status")
    def status_badge(self, version):
        return format_html(
            '<span class="rec-badge rec-status-{}">{}</span>', version.status, version.status
        )

    @admin.display(description="duration")
    def duration_display(self, version):
        return _duration(version.duration)

    @admin.display(description="data (shoppers · items · events)")
    def data_size(self, version):
        stats = version.data_stats or {}
        if not stats:
            return "—"
        return " · ".join(f"{stats.get(key, 0):,}" for key in ("shoppers", "items", "events"))

    @admin.display(description="val HR@10")
    def val_hr10(self, version):
        return _fmt(version.metric("hr@10"))

    @admin.display(description="val NDCG@10")
    def val_ndcg10(self, version):
        return _fmt(version.metric("ndcg@10"))

    @admin.display(description="coverage@10")
    def coverage10(self, version):
        return _fmt(version.metric("coverage@10"))

    @admin.display(description="impressions", ordering="impressions")
    def impressions(self, version):
        return f"{version.impressions:,}"

    @admin.display(description="clicks", ordering="clicks")
    def clicks(self, version):
        return f"{version.clicks:,}"

    @admin.display(description="CTR")
    def ctr(self, version):
        return _percent(version.clicks / version.impressions) if version.impressions else "—"

    # ----------------------------------------------------------------- permissions

    def has_add_permission(self, request):
        return False  # versions are made by training runs, never typed in

    def can_retrain(self, request):
        return request.user.has_perm(f"{self.opts.app_label}.add_modelversion")

    def has_delete_permission(self, request, obj=None):
        if obj is not None and (
            obj.is_active or obj.status in (ModelVersion.Status.QUEUED, ModelVersion.Status.RUNNING)
        ):
            return False
        return super().has_delete_permission(request, obj)

    def delete_queryset(self, request, queryset):
        protected = queryset.filter(is_active=True) | queryset.filter(
            status__in=["queued", "running"]
        )
        if protected.exists():
            self.message_user(
                request,
                "The active version and queued or running ones are kept; deleted the others.",
                messages.WARNING,
            )
        super().delete_queryset(request, queryset.exclude(pk__in=protected.values("pk")))

    # ----------------------------------------------------------------- urls and views

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("retrain/", wrap(self.retrain_view), name="recommender_modelversion_retrain"),
            path(
                "<int:pk>/progress/",
                wrap(self.progress_view),
                name="recommender_modelversion_progress",
            ),
            path(
                "<int:pk>/activate/",
                wrap(self.activate_view),
                name="recommender_modelversion_activate",
            ),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        running = ModelVersion.objects.running().order_by("created_at").first()
        extra_context = {
            **(extra_context or {}),
            "running_version": running,
            "can_retrain": self.can_retrain(request),
            "active_version": ModelVersion.objects.active(),
        }
        return super().changelist_view(request, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        version = self.get_object(request, object_id)
        extra = {
            "show_save": False,
            "show_save_and_continue": False,
            "show_save_and_add_another": False,
        }
        if version is not None:
            extra.update(self._version_context(request, version))
        return super().change_view(request, object_id, form_url, {**extra, **(extra_context or {})})

    def _version_context(self, request, version):
        previous = reports.previous_active(version)
        curve = version.curve or []
        epochs = [row.get("epoch", i + 1) for i, row in enumerate(curve)]
        loss_chart = charts.line_chart(
            epochs,
            [("training loss", [row.get("loss") for row in curve])],
            title="Training loss per epoch",
            x_title="epoch",
            y_title="loss",
            css_class="rec-loss-chart",
            empty_message="No epochs recorded.",
        )
        ndcg_chart = charts.line_chart(
            epochs,
            [
                ("validation NDCG@10", [row.get("val_ndcg10") for row in curve]),
                ("validation HR@10", [row.get("val_hr10") for row in curve]),
            ],
            title="Validation NDCG@10 and HR@10 per epoch",
            x_title="epoch",
            y_title="metric",
            zero_based=True,
            css_class="rec-ndcg-chart",
            empty_message="No epochs recorded.",
        )
        comparison = _comparison(version, previous)
        comparison_chart = charts.bar_chart(
            [label for label, _ in COMPARED_METRICS],
            [(name, values) for name, values in comparison],
            title="Validation metrics compared",
            y_title="score",
            width=720,
            height=300,
            css_class="rec-comparison-chart",
            empty_message="No metrics yet.",
        )
        online = reports.online_metrics_by_placement(version)
        stats = version.data_stats or {}
        return {
            "version": version,
            "previous_version": previous,
            "progress": progress_payload(version),
            "progress_url": reverse("admin:recommender_modelversion_progress", args=[version.pk]),
            "activate_url": reverse("admin:recommender_modelversion_activate", args=[version.pk]),
            "can_activate": self.has_change_permission(request, version),
            "is_live": version.status in (ModelVersion.Status.QUEUED, ModelVersion.Status.RUNNING),
            "loss_chart": loss_chart,
            "ndcg_chart": ndcg_chart,
            "comparison_chart": comparison_chart,
            "comparison_headers": [name for name, _ in comparison],
            "comparison_rows": [
                (label, [values[i] for _, values in comparison])
                for i, (label, _) in enumerate(COMPARED_METRICS)
            ],
            "online": [
                {
                    "placement": row.placement,
                    "lists": row.lists,
                    "impressions": row.impressions,
                    "clicks": row.clicks,
                    "ctr": _percent(row.ctr) if row.ctr is not None else "—",
                }
                for row in online
            ],
            "data_stats": [
                (key, f"{stats[key]:,}")
                for key in ("shoppers", "items", "events")
                if isinstance(stats.get(key), int)
            ],
            "duration": _duration(version.duration),
            "best_epoch": (version.metrics or {}).get("best_epoch"),
            "stopped": (version.metrics or {}).get("stopped"),
            "visit_start_weight": (version.metrics or {}).get("visit_start_weight"),
            "choice": _choice_facts(version),
        }

    def progress_view(self, request, pk):
        """Small JSON for the change page's poller; staff with view permission only."""
        version = get_object_or_404(ModelVersion, pk=pk)
        if not self.has_view_permission(request, version):
            raise PermissionDenied
        return JsonResponse(progress_payload(version))

    def retrain_view(self, request):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.can_retrain(request):
            raise PermissionDenied
        version = self._request_training(request)
        if version is not None:
            return HttpResponseRedirect(
                reverse("admin:recommender_modelversion_change", args=[version.pk])
            )
        return HttpResponseRedirect(reverse("admin:recommender_modelversion_changelist"))

    def _request_training(self, request):
        try:
            version = tasks.queue_training(ModelVersion.Trigger.ADMIN)
        except training.TrainingInProgress as exc:
            self.message_user(request, f"Not started: {exc} Wait for it to finish.", messages.ERROR)
            return None
        except training.TrainingError as exc:
            self.message_user(request, f"Not started: {exc}", messages.ERROR)
            return None
        self.message_user(
            request,
            f"Queued training v{version.pk}; its page shows the progress.",
            messages.SUCCESS,
        )
        return version

    def activate_view(self, request, pk):
        """Confirm, then make a ready version the one that serves (promotion or rollback)."""
        version = self.get_object(request, str(pk))
        if version is None:
            raise Http404(f"No model version {pk}.")
        if not self.has_change_permission(request, version):
            raise PermissionDenied
        change_url = reverse("admin:recommender_modelversion_change", args=[version.pk])
        if version.status != ModelVersion.Status.READY:
            self.message_user(
                request,
                f"v{version.pk} is {version.status}: only a ready (trained and evaluated) version can be activated.",
                messages.ERROR,
            )
            return HttpResponseRedirect(change_url)
        if version.is_active:
            self.message_user(
                request, f"v{version.pk} is already the active version.", messages.INFO
            )
            return HttpResponseRedirect(change_url)
        active = ModelVersion.objects.active()
        if request.method == "POST":
            try:
                version.activate()
            except ValueError as exc:
                self.message_user(request, str(exc), messages.ERROR)
                return HttpResponseRedirect(change_url)
            verb = (
                "Rolled back to"
                if active and active.created_at > version.created_at
                else "Activated"
            )
            self.message_user(
                request,
                f"{verb} v{version.pk}" + (f" (v{active.pk} no longer serves)." if active else "."),
                messages.SUCCESS,
            )
            return HttpResponseRedirect(change_url)
        comparison = _comparison(version, active)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Activate v{version.pk}?",
            "version": version,
            "active_version": active,
            "is_rollback": bool(active and active.created_at > version.created_at),
            "comparison_headers": [name for name, _ in comparison],
            "comparison_rows": [
                (label, [values[i] for _, values in comparison])
                for i, (label, _) in enumerate(COMPARED_METRICS)
            ],
            "change_url": change_url,
        }
        return TemplateResponse(
            request, "admin/recommender/modelversion/activate_confirmation.html", context
        )

    # ----------------------------------------------------------------- actions

    @admin.action(description="Retrain now (the selection is ignored)", permissions=["retrain"])
    def retrain_action(self, request, queryset):
        self._request_training(request)

    def has_retrain_permission(self, request):
        return self.can_retrain(request)

    @admin.action(
        description="Activate / roll back to the selected version", permissions=["change"]
    )
    def activate_action(self, request, queryset):
        versions = list(queryset[:2])
        if len(versions) != 1:
            self.message_user(request, "Select exactly one version to activate.", messages.ERROR)
            return None
        return HttpResponseRedirect(
            reverse("admin:recommender_modelversion_activate", args=[versions[0].pk])
        )


# --------------------------------------------------------------------------- experiments


def placement_choices():
    """The placements an experiment may run in: the store's names, and none ("")."""
    from .serving import accepted_placements

    names = sorted(accepted_placements() - {""})
    return [(name, name) for name in names] + [("", "no placement (API calls without one)")]


class ExperimentForm(forms.ModelForm):
    placements = forms.MultipleChoiceField(
        choices=placement_choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Where it runs; none ticked: every placement. At most one experiment runs per placement.",
    )
    primary_metric = forms.ChoiceField(
        choices=experiment_results.PRIMARY_METRIC_CHOICES,
        help_text="What the verdict is about; the other metrics are shown beside it.",
    )

    class Meta:
        model = Experiment
        fields = ["name", "placements", "primary_metric", "attribution_hours", "confidence"]

    def clean_confidence(self):
        confidence = self.cleaned_data["confidence"]
        if not 0.5 <= confidence <= 0.999:
            raise forms.ValidationError("Between 0.5 and 0.999, e.g. 0.95.")
        return confidence

    def clean_attribution_hours(self):
        hours = self.cleaned_data["attribution_hours"]
        if hours < 1:
            raise forms.ValidationError("At least one hour.")
        return hours


class ArmInline(admin.TabularInline):
    model = Arm
    fields = ["name", "ranker", "version", "share"]
    extra = 0
    min_num = 2

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "version":
            kwargs["queryset"] = ModelVersion.objects.filter(
                status=ModelVersion.Status.READY
            ).exclude(artifact="")
            kwargs["help_text"] = (
                "Ready versions with a model file; empty for the popular items. An item-kNN "
                "arm serves this version's item-kNN lists alone (start checks it has them)."
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_extra(self, request, obj=None, **kwargs):
        return 2 if obj is None else 0

    def has_add_permission(self, request, obj=None):
        return (obj is None or obj.arms_editable) and super().has_add_permission(request, obj)

    def has_change_permission(self, request, obj=None):
        return (obj is None or obj.arms_editable) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return (obj is None or obj.arms_editable) and super().has_delete_permission(request, obj)


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    form = ExperimentForm
    inlines = [ArmInline]
    list_display = [
        "name",
        "status_badge",
        "placements_display",
        "arms_display",
        "started_at",
        "verdict_display",
    ]
    list_filter = ["status"]
    list_per_page = 20
    search_fields = ["name"]
    fixed_fields = ["status", "started_at", "stopped_at", "promoted_arm", "decision"]

    # ----------------------------------------------------------------- columns

    @admin.display(description="status", ordering="status")
    def status_badge(self, experiment):
        return format_html(
            '<span class="rec-badge rec-experiment-{}">{}</span>',
            experiment.status,
            experiment.status,
        )

    @admin.display(description="placements")
    def placements_display(self, experiment):
        return ", ".join(p or "none" for p in experiment.placements) or "all"

    @admin.display(description="arms")
    def arms_display(self, experiment):
        return " · ".join(_arm_label(arm) for arm in experiment.arms.all())

    @admin.display(description="verdict")
    def verdict_display(self, experiment):
        return experiment_results.short_verdict(experiment)

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("arms__version")

    # ----------------------------------------------------------------- permissions

    def can_run(self, request):
        return request.user.has_perm(f"{self.opts.app_label}.run_experiment")

    started_fields = [
        "name",
        "placements_display",
        "primary_metric_display",
        "attribution_hours",
        "confidence",
    ]

    @admin.display(description="primary metric")
    def primary_metric_display(self, experiment):
        metric = experiment_results.METRICS.get(experiment.primary_metric)
        return metric.label if metric else experiment.primary_metric

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and not obj.arms_editable:
            return [*self.started_fields, *self.fixed_fields]
        return self.fixed_fields

    def get_fields(self, request, obj=None):
        if obj is None:
            return ExperimentForm.Meta.fields
        if not obj.arms_editable:
            return [*self.started_fields, *self.fixed_fields]
        return [*ExperimentForm.Meta.fields, *self.fixed_fields]

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.status == Experiment.Status.RUNNING:
            return False  # stop it first: its shoppers are being served from its arms
        return super().has_delete_permission(request, obj)

    # ----------------------------------------------------------------- urls and views

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("<int:pk>/start/", wrap(self.start_view), name="recommender_experiment_start"),
            path("<int:pk>/stop/", wrap(self.stop_view), name="recommender_experiment_stop"),
            path(
                "<int:pk>/promote/<int:arm_pk>/",
                wrap(self.promote_view),
                name="recommender_experiment_promote",
            ),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        experiment = self.get_object(request, object_id)
        extra = {}
        if experiment is not None:
            extra = self._experiment_context(request, experiment)
            if not experiment.arms_editable:
                extra.update(
                    show_save=False,
                    show_save_and_continue=False,
                    show_save_and_add_another=False,
                )
        return super().change_view(request, object_id, form_url, {**extra, **(extra_context or {})})

    def _experiment_context(self, request, experiment):
        result = experiment_results.results(experiment)
        can_run = self.can_run(request)
        winner = result.winner
        return {
            "experiment": experiment,
            "result": result,
            "can_run": can_run,
            "winner": winner,
            "start_problems": (
                experiment_lifecycle.start_problems(experiment) if experiment.arms_editable else []
            ),
            "promotable": can_run
            and experiment.status != Experiment.Status.DRAFT
            and experiment.promoted_arm_id is None,
            "arm_columns": _arm_columns(result),
            "metric_rows": _metric_rows(result),
            "charts": _experiment_charts(result) if result.days else [],
            "min_sample": _min_sample(result),
            "many_arms": len(result.arms) > 2,
        }

    def _experiment_or_404(self, request, pk):
        experiment = self.get_object(request, str(pk))
        if experiment is None:
            raise Http404(f"No experiment {pk}.")
        return experiment

    def _lifecycle_request(self, request, pk):
        """The experiment of a start/stop POST, after the method and permission checks."""
        if request.method != "POST":
            return None, HttpResponseNotAllowed(["POST"])
        if not self.can_run(request):
            raise PermissionDenied
        return self._experiment_or_404(request, pk), None

    def start_view(self, request, pk):
        experiment, refused = self._lifecycle_request(request, pk)
        if refused:
            return refused
        try:
            experiment_lifecycle.start(experiment)
        except ValidationError as exc:
            for message in exc.messages:
                self.message_user(request, f"Not started: {message}", messages.ERROR)
        else:
            where = (
                f"placements {self.placements_display(experiment)}"
                if experiment.placements
                else "every placement"
            )
            self.message_user(
                request,
                f"Started {experiment.name!r}: the shoppers of {where} are now split between "
                "its arms.",
                messages.SUCCESS,
            )
        return HttpResponseRedirect(_experiment_url(experiment))

    def stop_view(self, request, pk):
        experiment, refused = self._lifecycle_request(request, pk)
        if refused:
            return refused
        try:
            experiment_lifecycle.stop(
                experiment,
                f"Stopped by {request.user.get_username()} on "
                f"{timezone.localtime():%Y-%m-%d %H:%M}; everyone is served by the active "
                "version again.",
            )
        except ValidationError as exc:
            self.message_user(request, " ".join(exc.messages), messages.ERROR)
        else:
            self.message_user(
                request,
                f"Stopped {experiment.name!r}: every shopper is served by the active version again.",
                messages.SUCCESS,
            )
        return HttpResponseRedirect(_experiment_url(experiment))

    def promote_view(self, request, pk, arm_pk):
        """Confirm, then make one arm what everyone is served, and stop the experiment."""
        if not self.can_run(request):
            raise PermissionDenied
        experiment = self._experiment_or_404(request, pk)
        arm = get_object_or_404(
            Arm.objects.select_related("version"), pk=arm_pk, experiment=experiment
        )
        change_url = _experiment_url(experiment)
        if request.method == "POST":
            try:
                experiment_lifecycle.promote(
                    experiment,
                    arm,
                    f"Promoted by {request.user.get_username()} on {timezone.localtime():%Y-%m-%d %H:%M}.",
                )
            except ValidationError as exc:
                self.message_user(request, " ".join(exc.messages), messages.ERROR)
            else:
                self.message_user(request, experiment.decision, messages.SUCCESS)
            return HttpResponseRedirect(change_url)
        result = experiment_results.results(experiment)
        winner = result.winner
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Promote arm {arm.name}?",
            "experiment": experiment,
            "arm": arm,
            "active_version": ModelVersion.objects.active(),
            "result": result,
            "is_winner": winner is not None and winner.arm.pk == arm.pk,
            "problem": _promotion_problem(experiment)
            or experiment_lifecycle.arm_promotion_problem(arm),
            "change_url": change_url,
        }
        return TemplateResponse(
            request, "admin/recommender/experiment/promote_confirmation.html", context
        )


def _experiment_url(experiment):
    return reverse("admin:recommender_experiment_change", args=[experiment.pk])


def _arm_label(arm):
    if arm.ranker == Arm.Ranker.POPULARITY:
        return f"{arm.name}: popular items"
    if arm.ranker == Arm.Ranker.ITEMKNN:
        return f"{arm.name}: item-kNN of v{arm.version_id}"
    return f"{arm.name}: v{arm.version_id} {arm.version.model_name}".rstrip()


def _promotion_problem(experiment):
    if experiment.status == Experiment.Status.DRAFT:
        return "It has not started: there is nothing to promote."
    if experiment.promoted_arm_id is not None:
        return f"It has already promoted arm {experiment.promoted_arm.name}."
    return ""


def _arm_columns(result):
    total_share = sum(a.arm.share for a in result.arms) or 1
    return [
        {
            "arm": a.arm,
            "label": _arm_label(a.arm),
            "control": index == 0,
            "share": f"{a.arm.share * 100 / total_share:.0f} %",
            "promote_url": reverse(
                "admin:recommender_experiment_promote", args=[result.experiment.pk, a.arm.pk]
            ),
        }
        for index, a in enumerate(result.arms)
    ]


def _metric_rows(result):
    """The side-by-side table's rows: counts, then each metric with its interval and lift."""
    arms = result.arms
    rows = [
        {"label": "Exposed shoppers", "cells": [{"value": f"{a.shoppers:,}"} for a in arms]},
        {"label": "Impressions", "cells": [{"value": f"{a.impressions:,}"} for a in arms]},
        {"label": "Clicks", "cells": [{"value": f"{a.clicks:,}"} for a in arms]},
        {"label": "Add-to-carts", "cells": [{"value": f"{a.carts:,}"} for a in arms]},
        {"label": "Purchases", "cells": [{"value": f"{a.purchases:,}"} for a in arms]},
        {"label": "Purchase value", "cells": [{"value": f"{a.value:,.2f}"} for a in arms]},
    ]
    per_impression = {"cart_rate": "carts", "purchases_per_shopper": "purchases",
                      "revenue_per_shopper": "value"}  # fmt: skip
    lifts = {
        key: {t.arm.pk: comparison for t, comparison in pairs}
        for key, pairs in result.comparisons.items()
    }
    for key, metric in experiment_results.METRICS.items():
        cells = []
        for index, a in enumerate(arms):
            interval = a.intervals.get(key)
            cell = {
                "value": experiment_results.format_value(key, a.estimates[key].value),
                "interval": (
                    f"[{experiment_results.format_value(key, interval[0])}, "
                    f"{experiment_results.format_value(key, interval[1])}]"
                    if interval
                    else ""
                ),
            }
            if key in per_impression and a.impressions:
                count = getattr(a, per_impression[key])
                cell["per_impression"] = (
                    f"{count * 1000 / a.impressions:,.2f} per 1,000 impressions"
                )
            comparison = lifts.get(key, {}).get(a.arm.pk) if index else None
            if comparison is not None:
                cell["lift"] = (
                    f"{experiment_results.format_lift(comparison.lift)} "
                    f"[{experiment_results.format_lift(comparison.low)}, "
                    f"{experiment_results.format_lift(comparison.high)}]"
                )
                cell["lift_sign"] = (
                    "up" if comparison.low > 0 else "down" if comparison.high < 0 else "even"
                )
            cells.append(cell)
        rows.append(
            {
                "key": key,
                "label": metric.label[:1].upper() + metric.label[1:],
                "meaning": metric.meaning,
                "primary": key == result.metric.key,
                "cells": cells,
            }
        )
    return rows


def _experiment_charts(result):
    """Each metric per day (cumulative since the start) per arm, with its always-valid band;
    then the primary metric's lift of each arm over the control, with its band and zero."""
    labels = [day.strftime("%b %d") for day in result.days]
    found = []
    for key, metric in experiment_results.METRICS.items():
        series, bands = [], {}
        for a in result.arms:
            values = [e.value if e.units else None for e in a.daily[key]]
            intervals = a.daily_intervals[key]
            series.append((a.arm.name, values))
            bands[a.arm.name] = (
                [i[0] if i else None for i in intervals],
                [i[1] if i else None for i in intervals],
            )
        settled = _first_settled_day(result, key)
        found.append(
            charts.line_chart(
                labels,
                series,
                bands=bands,
                y_range=_chart_range(series, bands, settled),
                title=metric.label[:1].upper() + metric.label[1:],
                x_title="day (cumulative since the start)",
                y_format=_percent if metric.percent else charts.format_number,
                zero_based=True,
                css_class=f"rec-experiment-chart rec-experiment-{key}",
                empty_message="No data yet.",
            )
        )
    lift_series, lift_bands = [], {}
    for treatment, comparisons in result.daily_lift:
        name = f"{treatment.arm.name} vs {result.control.arm.name}"
        lift_series.append((name, [c.lift if c else None for c in comparisons]))
        lift_bands[name] = (
            [c.low if c else None for c in comparisons],
            [c.high if c else None for c in comparisons],
        )
    found.insert(
        0,
        charts.line_chart(
            labels,
            lift_series,
            bands=lift_bands,
            reference=0.0,
            y_range=_chart_range(
                lift_series, lift_bands, _first_settled_day(result, result.metric.key)
            ),
            colors=[charts.PALETTE[i % len(charts.PALETTE)] for i in range(1, len(result.arms))],
            title=f"Lift on {result.metric.label} over {result.control.arm.name}",
            x_title="day (cumulative since the start)",
            y_format=_signed_percent,
            css_class="rec-experiment-chart rec-experiment-lift",
            empty_message="No lift to show yet: an arm has no conversions.",
        ),
    )
    return found


def _first_settled_day(result, key):
    """The first day on which every arm had the minimum sample on ``key``, or None."""
    for index in range(len(result.days)):
        if sequential.has_minimum_sample([a.daily[key][index] for a in result.arms]):
            return index
    return None


def _chart_range(series, bands, settled):
    """The y axis of an experiment chart: what it shows once the minimum sample is reached.

    Before that the intervals are wide and early values wild; they would flatten the days
    that matter, so they are cut at this range (the charts say where). Without a settled
    day yet: the values, and only the latest day's interval.
    """
    first = settled if settled is not None else None
    found = []
    for name, values in series:
        lows, highs = bands.get(name, ([], []))
        for index, value in enumerate(values):
            if first is None or index >= first:
                found.append(value)
            if (first is not None and index >= first) or (
                first is None and index == len(values) - 1
            ):
                found += [lows[index], highs[index]]
    found = [v for v in found if v is not None and math.isfinite(v)]
    return (min(found), max(found)) if found else None


def _min_sample(result):
    """The minimum sample in words: what every arm needs before any verdict, and what it has."""
    metric = result.metric
    estimates = [a.estimates[metric.key] for a in result.arms]
    needed = sequential.needed_units(estimates)
    have = min((e.units for e in estimates), default=0)
    successes = min((e.successes for e in estimates), default=0)
    return {
        "needed": f"{needed:,}" if needed else "",
        "have": f"{have:,}",
        "successes": f"{successes:,}",
        "unit": metric.unit,
        "success": metric.success,
        "min_units": sequential.MIN_UNITS,
        "min_successes": sequential.MIN_SUCCESSES,
        "reached": sequential.has_minimum_sample(estimates) if estimates else False,
        "detectable": f"{result.detectable:,}" if result.detectable else "",
        "confidence": f"{result.confidence * 100:.4g} %",
        "comparison_confidence": f"{(1 - result.comparison_alpha) * 100:.4g} %",
    }


def _signed_percent(value):
    return "—" if value is None else experiment_results.format_lift(value)


# --------------------------------------------------------------------------- helpers

COMPARED_METRICS = [
    ("HR@10", "hr@10"),
    ("NDCG@10", "ndcg@10"),
    ("MRR", "mrr"),
    ("coverage@10", "coverage@10"),
]


def _comparison(version, other):
    """``[(column name, [value per compared metric])]``: this version, ``other``, baselines."""
    columns = [(f"v{version.pk} (this)", version.metrics.get("valid") or {})]
    if other is not None and other.pk != version.pk and other.metrics.get("valid"):
        label = "active" if other.is_active else "previously active"
        columns.append((f"v{other.pk} ({label})", other.metrics["valid"]))
    for name, result in sorted((version.metrics.get("baselines") or {}).items()):
        # A run's other candidates: the baselines, or the trained model when a baseline serves.
        kind = "baseline" if name in ("popularity", "itemknn") else "trained, not chosen"
        columns.append((f"{name} {kind}", (result or {}).get("valid") or {}))
    if not columns[0][1]:
        return []
    return [(name, [metrics.get(key) for _, key in COMPARED_METRICS]) for name, metrics in columns]


def _choice_facts(version):
    """Which model the version holds and why; which model was validated and which refit."""
    choice = (version.metrics or {}).get("choice")
    if not choice:
        return None
    refit = choice.get("refit") or {}
    validated = (
        f"trained on events before {_when(choice.get('validated_until'))} and measured on the "
        f"{choice.get('validation_shoppers')} validation shoppers after that (the metrics below)"
    )
    if refit.get("done"):
        trained = (
            f"Validated: {validated}. Serves: {refit.get('reason')}, up to "
            f"{_when(choice.get('trained_until'))}."
        )
    elif refit:
        trained = f"Serves the validated model, {validated}: {refit.get('reason')}."
    else:
        trained = f"Serves the validated model, {validated} (REFIT is off)."
    return {"model": f"Model: {choice.get('reason')}.", "trained": trained}


def _when(timestamp):
    if timestamp is None:
        return "—"
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _fmt(value):
    return "—" if value is None else format_html("{}", f"{value:.4f}")


def _percent(value):
    return "—" if value is None else f"{value * 100:.2f}%"


def _duration(delta):
    if delta is None:
        return "—"
    seconds = int(delta.total_seconds())
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"
