"""The app's settings: one ``RECOMMENDER = {...}`` dict with documented defaults.

Read them as ``from recommender.conf import recommender_settings`` then
``recommender_settings.MAX_BATCH_SIZE``. Values are looked up lazily and cached; the
cache is dropped on Django's ``setting_changed`` so ``override_settings`` works in tests.
A dict-valued setting is merged over its default, key by key (nested dicts too), so
``"TRAIN_SCHEDULE": {"hour": "4"}`` keeps the default minute instead of running every
minute of that hour; ``manage.py check`` validates every nested key and type.
The item model is the one exception: ``RECOMMENDER_ITEM_MODEL`` is a top-level setting
because migrations read it, like ``AUTH_USER_MODEL``.
"""

from django.conf import settings
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

# The kinds of event every store has (``Event.Kind`` names them). Their weights, in
# training and in popularity alike, are ``event_kind_weights()``.
BUILTIN_EVENT_KINDS = ("view", "click", "add_to_cart", "remove_from_cart", "purchase")

DEFAULTS = {
    # Event kinds the write path accepts. Extend the list to record your own kinds (their
    # weight is CLEANING's default_kind_weight unless CLEANING["kind_weights"] names them).
    "EVENT_KINDS": list(BUILTIN_EVENT_KINDS),
    # Most events accepted in one record_many() call or one API request.
    "MAX_BATCH_SIZE": 100,
    # Largest absolute value an event may carry (quantity, price or rating).
    "MAX_EVENT_VALUE": 1_000_000.0,
    # Client timestamps may be at most this far in the future (clock skew) ...
    "MAX_FUTURE_SECONDS": 300,
    # ... and at most this old; older events are rejected rather than silently aged.
    "MAX_EVENT_AGE_DAYS": 365,
    # Longest placement / page strings stored with an event.
    "MAX_PLACEMENT_LENGTH": 64,
    "MAX_PAGE_LENGTH": 200,
    # Dotted path to a function ``(queryset) -> queryset`` that keeps only the items the
    # store may show and sell (active, in stock). None shows every item.
    "ITEM_FILTER": None,
    # Dotted path to a function ``(queryset) -> queryset`` keeping the items events may
    # be recorded for (e.g. active ones). None accepts any existing item.
    "RECORDABLE_ITEMS": None,
    # Field (or lookup) of the item model naming its category, e.g. "category_id"; used
    # by the category filter and the diversity rule. None: items have no category.
    "ITEM_CATEGORY_FIELD": None,
    # Dotted path to a function ``(item) -> dict`` giving the API's view of an item.
    # None gives {"id", "name": str(item), "url": item.get_absolute_url() if it has one}.
    "ITEM_SERIALIZER": None,
    # Cache alias for recommendations and the per-process model version check.
    "CACHE_ALIAS": "default",
    # Storage alias (settings.STORAGES) and folder for model artifacts.
    "ARTIFACT_STORAGE": "default",
    "ARTIFACT_PATH": "recommender/models",
    # DRF throttle rates for the public endpoints (None disables a throttle).
    "EVENTS_THROTTLE_RATE": "600/min",
    "API_THROTTLE_RATE": "300/min",
    # Celery queue of every recommender task (training runs and the stale-run sweeper),
    # kept apart from a store's default queue; run a worker with ``-Q`` this queue.
    "TRAINING_QUEUE": "recommender-training",
    # HMAC key of the shopper pseudonyms in training data and exports (at least 32
    # random characters, kept secret; changing it changes every pseudonym). Required in
    # production: anyone holding it can re-compute a registered shopper's pseudonym from
    # the user id. None derives a key from SECRET_KEY with a salt, and ``check --deploy``
    # warns (recommender.W002).
    "PSEUDONYM_KEY": None,
    # Nightly retraining (crontab fields) installed in Celery beat's schedule. Like every
    # dict setting, a partial value is merged over this one: {"hour": "4"} keeps minute 30.
    "TRAIN_SCHEDULE": {"minute": "30", "hour": "3"},
    # A candidate is promoted when its validation NDCG@10 >= active's - tolerance.
    "PROMOTION_TOLERANCE": 0.0,
    # Each run measures the trained model, item-kNN and popularity on the same validation
    # shoppers and keeps the best of them (ties to the trained model). With fewer
    # validation shoppers than this a trained model's lead may be noise: the better of
    # item-kNN and popularity is kept instead, and the version's decision says so.
    "MIN_VALIDATION_SHOPPERS": 200,
    # After validation has chosen the model and its epochs (on events before the last
    # HOLDOUT_DAYS), train it again the same way on every event, so the model that serves
    # knows the newest items. Training then gets half of TRAINING["max_seconds"] and the
    # refit the rest; a net that cannot finish its epochs in time is served as validated.
    # The version's metrics stay the validation measurement. False serves the validated model.
    "REFIT": True,
    # The model trained by recommender.train: "cnn_dnn" (default: a CNN over the latest
    # events under causal self-attention blocks), "cnn", "sasrec" (attention alone), or a
    # baseline ("popularity", "itemknn"); MODEL_CONFIG holds its hyper-parameters
    # (ml.nets), all but max_len, which HISTORY_LENGTH decides. A net is served blended
    # with item-kNN at the weight validation chose (0: the net alone).
    "MODEL": "cnn_dnn",
    "MODEL_CONFIG": {},
    # Overrides of ml.train.TrainConfig (epochs, lr, max_seconds, loss, device, ...) for
    # store training, all but max_len (HISTORY_LENGTH). {"lr": 5e-4} keeps the
    # epochs/patience/budget here. "device": "auto" trains on a GPU when the worker has one;
    # "loss": "auto" times full, chunked and sampled softmax at start on large catalogues.
    "TRAINING": {"max_seconds": 900, "epochs": 60, "patience": 4},
    # Overrides of ml.data.CleaningConfig (bursts, bots, minimum counts, kind weights).
    # Its kind weights are the app's: training cleans with them (0 drops a kind), popular
    # items are ranked by them, and serving leaves zero-weight kinds out of a history.
    "CLEANING": {},
    # The last days of events are held out to validate and test a new model.
    "HOLDOUT_DAYS": 7,
    # Training never starts on fewer events than this (a clear failure instead).
    "MIN_TRAINING_EVENTS": 200,
    # Rows read from the database per chunk while exporting events for training.
    "EXPORT_CHUNK_SIZE": 20_000,
    # Serving. Each web process checks which version is active at most this often.
    "VERSION_CHECK_SECONDS": 2.0,
    # Torch threads per web process for request-time scoring (1 suits one worker per core).
    "SERVING_TORCH_THREADS": 1,
    # How many of a shopper's latest events the model reads: the training window of a new
    # model and its input at request time. A model serves with the length it was trained
    # with (stored in its artifact), so changing this takes effect at the next training.
    "HISTORY_LENGTH": 50,
    # Name, with each personal recommendation, the shopper's own history item that added
    # most to its score (the API's "reason", the carousel's show_reasons). It costs one
    # batched pass of the net when a list is computed, about 0.2 ms per distinct item in
    # the history on one core; False skips it and every reason is null.
    "REASONS": True,
    # Seconds cached: a shopper's recommendations (dropped at once on a new event),
    # similar / bought-together lists, and popular lists.
    "RECOMMENDATIONS_CACHE_SECONDS": 300,
    "ITEM_LISTS_CACHE_SECONDS": 3600,
    "POPULAR_CACHE_SECONDS": 300,
    # Popular = weighted events of the last POPULAR_DAYS; trending compares the last
    # TRENDING_HOURS with that.
    "POPULAR_DAYS": 14,
    "TRENDING_HOURS": 24,
    # Event kinds that make two items "bought together" for the same shopper.
    "BOUGHT_TOGETHER_KINDS": ["purchase", "add_to_cart"],
    # A pair of items is shown as bought together only once this many distinct signed-in
    # users bought both: a pair from one shopper would disclose what they bought. Anonymous
    # sessions never count (anyone can open as many as they like); raise this where
    # anyone can create accounts at will.
    "BOUGHT_TOGETHER_MIN_SHOPPERS": 2,
    # Most items one list may hold (API ?limit= and template tags).
    "MAX_LIMIT": 50,
    # Per-placement rules, e.g. {"cart": {"exclude_purchased": False, "diversity": 2}}.
    # Keys: exclude_purchased (default True), exclude_seen (default True), diversity
    # (at most this many items per category; default None).
    "PLACEMENTS": {},
    # Placement names the serving API and template tags accept besides the keys of
    # PLACEMENTS (and none, ""). Any other is a 400: each list served is stored with its
    # placement, so clients must not be able to invent names.
    "PLACEMENT_NAMES": [
        "home",
        "category",
        "product",
        "product-similar",
        "product-bought-together",
        "cart",
        "checkout",
        "search",
    ],
    # Recommendation rows (one per list served, for click-through per version and
    # placement) older than this are deleted by the recommender.delete_old_recommendations
    # task (daily in schedule.periodic_tasks); the admin's online metrics cover this window.
    "RECOMMENDATION_RETENTION_DAYS": 90,
    # Catalogues with more items than this are served from an approximate
    # nearest-neighbour index built at promotion (exact scoring below it). Exact scoring
    # reads every item's vector per request, so its cost grows with the catalogue: see
    # the README's serving section and benchmarks/results/serving.md for the measurements.
    "ANN_MIN_ITEMS": 50_000,
    # A running training whose heartbeat is older than this is marked failed.
    "TRAINING_HEARTBEAT_TIMEOUT": 600,
}

# Settings whose value is a dotted path imported on first use.
IMPORT_STRINGS = {"ITEM_FILTER", "RECORDABLE_ITEMS", "ITEM_SERIALIZER"}


class RecommenderSettings:
    """Attribute access to ``settings.RECOMMENDER`` with defaults, cached until changed."""

    def __init__(self, defaults=None):
        self.defaults = defaults or DEFAULTS
        self._cached = {}

    @property
    def user_settings(self):
        return getattr(settings, "RECOMMENDER", {}) or {}

    def __getattr__(self, name):
        if name not in self.defaults:
            raise AttributeError(f"Unknown RECOMMENDER setting: {name!r}")
        if name in self._cached:
            return self._cached[name]
        default = self.defaults[name]
        value = self.user_settings.get(name, default)
        if isinstance(default, dict) and isinstance(value, dict):
            value = merged(default, value)
        if name in IMPORT_STRINGS and isinstance(value, str):
            value = import_string(value)
        self._cached[name] = value
        return value

    def unknown_keys(self):
        return sorted(set(self.user_settings) - set(self.defaults))

    def reload(self):
        self._cached.clear()


recommender_settings = RecommenderSettings()


def merged(default, override):
    """``override`` over ``default``, key by key; a dict inside both is merged the same way.

    A setting given in part keeps the rest of its default: nothing is half-set.
    """
    result = dict(default)
    for key, value in override.items():
        if isinstance(result.get(key), dict) and isinstance(value, dict):
            value = merged(result[key], value)
        result[key] = value
    return result


def event_kind_weights():
    """{kind: weight} for each of EVENT_KINDS: CLEANING's kind weights over ml.data's defaults."""
    from .ml.data import CleaningConfig

    cleaning = CleaningConfig.from_dict(recommender_settings.CLEANING)
    return {kind: cleaning.weight_of(kind) for kind in recommender_settings.EVENT_KINDS}


def get_item_model_label():
    return getattr(settings, "RECOMMENDER_ITEM_MODEL", None)


def get_item_model():
    """The store's item model named by ``RECOMMENDER_ITEM_MODEL``, like get_user_model()."""
    from django.apps import apps

    return apps.get_model(get_item_model_label(), require_ready=False)


def _reload(*, setting, **kwargs):
    if setting == "RECOMMENDER":
        recommender_settings.reload()


setting_changed.connect(_reload)
