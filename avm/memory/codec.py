"""Blob encoding: how one object is stored in the warm and cold tiers.

Every blob starts with a codec byte, so each blob says how to read it back:

==========  ===============================================================
codec       layout after the codec byte
==========  ===============================================================
0 raw       the object's bytes
1 zstd      varint decoded size, a zstd frame
2 zstd+dict 8-byte dictionary id, varint decoded size, a zstd frame made
            with that dictionary
3 erased    a tombstone: the object was erased on request (`ContentStore.erase`);
            the UTF-8 reason follows. Reading it raises `Erased`.
==========  ===============================================================

Frames are written without magic number, content size, dictionary id or
checksum (the header above carries the size, and the blake3 check on every
read is stronger than zstd's checksum): on small chat messages those fields
would cost 5-15% of the blob.

The dictionary id is the first 8 bytes of the dictionary's ref. The store
keeps a registry of its dictionaries (persisted in the cold tier) that maps
ids to full refs; a dictionary is itself an object in the store, kept while
any blob uses it. A wrong or missing dictionary can only fail the digest
check: it raises `CorruptObject`, it never returns wrong bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, NamedTuple

import zstandard
from blake3 import blake3

from avm.errors import CorruptObject, Erased, StoreError
from avm.memory.ref import Ref

__all__ = ["CODEC_RAW", "CODEC_TOMBSTONE", "CODEC_ZSTD", "CODEC_ZSTD_DICT", "DICT_ID_SIZE", "BlobInfo", "Codec",
           "blob_info", "tombstone"]

CODEC_RAW: Final = 0
CODEC_ZSTD: Final = 1
CODEC_ZSTD_DICT: Final = 2
CODEC_TOMBSTONE: Final = 3
DICT_ID_SIZE: Final = 8

# decompress() allocates max_output_size before it starts, so a damaged size header claiming 2^40
# bytes was a MemoryError; sizes above this are decompressed in chunks, never past the claimed size.
DIRECT_DECOMPRESS_MAX: Final = 64 << 20
_CHUNK: Final = 1 << 20
_RAW_PREFIX: Final = bytes((CODEC_RAW,))
_FORMAT = zstandard.FORMAT_ZSTD1_MAGICLESS


class BlobInfo(NamedTuple):
    """What a blob's header says: codec, decoded size, dictionary id (or None)."""

    codec: int
    raw_size: int
    dict_id: bytes | None
    payload_offset: int


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(blob: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = blob[pos]  # IndexError on truncation: the caller reports it
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def blob_info(blob: bytes) -> BlobInfo:
    """Parse a blob's header. Raises ``ValueError`` if it is malformed."""
    try:
        codec = blob[0]
        if codec == CODEC_RAW:
            return BlobInfo(CODEC_RAW, len(blob) - 1, None, 1)
        if codec == CODEC_ZSTD:
            size, pos = _read_varint(blob, 1)
            return BlobInfo(CODEC_ZSTD, size, None, pos)
        if codec == CODEC_ZSTD_DICT:
            dict_id = blob[1 : 1 + DICT_ID_SIZE]
            if len(dict_id) != DICT_ID_SIZE:
                raise ValueError("truncated dictionary id")
            size, pos = _read_varint(blob, 1 + DICT_ID_SIZE)
            return BlobInfo(CODEC_ZSTD_DICT, size, dict_id, pos)
        if codec == CODEC_TOMBSTONE:
            return BlobInfo(CODEC_TOMBSTONE, 0, None, 1)
    except IndexError:
        raise ValueError("truncated blob header") from None
    raise ValueError(f"unknown codec {codec}")


class Codec:
    """Encodes objects into blobs and decodes (and verifies) blobs.

    ``load_dictionary(ref)`` is how the codec fetches a dictionary it has not
    loaded yet (the store reads it from any tier, verified). The codec is not
    thread-safe; the store calls it under its lock.
    """

    def __init__(self, *, level: int, compress_min_bytes: int, dict_use_max_bytes: int,
                 load_dictionary: Callable[[Ref], bytes]):
        self._level = level
        self._compress_min = compress_min_bytes
        self._dict_use_max = dict_use_max_bytes
        self._load_dictionary = load_dictionary
        self._plain_c = self._compressor(None)
        self._plain_d = zstandard.ZstdDecompressor(format=_FORMAT)
        self._ids: dict[bytes, Ref] = {}  # dictionary id -> full ref
        self._decompressors: dict[bytes, zstandard.ZstdDecompressor] = {}
        self._current_id: bytes | None = None
        self._current_c: zstandard.ZstdCompressor | None = None
        self._current_header = b""

    def _compressor(self, zdict: zstandard.ZstdCompressionDict | None) -> zstandard.ZstdCompressor:
        params = zstandard.ZstdCompressionParameters.from_level(
            self._level, format=_FORMAT, write_content_size=0, write_checksum=0, write_dict_id=0)
        return zstandard.ZstdCompressor(dict_data=zdict, compression_params=params)

    # --- dictionaries -----------------------------------------------------------

    @staticmethod
    def dict_id(ref: Ref) -> bytes:
        """The id recorded in blobs compressed with dictionary ``ref``."""
        return bytes(ref[:DICT_ID_SIZE])

    def register_dictionary(self, ref: Ref) -> bool:
        """Make dictionary ``ref`` resolvable by id. False if its id is taken by another."""
        known = self._ids.setdefault(self.dict_id(ref), ref)
        return known == ref

    def forget_dictionary(self, ref: Ref) -> None:
        """Drop dictionary ``ref`` (no blob uses it any more)."""
        key = self.dict_id(ref)
        if self._ids.get(key) == ref:
            del self._ids[key]
            self._decompressors.pop(key, None)
        if self._current_id == key:
            self._current_id, self._current_c, self._current_header = None, None, b""

    def is_dictionary(self, ref: Ref) -> bool:
        """True if ``ref`` names a registered dictionary (stored raw, never compressed)."""
        return self._ids.get(bytes(ref[:DICT_ID_SIZE])) == ref

    def use_dictionary(self, ref: Ref, data: bytes) -> None:
        """Compress new small blobs with dictionary ``ref`` (whose bytes are ``data``)."""
        if not self.register_dictionary(ref):
            raise ValueError(f"dictionary id of {ref.hex()} collides with another dictionary")
        zdict = zstandard.ZstdCompressionDict(data, dict_type=zstandard.DICT_TYPE_AUTO)
        self._current_id = self.dict_id(ref)
        self._current_c = self._compressor(zdict)
        self._current_header = bytes((CODEC_ZSTD_DICT,)) + self._current_id
        self._decompressors[self._current_id] = zstandard.ZstdDecompressor(dict_data=zdict, format=_FORMAT)

    @property
    def current_dictionary(self) -> Ref | None:
        """The dictionary new blobs are compressed with, if any."""
        return self._ids.get(self._current_id) if self._current_id is not None else None

    def dictionary_of(self, blob: bytes) -> Ref | None:
        """The dictionary a blob needs, or None (also for unknown ids and bad headers)."""
        if not blob or blob[0] != CODEC_ZSTD_DICT:
            return None
        return self._ids.get(bytes(blob[1 : 1 + DICT_ID_SIZE]))

    def _decompressor_for(self, dict_id: bytes) -> zstandard.ZstdDecompressor:
        found = self._decompressors.get(dict_id)
        if found is None:
            ref = self._ids.get(dict_id)
            if ref is None:
                raise LookupError(f"no dictionary with id {dict_id.hex()}")
            zdict = zstandard.ZstdCompressionDict(self._load_dictionary(ref), dict_type=zstandard.DICT_TYPE_AUTO)
            found = self._decompressors[dict_id] = zstandard.ZstdDecompressor(dict_data=zdict, format=_FORMAT)
        return found

    # --- blobs ----------------------------------------------------------------

    def encode(self, ref: Ref, data: bytes) -> bytes:
        """The blob for object ``ref`` holding ``data``; raw when compression does not pay."""
        n = len(data)
        if n < self._compress_min or self.is_dictionary(ref):
            return _RAW_PREFIX + data
        if self._current_c is not None and n <= self._dict_use_max:
            blob = self._current_header + _varint(n) + self._current_c.compress(data)
        else:
            blob = bytes((CODEC_ZSTD,)) + _varint(n) + self._plain_c.compress(data)
        return blob if len(blob) <= n else _RAW_PREFIX + data

    def decode(self, ref: Ref, blob: bytes, tier: str) -> bytes:
        """The object's bytes, verified against ``ref``; `CorruptObject` otherwise, `Erased` for a tombstone."""
        try:
            info = blob_info(blob)
            if info.codec == CODEC_TOMBSTONE:
                raise Erased(ref)
            if info.codec == CODEC_RAW:
                data = blob[1:]
            else:
                if info.dict_id is None:
                    dctx = self._plain_d
                else:
                    dctx = self._decompressor_for(info.dict_id)
                payload = blob[info.payload_offset :]
                if info.raw_size <= DIRECT_DECOMPRESS_MAX:
                    data = dctx.decompress(payload, max_output_size=info.raw_size)
                else:
                    data = _decompress_at_most(dctx, payload, info.raw_size)
        except Erased:
            raise
        except (ValueError, LookupError, StoreError, zstandard.ZstdError) as exc:
            raise CorruptObject(ref, tier) from exc
        if len(data) != info.raw_size or blake3(data).digest() != ref:
            raise CorruptObject(ref, tier)
        return data


def tombstone(reason: str = "") -> bytes:
    """The blob that stands for an erased object."""
    return bytes((CODEC_TOMBSTONE,)) + reason.encode("utf-8", "replace")[:200]


def _decompress_at_most(dctx: zstandard.ZstdDecompressor, payload: bytes, limit: int) -> bytes:
    """The frame's bytes, read in chunks; stops one chunk past ``limit`` (the caller checks the size)."""
    out = bytearray()
    reader = dctx.stream_reader(payload)
    while len(out) <= limit:
        chunk = reader.read(_CHUNK)
        if not chunk:
            break
        out += chunk
    return bytes(out)
