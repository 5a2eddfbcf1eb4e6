from django.contrib import admin

from .models import Gadget, Tea

admin.site.register(Gadget)
admin.site.register(Tea)
