"""Pure PyTorch + NumPy recommendation core: data cleaning, sequence models,
training, evaluation, baselines, the served hybrid ranker and versioned artifacts. ``pipeline.run`` is
the one entry point that fits a model and its baselines and measures them alike.

Nothing below this package imports Django, so it can be unit-tested, benchmarked on a
public dataset, and run by a Celery worker alike. Submodules are imported explicitly
(``from recommender.ml import data``) so importing this package stays cheap.
"""
