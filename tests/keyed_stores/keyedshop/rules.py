def in_stock(queryset):
    return queryset.filter(in_stock=True)
