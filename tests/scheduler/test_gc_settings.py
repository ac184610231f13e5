"""The VM's hold on the process's cyclic GC: the young generation's threshold is raised while a VM
runs and put back when it exits, unless someone else changed it meanwhile."""

from __future__ import annotations

import gc

import pytest

from avm.runtime import VM, VMError, VMSettings


@pytest.fixture
def threshold():
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*before)


async def test_the_young_threshold_is_raised_while_the_vm_runs_and_restored_after(threshold):
    async with VM(gc_young_threshold=20_000):
        assert gc.get_threshold() == (20_000, 10, 10)
    assert gc.get_threshold() == (700, 10, 10)


async def test_a_threshold_changed_while_the_vm_runs_is_left_as_it_was_set(threshold):
    async with VM(gc_young_threshold=20_000):
        gc.set_threshold(5_000, 20, 20)
    assert gc.get_threshold() == (5_000, 20, 20)


async def test_a_higher_threshold_or_a_disabled_gc_is_never_lowered(threshold):
    gc.set_threshold(50_000, 10, 10)
    async with VM(gc_young_threshold=20_000):
        assert gc.get_threshold() == (50_000, 10, 10)
    gc.set_threshold(0, 10, 10)
    async with VM(gc_young_threshold=20_000):
        assert gc.get_threshold() == (0, 10, 10)
    async with VM(gc_young_threshold=0):
        assert gc.get_threshold() == (0, 10, 10)


@pytest.mark.parametrize("value", [-1, 1.5, "20000", None])
def test_a_bad_threshold_is_refused(value):
    with pytest.raises(VMError, match="gc_young_threshold"):
        VMSettings(gc_young_threshold=value)
