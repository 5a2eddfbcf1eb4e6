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
