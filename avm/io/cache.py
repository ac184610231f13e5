"""`ResponseCache`: LLM replies by cache key, in two tiers.

* **hot**: an in-process LRU (cachetools) bounded by an estimate of the bytes
  its replies hold. A hit costs a dict lookup and an LRU touch.
* **store**: the `ContentStore`. It is content-addressed (``put`` gives the
  ref of the bytes), so the reply is stored as an object and *named* by the
  request: ``store.bind(b"llm-cache/" + key, ref)``. The object is a small
  JSON record: json is several times cheaper to write than the store's
  canonical value encoding, and a cache record needs no canonical form. A
  bound ref survives ``gc`` and, in a store with a path, is written to LMDB
  with the next flush, so a second run of the same program is answered
  from disk. A store hit is promoted to the hot tier.

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

from avm.io.backends import Reply

__all__ = ["NAME_PREFIX", "Entry", "ResponseCache"]

log = logging.getLogger("avm.io.cache")

NAME_PREFIX = b"llm-cache/"
_RECORD_VERSION = 1
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
            record = json.loads(store.get(ref))
        except Exception as exc:  # noqa: BLE001 - a store that cannot answer is a miss, not a failure
            self._failed("read", exc)
            return None
        entry = _from_record(record)
        if entry is None:
            self.errors += 1
            return None
        self._keep_hot(key, entry)
        return entry

    def put(self, key: bytes, reply: Reply) -> None:
        """Keep ``reply`` in both tiers."""
        entry = (reply.text, reply.finish_reason, reply.usage.prompt_tokens, reply.usage.completion_tokens,
                 reply.tool_calls)
        self._keep_hot(key, entry)
        store = self._store
        if store is None:
            return
        try:
            ref = store.put(_DUMPS({"v": _RECORD_VERSION, "text": entry[0], "finish_reason": entry[1],
                                    "prompt_tokens": entry[2], "completion_tokens": entry[3],
                                    "tool_calls": list(entry[4])}).encode("ascii"))
            store.bind(NAME_PREFIX + key, ref)
        except Exception as exc:  # noqa: BLE001 - the reply is good whatever the store does
            self._failed("write", exc)

    def _keep_hot(self, key: bytes, entry: Entry) -> None:
        if _size(entry) <= self._hot.maxsize:
            self._hot[key] = entry

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors += 1
        if not self._warned:  # once: a broken store would otherwise log on every request
            self._warned = True
            log.warning("LLM response cache: cannot %s the store tier (%s); the hot tier still works", what, exc)


def _from_record(record: Any) -> Entry | None:
    if not isinstance(record, dict) or record.get("v") != _RECORD_VERSION:
        return None
    text, reason = record.get("text"), record.get("finish_reason")
    prompt, completion = record.get("prompt_tokens"), record.get("completion_tokens")
    calls = record.get("tool_calls")
    if (type(text) is not str or type(reason) is not str or type(prompt) is not int
            or type(completion) is not int or not isinstance(calls, list)):
        return None
    return (text, reason, prompt, completion, tuple(calls))
