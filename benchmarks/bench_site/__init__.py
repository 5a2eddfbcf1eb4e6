"""A benchmark-only site: the demo store plus a bare baseline view and a page that sets the CSRF cookie.

Run as ``DJANGO_SETTINGS_MODULE=benchmarks.bench_site.settings``; nothing in the app or the
demo store imports it.
"""
