"""Experiments in the admin: the page, its verdict and charts, and who may start, stop, promote."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils import timezone

from recommender.models import Arm, Experiment, ModelVersion

from .experiment_data import arm, make_experiment, populate, ready_version

pytestmark = pytest.mark.django_db


def url(experiment, action=""):
    base = f"/admin/recommender/experiment/{experiment.pk}/"
    return base + (f"{action}/" if action else "change/")


@pytest.fixture
def runner(client):
    """A superuser: may run experiments."""
    client.force_login(get_user_model().objects.create_superuser("boss", "b@example.com", "pw"))
    return client


@pytest.fixture
def watcher(client):
    """Staff who may view and edit experiments, but not start, stop or promote them."""
    user = get_user_model().objects.create_user("watcher", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="recommender",
            codename__in=["view_experiment", "change_experiment", "view_arm", "change_arm"],
        )
    )
    client.force_login(user)
    return client


@pytest.fixture
def decided(catalog):
    """Two weeks of a running experiment in which B sells clearly more than A."""
    serving, challenger = ready_version(), ready_version()
    serving.activate()
    start = timezone.now() - timedelta(days=14)
    experiment = make_experiment(
        name="Hybrid against the active one",
        arms=[("A", serving, 50), ("B", challenger, 50)],
        started_at=start,
    )
    items = catalog[:6]
    populate(
        arm(experiment, "A"), items, shoppers=1000, clickers=300, buyers=40, start=start, days=13
    )
    populate(arm(experiment, "B"), items, shoppers=1000, clickers=380, buyers=95, start=start, days=13, seed=1)  # fmt: skip
    return experiment


def new_experiment_form(name, arms, **fields):
    """The admin's add form for an experiment: ``arms`` ``[(name, ranker, version, share)]``."""
    data = {
        "name": name,
        "primary_metric": "purchases_per_shopper",
        "attribution_hours": "24",
        "confidence": "0.95",
        "arms-TOTAL_FORMS": str(len(arms)),
        "arms-INITIAL_FORMS": "0",
        "arms-MIN_NUM_FORMS": "2",
        "arms-MAX_NUM_FORMS": "1000",
    }
    for i, (arm_name, ranker, version, share) in enumerate(arms):
        data[f"arms-{i}-name"] = arm_name
        data[f"arms-{i}-ranker"] = ranker
        data[f"arms-{i}-version"] = str(version.pk) if version else ""
        data[f"arms-{i}-share"] = str(share)
    return {**data, **fields}


def test_the_page_shows_arms_side_by_side_charts_and_the_verdict(runner, decided):
    page = runner.get(url(decided))
    assert page.status_code == 200
    html = page.content.decode()
    verdict = page.context["result"].verdict
    assert len(verdict) == 1 and verdict[0].startswith("B beats A on purchases per shopper, +")
    assert verdict[0].endswith(", 95 %.") and verdict[0] in html
    # One chart per metric and one of the lift, each with bands.
    assert html.count("rec-chart rec-chart-line") == 6 and 'class="band"' in html
    assert 'id="experiment-arms"' in html and "1,000" in html
    assert 'id="experiment-stop"' in html and 'id="experiment-start"' not in html
    for name in ("A", "B"):
        assert f'id="experiment-promote-{arm(decided, name).pk}"' in html
    # Arms are fixed: no save buttons, no arm forms.
    assert 'name="_save"' not in html and 'name="arms-0-version"' not in html


def test_the_list_shows_status_arms_and_verdict(runner, decided, django_assert_max_num_queries):
    make_experiment(name="A draft", running=False)
    for n in range(5):  # past experiments show what was decided, without measuring them
        past = make_experiment(name=f"Past {n}", running=False)
        past.status, past.decision = "stopped", f"Promoted arm B of past {n}."
        past.save()
    with django_assert_max_num_queries(40):
        page = runner.get("/admin/recommender/experiment/")
    html = page.content.decode()
    assert page.status_code == 200
    assert "B beats A on purchases per shopper" in html and "Not started" in html
    assert "Promoted arm B of past 4." in html
    assert f"A: v{arm(decided, 'A').version_id} hybrid" in html


def test_a_new_experiment_is_created_as_a_draft_with_its_arms(runner):
    version = ready_version()
    unready = ModelVersion.objects.create(status=ModelVersion.Status.FAILED)
    form = runner.get("/admin/recommender/experiment/add/")
    assert form.status_code == 200
    choices = [
        str(v)
        for v in form.context["inline_admin_formsets"][0]
        .formset.forms[0]
        .fields["version"]
        .queryset
    ]
    assert str(version) in choices and str(unready) not in choices
    response = runner.post(
        "/admin/recommender/experiment/add/",
        new_experiment_form(
            "Popular against v1",
            [("A", "version", version, 50), ("Popular", "popularity", None, 50)],
            placements=["home", "cart"],
            primary_metric="revenue_per_shopper",
            attribution_hours="48",
        ),
    )
    assert response.status_code == 302, response.context["errors"] if response.context else ""
    experiment = Experiment.objects.get(name="Popular against v1")
    assert experiment.status == "draft" and experiment.placements == ["home", "cart"]
    assert experiment.primary_metric == "revenue_per_shopper"
    assert [(a.name, a.ranker) for a in experiment.arms.all()] == [
        ("A", "version"),
        ("Popular", "popularity"),
    ]


def test_a_popularity_arm_with_a_version_is_refused_in_the_form(runner):
    version = ready_version()
    experiment = make_experiment(name="draft", running=False, arms=[])
    response = runner.post(
        url(experiment),
        new_experiment_form(
            "draft", [("A", "popularity", version, 50), ("B", "version", None, 50)]
        ),
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "serves no model version: leave it empty" in html
    assert "Choose the model version this arm serves" in html
    assert not Arm.objects.exists()


def test_start_and_stop_from_the_page(runner):
    experiment = make_experiment(running=False, placements=["home"])
    page = runner.get(url(experiment))
    assert 'id="experiment-start"' in page.content.decode()
    response = runner.post(url(experiment, "start"), follow=True)
    experiment.refresh_from_db()
    assert experiment.status == "running"
    assert "Started" in response.content.decode()
    response = runner.post(url(experiment, "stop"), follow=True)
    experiment.refresh_from_db()
    assert experiment.status == "stopped" and "Stopped by boss" in experiment.decision
    assert runner.get(url(experiment, "stop")).status_code == 405


def test_a_refused_start_says_why(runner):
    make_experiment(name="Already running", placements=["home"])
    experiment = make_experiment(running=False, placements=["home"])
    page = runner.get(url(experiment)).content.decode()
    assert "Before it can start" in page and "Already running" in page
    response = runner.post(url(experiment, "start"), follow=True)
    assert (
        "Not started: &#x27;Already running&#x27; is running in home" in response.content.decode()
    )
    experiment.refresh_from_db()
    assert experiment.status == "draft"


def test_staff_without_the_permission_see_results_but_cannot_act(watcher, decided):
    page = watcher.get(url(decided))
    html = page.content.decode()
    assert page.status_code == 200 and "B beats A" in html
    assert "experiment-stop" not in html and "experiment-promote-" not in html
    b = arm(decided, "B")
    assert watcher.post(url(decided, "stop")).status_code == 403
    assert watcher.get(url(decided, f"promote/{b.pk}")).status_code == 403
    assert watcher.post(url(decided, f"promote/{b.pk}")).status_code == 403
    draft = make_experiment(running=False, placements=["cart"])
    assert 'id="experiment-start"' not in watcher.get(url(draft)).content.decode()
    assert watcher.post(url(draft, "start")).status_code == 403
    decided.refresh_from_db()
    draft.refresh_from_db()
    assert decided.status == "running" and draft.status == "draft"


def test_promote_asks_first_then_activates_the_arm_and_stops(runner, decided):
    b = arm(decided, "B")
    confirm = runner.get(url(decided, f"promote/{b.pk}"))
    html = confirm.content.decode()
    assert confirm.status_code == 200
    assert f"v{b.version_id} hybrid</strong> becomes the active version" in html
    assert "experiment-not-winner" not in html  # B is the winner
    assert not ModelVersion.objects.get(pk=b.version_id).is_active
    response = runner.post(url(decided, f"promote/{b.pk}"), follow=True)
    assert response.status_code == 200
    decided.refresh_from_db()
    assert decided.status == "stopped" and decided.promoted_arm_id == b.pk
    assert ModelVersion.objects.get(is_active=True).pk == b.version_id
    assert f"Promoted arm B: v{b.version_id} is now the active version" in response.content.decode()


def test_promoting_the_popular_items_says_what_it_means(runner):
    version = ready_version()
    version.activate()
    experiment = make_experiment(arms=[("A", version, 50), ("Popular", None, 50)])
    popular = arm(experiment, "Popular")
    html = runner.get(url(experiment, f"promote/{popular.pk}")).content.decode()
    assert "no model version will be active" in html
    assert "next training run" in html and 'id="experiment-not-winner"' in html
    runner.post(url(experiment, f"promote/{popular.pk}"))
    assert not ModelVersion.objects.filter(is_active=True).exists()


def test_arms_of_a_started_experiment_cannot_be_edited(runner, decided):
    a = arm(decided, "A")
    other = ready_version()
    runner.post(
        url(decided),
        {
            "arms-TOTAL_FORMS": "2",
            "arms-INITIAL_FORMS": "2",
            "arms-MIN_NUM_FORMS": "2",
            "arms-MAX_NUM_FORMS": "1000",
            "arms-0-id": str(a.pk),
            "arms-0-experiment": str(decided.pk),
            "arms-0-name": "A",
            "arms-0-ranker": "version",
            "arms-0-version": str(other.pk),
            "arms-0-share": "90",
        },
    )
    a.refresh_from_db()
    assert (a.version_id, a.share) != (other.pk, 90)
    assert runner.get(f"/admin/recommender/experiment/{decided.pk}/delete/").status_code == 403


def test_names_are_escaped_everywhere_they_are_shown(runner, catalog):
    version = ready_version()
    experiment = make_experiment(
        name="<script>alert(1)</script>",
        arms=[("<b>A</b>", version, 50), ("<i>B</i>", None, 50)],
        started_at=timezone.now() - timedelta(days=3),
    )
    for name, buyers in (("<b>A</b>", 3), ("<i>B</i>", 2)):  # the verdict names both arms
        populate(arm(experiment, name), catalog[:6], shoppers=50, clickers=10, buyers=buyers,
                 start=experiment.started_at, days=2)  # fmt: skip
    for page in (url(experiment), "/admin/recommender/experiment/",
                 url(experiment, f"promote/{arm(experiment, '<i>B</i>').pk}")):  # fmt: skip
        html = runner.get(page).content.decode()
        assert "<script>alert" not in html and "<b>A</b>" not in html and "<i>B</i>" not in html
        assert "&lt;b&gt;A&lt;/b&gt;" in html


def test_the_arm_inline_offers_item_knn_of_a_version(runner):
    version = ready_version()
    form = runner.get("/admin/recommender/experiment/add/")
    ranker = form.context["inline_admin_formsets"][0].formset.forms[0].fields["ranker"]
    assert ("itemknn", "item-kNN of a model version") in list(ranker.choices)
    fields = new_experiment_form(
        "The model against its item-kNN",
        [("Model", "version", version, 50), ("kNN", "itemknn", None, 50)],
        placements=["home"],
    )
    refused = runner.post("/admin/recommender/experiment/add/", fields)
    assert refused.status_code == 200
    assert "Choose the model version whose item-kNN lists this arm serves." in (
        refused.content.decode()
    )
    response = runner.post(
        "/admin/recommender/experiment/add/", {**fields, "arms-1-version": str(version.pk)}
    )
    assert response.status_code == 302
    experiment = Experiment.objects.get(name="The model against its item-kNN")
    assert [(a.ranker, a.version_id) for a in experiment.arms.all()] == [
        ("version", version.pk),
        ("itemknn", version.pk),
    ]


def test_an_item_knn_arm_inside_a_hybrid_cannot_be_promoted(runner):
    version = ready_version()
    experiment = make_experiment(arms=[("A", version, 50), ("Popular", None, 50)])
    knn = Arm.objects.create(
        experiment=experiment, name="kNN", ranker=Arm.Ranker.ITEMKNN, version=version
    )
    html = runner.get(url(experiment, f"promote/{knn.pk}")).content.decode()
    assert 'id="experiment-promote-problem"' in html and "no version serves alone" in html
    assert 'id="experiment-promote-form"' not in html
    runner.post(url(experiment, f"promote/{knn.pk}"))
    assert not ModelVersion.objects.filter(is_active=True).exists()
    assert Experiment.objects.get(pk=experiment.pk).promoted_arm_id is None
