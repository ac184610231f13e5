"""Raising the GC's young threshold for a while and putting it back (the VM and `avm serve-llm` do)."""

from __future__ import annotations

import gc
import signal

import pytest

from avm.gc_threshold import raise_young, restore


@pytest.fixture(autouse=True)
def thresholds():
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*before)


def test_raised_then_restored_never_lowered_and_left_alone_if_changed_meanwhile():
    raised = raise_young(50_000)
    assert gc.get_threshold() == (50_000, 10, 10)
    restore(raised)
    assert gc.get_threshold() == (700, 10, 10)
    assert raise_young(500) is None and raise_young(0) is None and gc.get_threshold() == (700, 10, 10)
    raised = raise_young(50_000)
    gc.set_threshold(1234, 10, 10)  # someone else's choice since: kept
    restore(raised)
    assert gc.get_threshold() == (1234, 10, 10)
    restore(None)


def test_the_foreground_server_raises_the_young_threshold_while_it_serves():
    from avm.io.embedded.server import _GC_YOUNG, run_server

    seen = []

    def ready(server) -> None:
        seen.append(gc.get_threshold()[0])
        signal.raise_signal(signal.SIGINT)  # what ends `avm serve-llm`

    stats = run_server(on_ready=ready, port=0)
    assert seen == [_GC_YOUNG] and stats.requests == 0
    assert gc.get_threshold() == (700, 10, 10)
