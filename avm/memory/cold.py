"""The cold tier: blobs in an LMDB environment on disk.

Layout of the environment (four named databases):

- ``meta``: ``format`` -> ``b"avm-content-store/<version>"`` (the marker that
  makes a directory an AVM store), ``counters`` -> objects, blob bytes and
  decoded bytes (3 x uint64), and keys the store sets (its dictionary list).
- ``objects``: ref (32 bytes) -> blob (see `avm.memory.codec`).
- ``pins``: ref -> pin count (uint64); absent means 0.
- ``names``: a name the caller chose (bytes) -> ref (see `ContentStore.bind`).

Writes go through one writer: `put`, `set_pin`, `set_name` and `set_meta` fill a buffer
that `flush` commits in a single transaction (automatically past
``write_batch_count`` / ``write_batch_bytes``). Objects are encoded at flush
time (by the ``encode`` callback: the store reuses the warm tier's blob when
it has one), with the dictionary current then. When the map is full the
transaction is aborted, the map doubled and the transaction replayed, so no
``MapFullError`` reaches the caller. py-lmdb always opens with MDB_NOTLS, so
read transactions may be started from any thread (trio worker threads
included); the tier itself is not thread-safe and the store serialises calls
with its lock, which also guarantees no transaction is open while the map
is resized.
"""

from __future__ import annotations

import os
import struct
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import lmdb

from avm.errors import StoreError, StoreFormatError
from avm.memory.codec import CODEC_RAW, CODEC_ZSTD_DICT, DICT_ID_SIZE, Codec, blob_info
from avm.memory.lmdb_meta import check_data_file
from avm.memory.ref import REF_SIZE, Ref
from avm.memory.stats import TierStatistics

__all__ = ["FORMAT_VERSION", "ColdTier"]

FORMAT_NAME = b"avm-content-store/"
FORMAT_VERSION = 1
_DB_META, _DB_OBJECTS, _DB_PINS, _DB_NAMES = b"meta", b"objects", b"pins", b"names"
_KEY_FORMAT, _KEY_COUNTERS = b"format", b"counters"
_LMDB_FILES = frozenset({"data.mdb", "lock.mdb"})
_COUNTERS = struct.Struct(">QQQ")
_PIN = struct.Struct(">Q")
_MAX_GROWTHS = 48
_open_paths: set[str] = set()  # LMDB forbids opening one environment twice in a process
_open_paths_lock = threading.Lock()


def _claim(path: str) -> str:
    real = os.path.realpath(path)
    with _open_paths_lock:
        if real in _open_paths:
            raise StoreError(f"the store at {path} is already open in this process")
        _open_paths.add(real)
    return real


def _release(real: str) -> None:
    with _open_paths_lock:
        _open_paths.discard(real)


def _check_directory(path: str) -> bool:
    """Refuse what is not an AVM store; True if ``path`` is new (or empty)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise StoreFormatError(f"{path} is a file, not an AVM store directory; refusing to use it")
    if not os.path.exists(path):
        os.makedirs(path)
        return True
    entries = sorted(os.listdir(path))
    if not entries:
        return True
    if set(entries) - _LMDB_FILES or "data.mdb" not in entries:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise StoreFormatError(
            f"{path} is not an AVM store (it holds {shown}); refusing to use it. "
            "Give ContentStore an empty or new directory.")
    check_data_file(os.path.join(path, "data.mdb"))  # a short file would be a SIGBUS once mapped
    _probe(path)
    return False


def _probe(path: str) -> None:
    """Read the format marker without writing anything to ``path``."""
    map_size = max(os.path.getsize(os.path.join(path, "data.mdb")), 1 << 20)
    try:
        env = lmdb.open(path, readonly=True, lock=False, max_dbs=4, map_size=map_size)
    except lmdb.Error as exc:
        raise StoreFormatError(f"{path} is not an AVM store (not an LMDB environment: {exc})") from exc
    try:
        try:
            meta = env.open_db(_DB_META, create=False)
            with env.begin(db=meta) as txn:
                marker = txn.get(_KEY_FORMAT)
        except lmdb.Error as exc:
            raise StoreFormatError(f"{path} is an LMDB environment but not an AVM store (no format marker)") from exc
    finally:
        env.close()
    if marker is None or not marker.startswith(FORMAT_NAME):
        raise StoreFormatError(f"{path} is an LMDB environment but not an AVM store (no format marker)")
    version = marker[len(FORMAT_NAME):].decode("ascii", "replace")
    if version != str(FORMAT_VERSION):
        raise StoreFormatError(
            f"{path} is an AVM store of format version {version!r}; this AVM reads version {FORMAT_VERSION}")


class ColdTier:
    """Blobs in LMDB under ``path``, with a batched single writer."""

    name = "cold"

    def __init__(self, path: str | os.PathLike[str], codec: Codec, settings: Mapping[str, Any],
                 encode: Callable[[Ref, bytes], bytes] | None = None):
        self.path = os.fspath(path)
        self._codec = codec
        self._encode = encode or codec.encode
        self._batch_count: int = settings["write_batch_count"]
        self._batch_bytes: int = settings["write_batch_bytes"]
        self._sync: bool = settings["sync"]
        self.commits = 0
        self.growths = 0
        claimed = _claim(self.path)
        try:
            self._open(settings)
        except BaseException:
            _release(claimed)
            raise
        # Released by close(), or when a store that was never closed is collected
        # (its unflushed writes are then lost: close it, or use it as a context manager).
        self._release_claim = weakref.finalize(self, _release, claimed)
        self._pending: dict[Ref, bytes] = {}  # ref -> decoded bytes, not yet committed
        self.pending_bytes = 0
        self._pending_pins: dict[Ref, int] = {}
        self._pending_meta: dict[bytes, bytes] = {}
        self._pending_names: dict[bytes, Ref | None] = {}  # None: unbound
        self.hits = 0
        self.misses = 0
        self._closed = False

    def _open(self, settings: Mapping[str, Any]) -> None:
        fresh = _check_directory(self.path)
        data_file = os.path.join(self.path, "data.mdb")
        existing = os.path.getsize(data_file) if os.path.exists(data_file) else 0
        try:
            self._env = lmdb.open(
                self.path, map_size=max(settings["map_size_bytes"], 2 * existing),
                max_readers=settings["max_readers"], sync=self._sync, metasync=self._sync,
                readahead=False, meminit=False, max_dbs=8)
        except lmdb.Error as exc:
            raise StoreError(f"cannot open the cold tier at {self.path}: {exc}") from exc
        try:
            self._meta = self._env.open_db(_DB_META)
            self._objects = self._env.open_db(_DB_OBJECTS)
            self._pins = self._env.open_db(_DB_PINS)
            self._names = self._env.open_db(_DB_NAMES)  # created on first open by this version
            if fresh:
                self._write(self._initialise)
            with self._env.begin(db=self._meta) as txn:
                counters = txn.get(_KEY_COUNTERS)
        except lmdb.Error as exc:
            self._env.close()
            raise StoreError(f"cannot open the cold tier at {self.path}: {exc}") from exc
        try:
            self.objects, self.bytes, self.raw_bytes = self._unpack_counters(counters)
        except StoreError:
            self._env.close()
            raise

    def _unpack_counters(self, raw: bytes | None) -> tuple[int, int, int]:
        if raw is None:
            raise StoreFormatError(f"{self.path} is an AVM store without its counters (damaged)")
        if len(raw) != _COUNTERS.size:
            raise StoreFormatError(f"{self.path} is damaged: its counters are {len(raw)} bytes, "
                                   f"not {_COUNTERS.size}")
        return _COUNTERS.unpack(raw)  # type: ignore[no-any-return]

    def _initialise(self, txn: lmdb.Transaction) -> None:
        txn.put(_KEY_FORMAT, FORMAT_NAME + str(FORMAT_VERSION).encode(), db=self._meta)
        txn.put(_KEY_COUNTERS, _COUNTERS.pack(0, 0, 0), db=self._meta)

    # --- reads ------------------------------------------------------------------

    def _blob(self, ref: Ref) -> bytes | None:
        try:
            with self._env.begin(db=self._objects) as txn:
                return txn.get(ref)  # type: ignore[no-any-return]
        except lmdb.Error as exc:
            raise StoreError(f"cold tier read failed: {exc}") from exc

    def get(self, ref: Ref) -> bytes | None:
        """The object's verified bytes (pending writes included), or None."""
        data = self.peek(ref)
        if data is None:
            self.misses += 1
        else:
            self.hits += 1
        return data

    def peek(self, ref: Ref) -> bytes | None:
        """Like `get` without counting a hit or miss."""
        data = self._pending.get(ref)
        if data is not None:
            return data
        blob = self._blob(ref)
        return None if blob is None else self._codec.decode(ref, blob, "cold")

    def __contains__(self, ref: object) -> bool:
        if ref in self._pending:
            return True
        return self._blob(ref) is not None  # type: ignore[arg-type]

    def refs(self) -> Iterator[Ref]:
        """Every committed and pending ref (a snapshot)."""
        try:
            with self._env.begin(db=self._objects) as txn:
                keys = [Ref._trusted(key) for key in txn.cursor().iternext(keys=True, values=False)]
        except lmdb.Error as exc:
            raise StoreError(f"cold tier read failed: {exc}") from exc
        committed = set(keys)
        return iter(keys + [ref for ref in self._pending if ref not in committed])

    def scan(self) -> Iterator[tuple[bytes, bytes]]:
        """Every committed (key, blob), in key order, read in one transaction (pending writes not included)."""
        try:
            with self._env.begin(db=self._objects) as txn:
                for key, blob in txn.cursor().iternext():
                    yield bytes(key), bytes(blob)
        except lmdb.Error as exc:
            raise StoreError(f"cold tier read failed: {exc}") from exc

    def load_pins(self) -> dict[Ref, int]:
        """Every committed pin count."""
        pins: dict[Ref, int] = {}
        try:
            with self._env.begin(db=self._pins) as txn:
                for key, value in txn.cursor().iternext():
                    if len(key) != REF_SIZE or len(value) != _PIN.size:
                        raise StoreFormatError(
                            f"{self.path} is damaged: the pin of {bytes(key).hex()} is a {len(key)}-byte key "
                            f"with a {len(value)}-byte count (expected {REF_SIZE} and {_PIN.size})")
                    pins[Ref._trusted(key)] = _PIN.unpack(value)[0]
        except lmdb.Error as exc:
            raise StoreError(f"cold tier read failed: {exc}") from exc
        pins.update(self._pending_pins)
        return {ref: n for ref, n in pins.items() if n}

    def get_meta(self, key: bytes) -> bytes | None:
        """A value the store keeps in the meta database."""
        if key in self._pending_meta:
            return self._pending_meta[key]
        with self._env.begin(db=self._meta) as txn:
            return txn.get(key)  # type: ignore[no-any-return]

    def get_name(self, name: bytes) -> Ref | None:
        """The ref bound to ``name`` (pending writes included), or None."""
        if name in self._pending_names:
            return self._pending_names[name]
        try:
            with self._env.begin(db=self._names) as txn:
                raw = txn.get(name)
        except lmdb.Error as exc:
            raise StoreError(f"cold tier read failed: {exc}") from exc
        return None if raw is None else Ref._trusted(raw)

    def names(self, prefix: bytes = b"") -> dict[bytes, Ref]:
        """Every binding whose name starts with ``prefix`` (pending writes included)."""
        found: dict[bytes, Ref] = {}
        try:
            with self._env.begin(db=self._names) as txn:
                cursor = txn.cursor()
                if cursor.set_range(prefix):
                    for key, value in cursor:
                        if not key.startswith(prefix):
                            break
                        found[key] = Ref._trusted(value)
        except lmdb.Error as exc:
            raise StoreError(f"cold tier read failed: {exc}") from exc
        for name, ref in self._pending_names.items():
            if name.startswith(prefix):
                if ref is None:
                    found.pop(name, None)
                else:
                    found[name] = ref
        return found

    # --- buffered writes ----------------------------------------------------------

    def put(self, ref: Ref, data: bytes) -> None:
        """Queue ``data`` for the next commit (the caller checked it is new)."""
        if ref in self._pending:
            return
        self._pending[ref] = data
        self.pending_bytes += len(data)
        self._maybe_flush()

    def set_pin(self, ref: Ref, count: int) -> None:
        """Queue a pin count (0 removes the pin)."""
        self._pending_pins[ref] = count
        self._maybe_flush()

    def set_name(self, name: bytes, ref: Ref | None) -> None:
        """Queue a binding of ``name`` to ``ref`` (None removes it)."""
        self._pending_names[name] = ref
        self._maybe_flush()

    def set_meta(self, key: bytes, value: bytes) -> None:
        """Queue a meta value."""
        if key in (_KEY_FORMAT, _KEY_COUNTERS):
            raise ValueError(f"meta key {key!r} is reserved")
        self._pending_meta[key] = value

    @property
    def pending_writes(self) -> int:
        """Writes waiting for the next commit."""
        return len(self._pending) + len(self._pending_pins) + len(self._pending_meta) + len(self._pending_names)

    def _maybe_flush(self) -> None:
        if (len(self._pending) + len(self._pending_pins) + len(self._pending_names) >= self._batch_count
                or self.pending_bytes >= self._batch_bytes):
            self.flush()

    def flush(self) -> None:
        """Commit every queued write in one transaction."""
        if not (self._pending or self._pending_pins or self._pending_meta or self._pending_names):
            return
        encode = self._encode
        encoded = [(ref, encode(ref, data), len(data)) for ref, data in self._pending.items()]
        pins, meta, names = self._pending_pins, self._pending_meta, self._pending_names

        def commit(txn: lmdb.Transaction) -> tuple[int, int, int]:
            objects, size, raw = self._counters(txn)
            for ref, blob, n in encoded:
                if txn.put(ref, blob, db=self._objects, overwrite=False):
                    objects, size, raw = objects + 1, size + len(blob), raw + n
            for ref, count in pins.items():
                if count:
                    txn.put(ref, _PIN.pack(count), db=self._pins)
                else:
                    txn.delete(ref, db=self._pins)
            for key, value in meta.items():
                txn.put(key, value, db=self._meta)
            for name, bound in names.items():
                if bound is None:
                    txn.delete(name, db=self._names)
                else:
                    txn.put(name, bound, db=self._names)
            txn.put(_KEY_COUNTERS, _COUNTERS.pack(objects, size, raw), db=self._meta)
            return objects, size, raw

        self.objects, self.bytes, self.raw_bytes = self._write(commit)
        self._pending, self._pending_pins, self._pending_meta, self._pending_names = {}, {}, {}, {}
        self.pending_bytes = 0

    def erase(self, ref: Ref, blob: bytes) -> bool:
        """Overwrite ``ref``'s blob with ``blob`` (a tombstone) now, pending writes committed first; False if
        the tier does not hold ``ref``. An object not yet committed never reaches the disk."""
        unwritten = self._pending.pop(ref, None)
        if unwritten is not None:
            self.pending_bytes -= len(unwritten)
        self.flush()

        def work(txn: lmdb.Transaction) -> tuple[bool, tuple[int, int, int]]:
            objects, size, raw = self._counters(txn)
            old = txn.get(ref, db=self._objects)
            if old is None:
                if unwritten is None:
                    return False, (objects, size, raw)
                txn.put(ref, blob, db=self._objects)
                counters = (objects + 1, size + len(blob), raw)
                txn.put(_KEY_COUNTERS, _COUNTERS.pack(*counters), db=self._meta)
                return True, counters
            info = blob_info(bytes(old)) if len(old) else None
            txn.put(ref, blob, db=self._objects)
            counters = (objects, size - len(old) + len(blob), raw - (info.raw_size if info else 0))
            txn.put(_KEY_COUNTERS, _COUNTERS.pack(*counters), db=self._meta)
            return True, counters

        try:
            done, (self.objects, self.bytes, self.raw_bytes) = self._write(work)
        except ValueError:  # a blob whose header does not parse: erase it all the same
            def anyway(txn: lmdb.Transaction) -> tuple[bool, tuple[int, int, int]]:
                txn.put(ref, blob, db=self._objects)
                return True, self._counters(txn)

            done, (self.objects, self.bytes, self.raw_bytes) = self._write(anyway)
        return done  # type: ignore[no-any-return]

    def delete(self, ref: Ref) -> bool:
        """Remove ``ref`` now (pending writes are committed first)."""
        return self.delete_many([ref]) == 1

    def delete_many(self, refs: list[Ref]) -> int:
        """Remove these refs in one transaction; the number removed."""
        self.flush()
        return self._remove(lambda txn: [ref for ref in refs])

    def collect(self, keep: Callable[[Ref], bool]) -> tuple[int, set[bytes]]:
        """Remove every object ``keep`` rejects, in one transaction.

        Returns how many were removed and the dictionary ids that surviving
        blobs use. Pending writes are committed first.
        """
        self.flush()
        used: set[bytes] = set()

        def doomed(txn: lmdb.Transaction) -> list[bytes]:
            used.clear()
            found = []
            for key, blob in txn.cursor(db=self._objects).iternext():
                if not keep(Ref._trusted(bytes(key))):
                    found.append(bytes(key))
                elif blob[0] == CODEC_ZSTD_DICT:
                    used.add(bytes(blob[1 : 1 + DICT_ID_SIZE]))
            return found

        return self._remove(doomed), used

    def _remove(self, select: Callable[[lmdb.Transaction], list[bytes]]) -> int:
        def work(txn: lmdb.Transaction) -> tuple[int, tuple[int, int, int]]:
            objects, size, raw = self._counters(txn)
            removed = 0
            for key in select(txn):
                blob = txn.pop(key, db=self._objects)
                if blob is None:
                    continue
                removed += 1
                head = bytes(blob[:1 + DICT_ID_SIZE + 10])
                n = len(blob) - 1 if head[0] == CODEC_RAW else _safe_raw_size(head)
                objects, size, raw = objects - 1, size - len(blob), raw - n
            txn.put(_KEY_COUNTERS, _COUNTERS.pack(objects, size, raw), db=self._meta)
            return removed, (objects, size, raw)

        removed, (self.objects, self.bytes, self.raw_bytes) = self._write(work)
        return removed

    def _counters(self, txn: lmdb.Transaction) -> tuple[int, int, int]:
        raw = txn.get(_KEY_COUNTERS, db=self._meta)
        return self._unpack_counters(None if raw is None else bytes(raw))

    def _write(self, work: Callable[[lmdb.Transaction], Any]) -> Any:
        """Run ``work`` in a write transaction, growing the map until it fits."""
        for _ in range(_MAX_GROWTHS):
            try:
                with self._env.begin(write=True, buffers=True) as txn:
                    result = work(txn)
                self.commits += 1
                return result
            except lmdb.MapFullError:
                self._grow()
            except lmdb.Error as exc:
                raise StoreError(f"cold tier write failed at {self.path}: {exc}") from exc
        raise StoreError(f"cold tier at {self.path} is still full after {_MAX_GROWTHS} map growths")

    def _grow(self) -> None:
        try:
            size = self._env.info()["map_size"]
            self._env.set_mapsize(size * 2)
        except lmdb.Error as exc:
            raise StoreError(f"cannot grow the cold tier map at {self.path}: {exc}") from exc
        self.growths += 1

    @property
    def map_size(self) -> int:
        """The current LMDB map size in bytes."""
        return int(self._env.info()["map_size"])

    def close(self) -> None:
        """Commit pending writes and close the environment (idempotent)."""
        if self._closed:
            return
        try:
            self.flush()
            if not self._sync:
                self._env.sync(True)
        finally:
            self._closed = True
            self._env.close()
            self._release_claim()

    def statistics(self) -> TierStatistics:
        """Committed objects and blob bytes, hits and misses now."""
        return TierStatistics("cold", self.objects, self.bytes, self.raw_bytes, self.hits, self.misses)


def _safe_raw_size(head: bytes) -> int:
    try:
        return blob_info(head).raw_size
    except ValueError:
        return 0

