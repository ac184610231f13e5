"""`ResponseCache`: LLM replies by cache key, in two tiers.

* **hot**: an in-process LRU (cachetools) bounded by an estimate of the bytes
  its replies hold. A hit costs a dict lookup and an LRU touch.
* **store**: the `ContentStore`. It is content-addressed (``put`` gives the
  ref of the bytes), so replies are stored as objects and *named* by their
  requests: ``store.bind(b"llm-cache/" + key, ref)``. The replies of one
  batch are written together, as one small JSON object
  ``{"v": 2, "replies": {key hex: [text, finish_reason, prompt_tokens,
  completion_tokens, tool_calls]}}`` with every key bound to it: one ``put``
  per batch instead of one per reply (json is also several times cheaper
  to write than the store's canonical value encoding, and a cache record
  needs no canonical form). A bound ref survives ``gc`` and, in a store with
  a path, is written to LMDB with the next flush, so a second run of the
  same program is answered from disk. A store hit is promoted to the hot
  tier; the last few objects read are kept decoded, so the replies of one
  batch, asked for again one by one, are decoded once.

Only replies to cacheable requests come here (`LLMRequest.cacheable`: the
gateway checks). A record read back from the store that is not the shape
written here (another version, a damaged value) is a miss, counted in
``errors``, never an exception; so is any store error on read, and on write
(the reply is good whatever the store does: caching it is a bonus).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from cachetools import LRUCache

from avm.io.client.backends import Reply

__all__ = ["NAME_PREFIX", "Entry", "ResponseCache"]

log = logging.getLogger("avm.io.cache")

NAME_PREFIX = b"llm-cache/"
_RECORD_VERSION = 2
_DECODED = 8  # store objects kept decoded
_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode
_OVERHEAD = 160  # bytes of a cached Reply and its Usage beyond the text, roughly
_PER_CALL = 256  # bytes per tool call, roughly


Entry = tuple[str, str, int, int, tuple[Any, ...]]  # text, finish_reason, prompt and completion tokens, tool calls


def _size(entry: Entry) -> int:
    return _OVERHEAD + len(entry[0]) + _PER_CALL * len(entry[4])


class ResponseCache:
    """Replies by cache key: a hot LRU over the store's named bindings.

    Keys are the 32-byte digests as plain ``bytes``. The hot tier keeps each
    reply as a tuple of texts and ints, which the garbage collector stops
    tracking: a cache of a million replies adds nothing to a collection.
    """

    def __init__(self, store: Any = None, *, hot_bytes: int = 64 << 20):
        self._hot: LRUCache[bytes, Entry] = LRUCache(maxsize=max(hot_bytes, 1), getsizeof=_size)
        self._store = store
        self._decoded: LRUCache[bytes, dict[str, Any] | None] = LRUCache(maxsize=_DECODED)
        self.errors = 0
        self._warned = False

    @property
    def hot_bytes(self) -> int:
        """Bytes (estimated) the hot tier holds now."""
        return int(self._hot.currsize)

    def __len__(self) -> int:
        return len(self._hot)

    def hot(self, key: bytes) -> Entry | None:
        """The entry in the hot tier: (text, finish_reason, prompt_tokens, completion_tokens, tool_calls)."""
        return self._hot.get(key)

    def stored(self, key: bytes) -> Entry | None:
        """The entry in the store (then also kept hot), or None."""
        store = self._store
        if store is None:
            return None
        try:
            ref = store.lookup(NAME_PREFIX + key)
            if ref is None:
                return None
            replies = self._decoded.get(ref)
            if replies is None:
                replies = _replies(json.loads(store.get(ref)))
                self._decoded[ref] = replies
        except Exception as exc:  # noqa: BLE001 - a store that cannot answer is a miss, not a failure
            self._failed("read", exc)
            return None
        entry = _entry(replies.get(key.hex()) if replies is not None else None)
        if entry is None:
            self.errors += 1
            return None
        self._keep_hot(key, entry)
        return entry

    def put(self, key: bytes, reply: Reply) -> None:
        """Keep ``reply`` in both tiers."""
        self.put_many([(key, reply)])

    def put_many(self, replies: list[tuple[bytes, Reply]]) -> None:
        """Keep these replies in both tiers: hot one by one, in the store as one object."""
        keep = self._keep_hot
        records: dict[str, list[Any]] = {}
        for key, reply in replies:
            usage = reply.usage
            entry = (reply.text, reply.finish_reason, usage.prompt_tokens, usage.completion_tokens, reply.tool_calls)
            keep(key, entry)
            records[key.hex()] = [entry[0], entry[1], entry[2], entry[3], list(entry[4])]
        store = self._store
        if store is None or not records:
            return
        try:
            ref = store.put(_DUMPS({"v": _RECORD_VERSION, "replies": records}).encode("ascii"))
            bind = store.bind
            for key, _ in replies:
                bind(NAME_PREFIX + key, ref)
        except Exception as exc:  # noqa: BLE001 - the replies are good whatever the store does
            self._failed("write", exc)

    def _keep_hot(self, key: bytes, entry: Entry) -> None:
        if _size(entry) <= self._hot.maxsize:
            self._hot[key] = entry

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors += 1
        if not self._warned:  # once: a broken store would otherwise log on every request
            self._warned = True
            log.warning("LLM response cache: cannot %s the store tier (%s); the hot tier still works", what, exc)


def _replies(record: Any) -> dict[str, Any] | None:
    if not isinstance(record, dict) or record.get("v") != _RECORD_VERSION:
        return None
    replies = record.get("replies")
    return replies if isinstance(replies, dict) else None


def _entry(item: Any) -> Entry | None:
    if not isinstance(item, list) or len(item) != 5:
        return None
    text, reason, prompt, completion, calls = item
    if (type(text) is not str or type(reason) is not str or type(prompt) is not int
            or type(completion) is not int or not isinstance(calls, list)):
        return None
    return (text, reason, prompt, completion, tuple(calls))
