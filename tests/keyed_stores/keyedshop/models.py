"""Two item models keyed by something other than an integer; settings pick one."""

import uuid

from django.db import models


class Gadget(models.Model):
    """An item with a UUID primary key."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100)
    shelf = models.CharField(max_length=20)
    in_stock = models.BooleanField(default=True)

    def __str__(self):
        return self.name


class Tea(models.Model):
    """An item with a string (slug) primary key."""

    slug = models.SlugField(max_length=60, primary_key=True)
    name = models.CharField(max_length=100)
    shelf = models.CharField(max_length=20)
    in_stock = models.BooleanField(default=True)

    def __str__(self):
        return self.name
