"""Item primary keys where they cross into JSON: integer, UUID and string keys alike.

The store's item model may be keyed by an integer, a UUID or a string (a slug, an ISBN).
Inside the app a key is what the ORM returns for it. Where keys leave for JSON (the
``Recommendation.items`` field, the exported training rows and so the model artifact and
its id maps, exported events), ``to_json`` writes them: integers as numbers, any other key
as its text. ``from_json`` reads them back, and anything else a key arrives as (a URL's
text, a raw query's SQLite UUID text), with the key field's own ``to_python``, so the
two sides of every comparison and dictionary lookup hold the same kind of value.
"""

import functools

from django.db import models


@functools.cache
def _key_field():
    """The item model's primary key field, through any parent links (multi-table inheritance)."""
    from .models import Event

    field = Event._meta.get_field("item").target_field
    while field.is_relation:
        field = field.target_field
    return field


@functools.cache
def integer_keys():
    """Whether the store's items are keyed by integers (JSON numbers, no conversion)."""
    return isinstance(_key_field(), models.IntegerField)


def to_json(pk):
    """An item key as JSON holds it: an integer, or the key's text (a UUID's canonical form)."""
    if isinstance(pk, int) and not isinstance(pk, bool):
        return pk
    return str(pk)


def from_json(value):
    """An item key as the ORM gives it, from its JSON or any text form.

    Raises ``django.core.exceptions.ValidationError`` for a value that is no such key.
    """
    if type(value) is int and integer_keys():
        return value
    return _key_field().to_python(value)
