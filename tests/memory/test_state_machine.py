"""Stateful property test: pinned objects survive any sequence of operations.

A hypothesis state machine drives a store on disk with tiny tier budgets (so
objects move between hot, warm and cold all the time) and small dictionary
thresholds (so dictionaries are trained, retrained and released), and checks
it against a model: a dict of the objects that must exist and their pin
counts. ``restart`` closes the store (which flushes) and reopens the same
directory.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    precondition,
    rule,
)

from avm.errors import NotFound, StoreError
from avm.memory import ContentStore, Ref

SMALL = {
    "hot_bytes": 1500, "warm_bytes": 1200, "compress_min_bytes": 24,
    "dict_train_samples": 12, "dict_train_min_bytes": 2000, "dict_retrain_samples": 15,
    "dict_size_bytes": 1024, "write_batch_count": 7, "map_size_bytes": 64 * 1024, "sync": False,
}

chatty = st.builds(
    lambda role, words, n: json.dumps({"role": role, "content": " ".join(words), "n": n}).encode(),
    st.sampled_from(["user", "assistant", "tool"]),
    st.lists(st.sampled_from(["cache", "agent", "result", "token", "the", "error", "file"]), min_size=3, max_size=60),
    st.integers(0, 10_000),
)
payloads = st.one_of(chatty, chatty, st.binary(max_size=400), st.sampled_from([b"", b"shared prompt" * 40]))


class StoreMachine(RuleBasedStateMachine):
    refs = Bundle("refs")

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="avm-store-machine-")
        self.store = ContentStore(self.dir, **SMALL)
        self.model: dict[Ref, bytes] = {}
        self.pins: Counter[Ref] = Counter()
        self.reopen_settings = SMALL
        self.seen: Counter[str] = Counter()

    def _note(self) -> None:
        stats = self.store.statistics()
        self.seen["dictionaries"] = max(self.seen["dictionaries"], stats.dictionaries)
        self.seen["warm hits"] += stats.warm.hits
        self.seen["cold hits"] += stats.cold.hits
        self.seen["promotions"] += stats.promotions

    @rule(target=refs, data=payloads)
    def put(self, data: bytes) -> Ref:
        ref = self.store.put(data)
        self.model[ref] = data
        return ref

    @rule(target=refs, batch=st.lists(chatty, min_size=5, max_size=25))
    def put_many(self, batch: list[bytes]) -> object:
        out = []
        for data in batch:
            ref = self.store.put(data)
            self.model[ref] = data
            out.append(ref)
        return multiple(*out)

    @rule(ref=refs)
    def get(self, ref: Ref) -> None:
        if ref in self.model:
            assert self.store.get(ref) == self.model[ref]
        else:
            with pytest.raises(NotFound):
                self.store.get(ref)

    @rule(ref=refs)
    def pin(self, ref: Ref) -> None:
        if ref in self.model:
            self.pins[ref] += 1
            assert self.store.pin(ref) == self.pins[ref]
        else:
            with pytest.raises(NotFound):
                self.store.pin(ref)

    @rule(ref=refs)
    def unpin(self, ref: Ref) -> None:
        if self.pins[ref]:
            self.pins[ref] -= 1
            assert self.store.unpin(ref) == self.pins[ref]
        else:
            with pytest.raises(StoreError):
                self.store.unpin(ref)

    @rule()
    def gc(self) -> None:
        self.store.gc()
        self.model = {ref: data for ref, data in self.model.items() if self.pins[ref] > 0}

    @rule()
    def flush(self) -> None:
        self.store.flush()

    @rule(big_tiers=st.booleans())
    def restart(self, big_tiers: bool) -> None:
        event("restart")
        self._note()
        self.store.close()
        # Reopen either with the tiny tiers or with roomy ones: the data must not care.
        self.reopen_settings = dict(SMALL, hot_bytes=1 << 20, warm_bytes=1 << 20) if big_tiers else SMALL
        self.store = ContentStore(self.dir, **self.reopen_settings)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def contains(self, data: st.DataObject) -> None:
        ref = data.draw(st.sampled_from(sorted(self.model)))
        assert self.store.contains(ref)

    @invariant()
    def pinned_objects_are_readable(self) -> None:
        for ref, count in self.pins.items():
            if count:
                assert self.store.get(ref) == self.model[ref]
                assert self.store.pins(ref) == count

    @invariant()
    def statistics_add_up(self) -> None:
        stats = self.store.statistics()
        assert stats.unique_objects >= len(self.model)
        assert stats.unique_objects <= len(self.model) + stats.dictionaries
        assert stats.hot.bytes <= self.reopen_settings["hot_bytes"]
        assert stats.warm.bytes <= self.reopen_settings["warm_bytes"]
        assert stats.pinned_objects == sum(1 for c in self.pins.values() if c)

    def teardown(self) -> None:
        self._note()  # coverage, shown by --hypothesis-show-statistics
        for name, count in sorted(self.seen.items()):
            event(f"{name}: {'none' if not count else 'one' if count == 1 else 'several'}")
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


StoreMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestStoreMachine = StoreMachine.TestCase


class MemoryStoreMachine(StoreMachine):
    """The same rules on an in-memory store; restart is replaced by nothing."""

    def __init__(self) -> None:
        RuleBasedStateMachine.__init__(self)
        self.dir = ""
        self.store = ContentStore(None, **SMALL)
        self.model = {}
        self.pins = Counter()
        self.reopen_settings = dict(SMALL, warm_bytes=1 << 60)  # no cold: warm keeps everything
        self.seen = Counter()

    @rule()
    def restart(self) -> None:  # type: ignore[override]
        """An in-memory store cannot restart."""



MemoryStoreMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TestMemoryStoreMachine = MemoryStoreMachine.TestCase
