"""Benchmark-only: where a request's time goes, in response headers.

``ModelTimingMiddleware`` wraps, once per process, ``LoadedModel.top_candidates`` and
``LoadedModel.similar`` (the model: encode + score + top-k) and the service calls
``serving.recommend`` / ``similar`` / ``bought_together`` (model + database + cache), and
reports their time per request in ``X-Bench-Model-Ms`` and ``X-Bench-Service-Ms``; time the
request spent in Python's garbage collector goes in ``X-Bench-GC-Ms`` (a full collection
walks every object the process holds, and a loaded model holds millions). It is installed
only when ``BENCH_MODEL_TIMING=1`` (see settings.py); the app itself is not changed. A
wrapper costs about a microsecond per call.
"""

import functools
import gc
import threading
import time

MODEL_HEADER = "X-Bench-Model-Ms"
SERVICE_HEADER = "X-Bench-Service-Ms"
GC_HEADER = "X-Bench-GC-Ms"

_state = threading.local()
_installed = False
_lock = threading.Lock()


def _timed(function, slot):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        depth = getattr(_state, f"{slot}_depth", 0)
        setattr(_state, f"{slot}_depth", depth + 1)
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            setattr(_state, f"{slot}_depth", depth)
            if depth == 0:  # nested calls (recommend -> popular) count once
                setattr(_state, slot, getattr(_state, slot, 0.0) + time.perf_counter() - started)

    wrapper.bench_timed = True
    return wrapper


def _gc_callback(phase, info):
    if phase == "start":
        _state.gc_started = time.perf_counter()
    elif getattr(_state, "gc_started", None) is not None:
        _state.gc = getattr(_state, "gc", 0.0) + time.perf_counter() - _state.gc_started
        _state.gc_started = None


def install():
    """Wrap the model and service entry points (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        gc.callbacks.append(_gc_callback)
        from recommender import serving

        for name in ("top_candidates", "similar"):
            setattr(serving.LoadedModel, name, _timed(getattr(serving.LoadedModel, name), "model"))
        for name in ("recommend", "similar", "bought_together"):
            # Views and template tags look these up on the module at call time.
            setattr(serving, name, _timed(getattr(serving, name), "service"))
        _installed = True


class ModelTimingMiddleware:
    def __init__(self, get_response):
        install()
        self.get_response = get_response

    def __call__(self, request):
        _state.model = _state.service = _state.gc = 0.0
        response = self.get_response(request)
        model, service, collecting = _state.model, _state.service, _state.gc
        if collecting:
            response[GC_HEADER] = f"{collecting * 1000:.3f}"
        if service:
            response[SERVICE_HEADER] = f"{service * 1000:.3f}"
        if model:
            response[MODEL_HEADER] = f"{model * 1000:.3f}"
        return response
