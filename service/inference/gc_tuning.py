"""Garbage-collector settings for a long-running server with a large, static heap."""

from __future__ import annotations

import gc


def settle_garbage_collector() -> None:
    """Keep full GC passes off the request path; call once the model is loaded and warm.

    The loaded model, torch, FastAPI and pydantic leave ~10^5 long-lived objects; a full
    collection walks them all and stalled the event loop for tens of milliseconds at a time
    under load, which set the p99. Freezing moves
    everything alive now out of the collector's view; per-request garbage is still freed by
    reference counting and young-generation passes. Calling it again (after a reload) first
    unfreezes, so an old model's objects can be collected.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    # Fewer young-generation passes: request objects are short-lived and mostly freed by
    # reference counting, so the default threshold (700 allocations) only buys overhead.
    gc.set_threshold(20_000, 20, 50)


def freeze_new_objects() -> None:
    """After a reload: take the new model's objects out of the collector's view, without a full pass.

    A full collection (what :func:`settle_garbage_collector` starts with) runs on the event loop
    and stalled every live request for a large part of a second per reload. The old model needs no collection:
    it holds no reference cycles, so reference counting frees it once the last batch using it
    is done (tests/service/test_lifecycle.py checks this).
    """
    gc.freeze()
