"""The two cache tiers: hot LRU by bytes, and named objects in the store."""

from __future__ import annotations

import gc

from avm.io.cache import NAME_PREFIX, ResponseCache
from avm.io.client.backends import Reply
from avm.io.request import Usage
from avm.memory import ContentStore

CALL = {"id": "c1", "type": "function", "function": {"name": "search", "arguments": "{\"q\": \"x\"}"}}


def key(i: int) -> bytes:
    return bytes([i]) * 32


def reply(i: int) -> Reply:
    return Reply(f"reply {i} ✓", "stop" if i % 2 else "tool_calls", Usage(10 + i, i), (CALL,) if i % 2 == 0 else ())


def test_a_batch_is_one_store_object_named_by_every_request(tmp_path):
    with ContentStore(tmp_path / "s") as store:
        ResponseCache(store).put_many([(key(i), reply(i)) for i in range(5)])
        names = store.names(NAME_PREFIX)
        assert len(names) == 5 and len(set(names.values())) == 1
        store.gc()  # bound objects survive
    with ContentStore(tmp_path / "s") as store:
        cache = ResponseCache(store)
        for i in range(5):
            assert cache.hot(key(i)) is None
            text, reason, prompt, completion, calls = cache.stored(key(i))
            r = reply(i)
            assert (text, reason, prompt, completion, calls) == (r.text, r.finish_reason, r.usage.prompt_tokens,
                                                                 r.usage.completion_tokens, r.tool_calls)
            assert cache.hot(key(i)) is not None  # promoted
        assert cache.stored(key(9)) is None and cache.errors == 0


def test_the_hot_tier_is_bounded_by_bytes_and_left_alone_by_the_collector():
    cache = ResponseCache(hot_bytes=2000)
    for i in range(50):
        cache.put(key(i), Reply("x" * 300, "stop", Usage(1, 1)))
    assert cache.hot_bytes <= 2000 and 0 < len(cache) < 50
    assert cache.hot(key(49)) is not None and cache.hot(key(0)) is None
    gc.collect()
    assert not gc.is_tracked(cache.hot(key(49)))  # texts and ints only: nothing for a collection to walk
    cache.put(key(99), Reply("y" * 5000, "stop", Usage()))  # larger than the whole tier: not kept, no error
    assert cache.hot(key(99)) is None


def test_records_of_another_shape_are_misses_counted_as_errors():
    store = ContentStore()
    store.bind(NAME_PREFIX + key(1), store.put(b'{"v": 1, "text": "old format"}'))
    store.bind(NAME_PREFIX + key(2), store.put(b"not json"))
    store.bind(NAME_PREFIX + key(3), store.put(b'{"v": 2, "replies": {"%s": ["t", "stop", "1", 2, []]}}'
                                               % key(3).hex().encode()))
    cache = ResponseCache(store)
    assert [cache.stored(key(i)) for i in (1, 2, 3)] == [None, None, None]
    assert cache.errors == 3


def test_a_broken_store_never_fails_a_request(caplog):
    class Broken:
        def lookup(self, name):
            raise RuntimeError("disk on fire")

        def put(self, data):
            raise RuntimeError("disk on fire")

    cache = ResponseCache(Broken())
    cache.put(key(1), reply(1))
    assert cache.hot(key(1)) is not None and cache.stored(key(2)) is None
    assert cache.errors == 2 and caplog.text.count("disk on fire") == 1  # warned once
