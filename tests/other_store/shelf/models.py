from django.db import models


class Book(models.Model):
    isbn = models.CharField(max_length=13, primary_key=True)
    title = models.CharField(max_length=200)
    in_print = models.BooleanField(default=True)

    def __str__(self):
        return self.title
