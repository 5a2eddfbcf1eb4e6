"""System checks that catch a misconfigured install before the first request does."""

import os
import uuid

from django.apps import apps
from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.core.files.storage import FileSystemStorage, storages
from django.core.files.storage.handler import InvalidStorageError

from .conf import DEFAULTS, IMPORT_STRINGS, recommender_settings


@register()
def check_item_model(app_configs=None, **kwargs):
    label = getattr(settings, "RECOMMENDER_ITEM_MODEL", None)
    hint = 'Set RECOMMENDER_ITEM_MODEL = "app_label.ModelName" to your product model.'
    if not label:
        return [Error("RECOMMENDER_ITEM_MODEL is not set.", hint=hint, id="recommender.E001")]
    try:
        apps.get_model(label, require_ready=False)
    except ValueError:
        return [
            Error(
                f"RECOMMENDER_ITEM_MODEL {label!r} is not of the form 'app_label.ModelName'.",
                hint=hint,
                id="recommender.E001",
            )
        ]
    except LookupError:
        return [
            Error(
                f"RECOMMENDER_ITEM_MODEL refers to {label!r}, which is not an installed model.",
                hint=hint,
                id="recommender.E002",
            )
        ]
    return []


@register(Tags.caches)
def check_cache(app_configs=None, **kwargs):
    alias = recommender_settings.CACHE_ALIAS
    if alias not in settings.CACHES:
        return [
            Error(
                f"RECOMMENDER['CACHE_ALIAS'] is {alias!r}, which is not in CACHES.",
                hint="Add that cache (Redis in production) or point CACHE_ALIAS at an existing one.",
                id="recommender.E003",
            )
        ]
    return []


@register()
def check_artifact_storage(app_configs=None, **kwargs):
    alias = recommender_settings.ARTIFACT_STORAGE
    try:
        storage = storages[alias]
    except InvalidStorageError:
        return [
            Error(
                f"RECOMMENDER['ARTIFACT_STORAGE'] is {alias!r}, which is not in STORAGES.",
                id="recommender.E004",
            )
        ]
    if isinstance(storage, FileSystemStorage):
        folder = os.path.join(storage.location, recommender_settings.ARTIFACT_PATH)
        if not _writable(folder):
            return [
                Error(
                    f"Model artifacts cannot be written to {folder!r}.",
                    hint="Make the folder writable by the web and worker processes, or choose another storage.",
                    id="recommender.E005",
                )
            ]
    return []


@register()
def check_settings(app_configs=None, **kwargs):
    errors = []
    unknown = recommender_settings.unknown_keys()
    if unknown:
        errors.append(
            Warning(
                f"Unknown RECOMMENDER setting(s): {', '.join(unknown)}.",
                hint=f"Known settings: {', '.join(sorted(DEFAULTS))}.",
                id="recommender.W001",
            )
        )
    for name in sorted(IMPORT_STRINGS):
        try:
            getattr(recommender_settings, name)
        except ImportError as exc:
            errors.append(
                Error(f"RECOMMENDER[{name!r}] cannot be imported: {exc}", id="recommender.E006")
            )
    kinds = recommender_settings.EVENT_KINDS
    if not kinds or not all(isinstance(k, str) and 0 < len(k) <= 32 for k in kinds):
        errors.append(
            Error(
                "RECOMMENDER['EVENT_KINDS'] must be a non-empty list of names of at most 32 characters.",
                id="recommender.E007",
            )
        )
    return errors


# crontab fields TRAIN_SCHEDULE may set, and the rules one PLACEMENTS entry may set.
CRONTAB_FIELDS = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")
PLACEMENT_RULES = {"exclude_purchased": bool, "exclude_seen": bool, "diversity": int | None}


@register()
def check_dict_settings(app_configs=None, **kwargs):
    """Every key and type inside the dict settings: a typo there must not pass silently.

    Dict settings are merged over their defaults, so a misspelt key would otherwise just
    leave the default in force. MODEL and MODEL_CONFIG are checked against the model's
    own constructor, which imports torch: only when the store sets them.
    """
    problems = []  # (path, message)
    for name in (name for name, default in DEFAULTS.items() if isinstance(default, dict)):
        value = getattr(recommender_settings, name)
        if not isinstance(value, dict):
            problems.append(((name,), f"must be a dict, not {type(value).__name__}"))
    if not problems:
        problems += _training_problems() + _schedule_problems() + _placement_problems()
        problems += _model_problems()
    length = recommender_settings.HISTORY_LENGTH
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        problems.append((("HISTORY_LENGTH",), f"must be a whole number >= 1, not {length!r}"))
    return [
        Error(
            "RECOMMENDER" + "".join(f'["{part}"]' for part in path) + f": {message}",
            hint="Dict settings are merged over the defaults in recommender/conf.py; "
            "set only the keys to change.",
            id="recommender.E010",
        )
        for path, message in problems
    ]


def _training_problems():
    from .ml.config import TrainConfig, config_problems
    from .ml.data import CleaningConfig

    problems = []
    for name, cls in (("TRAINING", TrainConfig), ("CLEANING", CleaningConfig)):
        value = getattr(recommender_settings, name)
        for key, message in config_problems(cls, value):
            problems.append(((name, key), message))
    for name in ("TRAINING", "MODEL_CONFIG"):
        if "max_len" in getattr(recommender_settings, name):
            message = "not a setting here: HISTORY_LENGTH decides the history length for training and serving"
            problems.append(((name, "max_len"), message))
    return problems


def _schedule_problems():
    schedule = recommender_settings.TRAIN_SCHEDULE
    problems = []
    for key, value in schedule.items():
        if key not in CRONTAB_FIELDS:
            problems.append(
                (
                    ("TRAIN_SCHEDULE", key),
                    f"unknown key; expected one of {', '.join(CRONTAB_FIELDS)}",
                )
            )
        elif isinstance(value, bool) or not isinstance(value, (str, int)):
            problems.append(
                (("TRAIN_SCHEDULE", key), f"must be a crontab string or int, not {value!r}")
            )
    if not problems:
        from celery.schedules import crontab

        try:
            crontab(**schedule)
        except ValueError as exc:
            problems.append((("TRAIN_SCHEDULE",), f"not a valid crontab: {exc}"))
    return problems


def _placement_problems():
    problems = []
    for placement, rules in recommender_settings.PLACEMENTS.items():
        if not isinstance(rules, dict):
            problems.append((("PLACEMENTS", placement), "must be a dict of rules"))
            continue
        for key, value in rules.items():
            expected = PLACEMENT_RULES.get(key)
            if expected is None:
                problems.append(
                    (
                        ("PLACEMENTS", placement, key),
                        f"unknown key; expected one of {', '.join(PLACEMENT_RULES)}",
                    )
                )
            elif not _is_a(value, expected):
                problems.append(
                    (("PLACEMENTS", placement, key), f"must be {expected}, not {value!r}")
                )
    return problems


def _model_problems():
    import inspect

    model, config = recommender_settings.MODEL, dict(recommender_settings.MODEL_CONFIG)
    config.pop("max_len", None)  # reported with TRAINING's
    if model == DEFAULTS["MODEL"] and not config:
        return []
    from .ml import nets

    if model not in nets.MODEL_NAMES:  # a net serves blended with item-kNN by itself
        return [(("MODEL",), f"unknown model {model!r}; known: {', '.join(nets.MODEL_NAMES)}")]
    cls = type(nets.build_model(model, 2, 2))
    params = {
        name: param.default
        for name, param in inspect.signature(cls).parameters.items()
        if param.kind is param.KEYWORD_ONLY and name != "max_len"
    }
    problems = []
    for key, value in config.items():
        if key not in params:
            problems.append(
                (
                    ("MODEL_CONFIG", key),
                    f"unknown key for {model!r}; expected one of {', '.join(params)}",
                )
            )
        elif params[key] is not None and not _is_a(value, type(params[key])):
            problems.append(
                (("MODEL_CONFIG", key), f"must be {type(params[key]).__name__}, not {value!r}")
            )
    if not problems:
        try:
            nets.build_model(model, 2, 2, **config)
        except (TypeError, ValueError) as exc:
            problems.append((("MODEL_CONFIG",), f"does not build a {model!r} model: {exc}"))
    return problems


def _is_a(value, expected):
    """isinstance, where an int is a float, a bool is not a number, a list is a tuple."""
    if value is None:
        return expected is None or isinstance(None, expected)
    if isinstance(value, bool):
        return bool in getattr(expected, "__args__", (expected,))
    if expected is float:
        return isinstance(value, (int, float))
    if expected is tuple:
        return isinstance(value, (list, tuple))
    return isinstance(value, expected)


# Keys published with this project (the demo's former SECRET_KEY): a key anyone can read
# reverses every registered shopper's pseudonym.
PUBLIC_KEYS = frozenset({"demo-only-not-secret-change-me"})
PSEUDONYM_KEY_MIN_LENGTH = 32


@register(Tags.security, deploy=True)
def check_pseudonym_key(app_configs=None, **kwargs):
    """``check --deploy``: pseudonyms need a secret key of their own (see conf.PSEUDONYM_KEY)."""
    key = recommender_settings.PSEUDONYM_KEY
    hint = (
        "Set RECOMMENDER['PSEUDONYM_KEY'] to at least 32 random characters kept secret, "
        "e.g. from the environment: python -c 'import secrets; print(secrets.token_urlsafe(48))'."
    )
    if not key:
        problem = "is not set: shopper pseudonyms are keyed by a key derived from SECRET_KEY"
    elif str(key) in PUBLIC_KEYS:
        problem = "is a value published with this project"
    elif str(key) == str(settings.SECRET_KEY):
        problem = "equals SECRET_KEY"
    elif len(key) < PSEUDONYM_KEY_MIN_LENGTH:
        problem = f"is shorter than {PSEUDONYM_KEY_MIN_LENGTH} characters"
    else:
        return []
    return [
        Warning(
            f"RECOMMENDER['PSEUDONYM_KEY'] {problem}; whoever knows the key can re-compute "
            "the pseudonym of every registered shopper in exports and training data.",
            hint=hint,
            id="recommender.W002",
        )
    ]


def _writable(folder):
    """True if a file can be created in ``folder`` (made if missing)."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write-check-{uuid.uuid4().hex}")
        with open(probe, "w"):
            pass
        os.remove(probe)
        return True
    except OSError:
        return False
