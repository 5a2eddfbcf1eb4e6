def in_print(queryset):
    return queryset.filter(in_print=True)
