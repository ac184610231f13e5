"""Names: bindings of caller keys to refs, as gc roots, persisted on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avm.errors import NotFound, StoreError
from avm.memory import ContentStore, hash_bytes


@pytest.fixture(params=["memory", "disk"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path):
    def make() -> ContentStore:
        return ContentStore() if request.param == "memory" else ContentStore(tmp_path / "s")
    return make


def test_bind_lookup_rebind_unbind(make_store) -> None:
    with make_store() as store:
        a, b = store.put(b"alpha"), store.put(b"beta")
        assert store.lookup(b"k") is None
        store.bind(b"k", a)
        assert store.lookup(b"k") == a
        assert store.lookup("k") == a  # text names are their UTF-8 bytes
        store.bind(b"k", b)
        assert store.lookup(b"k") == b
        assert store.unbind(b"k") is True
        assert store.unbind(b"k") is False
        assert store.lookup(b"k") is None


def test_binding_an_unknown_ref_is_refused(make_store) -> None:
    with make_store() as store, pytest.raises(NotFound):
        store.bind(b"k", hash_bytes(b"never stored"))


@pytest.mark.parametrize("bad", [b"", b"x" * 501, 7])
def test_bad_names_are_refused(make_store, bad) -> None:
    with make_store() as store:
        ref = store.put(b"x")
        with pytest.raises((ValueError, TypeError)):
            store.bind(bad, ref)


def test_names_by_prefix(make_store) -> None:
    with make_store() as store:
        refs = {f"agent/{i}".encode(): store.put(f"snapshot {i}".encode()) for i in range(5)}
        for name, ref in refs.items():
            store.bind(name, ref)
        store.bind(b"cache/1", store.put(b"reply"))
        store.unbind(b"agent/3")
        del refs[b"agent/3"]
        assert store.names(b"agent/") == refs
        assert set(store.names()) == set(refs) | {b"cache/1"}


def test_gc_keeps_bound_refs(make_store) -> None:
    with make_store() as store:
        kept, dropped = store.put(b"kept"), store.put(b"dropped")
        store.bind(b"k", kept)
        store.gc()
        assert store.get(kept) == b"kept"
        assert not store.contains(dropped)
        store.unbind(b"k")
        store.gc()
        assert not store.contains(kept)


def test_bindings_survive_a_restart(tmp_path: Path) -> None:
    with ContentStore(tmp_path / "s") as store:
        ref = store.put(b"response")
        store.bind(b"llm-cache/abc", ref)
        gone = store.put(b"old")
        store.bind(b"gone", gone)
        store.flush()
        store.unbind(b"gone")  # pending at close: close flushes it
    with ContentStore(tmp_path / "s") as store:
        assert store.lookup(b"llm-cache/abc") == ref
        assert store.get(ref) == b"response"
        assert store.lookup(b"gone") is None


def test_closed_store_refuses_names(make_store) -> None:
    store = make_store()
    ref = store.put(b"x")
    store.close()
    with pytest.raises(StoreError):
        store.lookup(b"k")
    with pytest.raises(StoreError):
        store.bind(b"k", ref)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([b"a", b"b", b"c", b"ab"]), st.one_of(st.none(), st.binary(max_size=4))),
                max_size=30))
def test_names_behave_like_a_dict(ops) -> None:
    model: dict[bytes, bytes] = {}
    with ContentStore() as store:
        for name, data in ops:
            if data is None:
                assert store.unbind(name) == (name in model)
                model.pop(name, None)
            else:
                store.bind(name, store.put(data))
                model[name] = data
        assert {k: store.get(v) for k, v in store.names().items()} == model
