"""A compact canonical binary encoding of structured values.

``ContentStore.put_value`` / ``get_value`` use it, and so will the VM's
snapshots. The same value always encodes to the same bytes (so to the same
ref): dict keys are sorted, integers and lengths use minimal varints, NaN has
one bit pattern. Decoding accepts only canonical bytes, so
``encode_value(decode_value(b)) == b`` for every ``b`` that decodes.

Supported values, one tag byte each, after a one-byte format marker:

=========  ===  ==========================================================
value      tag  payload
=========  ===  ==========================================================
None       n    -
False      f    -
True       t    -
int        i    zigzag varint, for -2**63 <= x < 2**63
int        I    sign byte (0/1), varint length, big-endian magnitude
float      d    8 bytes IEEE 754 binary64, big-endian
str        s    varint length, UTF-8 (surrogatepass)
bytes      b    varint length, the bytes
Ref        r    32 bytes
list       l    varint count, the items
dict       m    varint count, then (varint length, UTF-8 key, value) pairs,
                keys in increasing order of their UTF-8 bytes
=========  ===  ==========================================================

A `Ref` is a value type of its own, distinct from ``bytes``. Subclasses of the
supported types (an ``IntEnum``, an ``OrderedDict``) encode as their base
type. Anything else (tuples, sets, objects) raises ``TypeError``. Malformed
input to ``decode_value`` raises `ValueFormatError`, never anything else.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Final

from avm.errors import StoreError
from avm.memory.ref import REF_SIZE, Ref

__all__ = ["MAX_DEPTH", "ValueFormatError", "decode_value", "encode_value"]

FORMAT_MARKER: Final = 0xA1
"""First byte of every encoded value (format 1)."""

MAX_DEPTH: Final = 200
"""Deepest nesting of lists and dicts accepted when encoding or decoding.

Each level costs two Python frames; 200 keeps well inside the default
recursion limit even when called from a deep stack."""

_SMALL_MIN: Final = -(1 << 63)
_SMALL_MAX: Final = (1 << 63) - 1
_CANONICAL_NAN: Final = struct.pack(">d", math.nan)
_pack_double = struct.Struct(">d").pack
_unpack_double = struct.Struct(">d").unpack_from

_N, _F, _T, _INT, _BIGINT, _FLOAT = 0x6E, 0x66, 0x74, 0x69, 0x49, 0x64
_STR, _BYTES, _REF, _LIST, _DICT = 0x73, 0x62, 0x72, 0x6C, 0x6D


class ValueFormatError(StoreError, ValueError):
    """Bytes that are not a canonical encoding of a value."""


def _varint(out: bytearray, n: int) -> None:
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def encode_value(value: object) -> bytes:
    """Return the canonical encoding of ``value``.

    Raises ``TypeError`` for an unsupported type (naming it and where it sits)
    and ``ValueError`` for nesting deeper than `MAX_DEPTH` (or a cycle).
    """
    out = bytearray((FORMAT_MARKER,))
    try:
        _encode(value, out, 0, "value")
    except RecursionError:  # only when the caller's own stack is already deep
        raise ValueError("value nested too deeply to encode from this stack depth") from None
    return bytes(out)


def _encode(obj: Any, out: bytearray, depth: int, where: str) -> None:
    t = type(obj)
    if t is str:
        data = obj.encode("utf-8", "surrogatepass")
        out.append(_STR)
        _varint(out, len(data))
        out += data
    elif t is int:
        _encode_int(obj, out)
    elif t is dict:
        _encode_dict(obj, out, depth, where)
    elif t is list:
        _encode_list(obj, out, depth, where)
    elif obj is None:
        out.append(_N)
    elif t is bool:
        out.append(_T if obj else _F)
    elif t is float:
        out.append(_FLOAT)
        out += _CANONICAL_NAN if obj != obj else _pack_double(obj)
    elif t is bytes:
        out.append(_BYTES)
        _varint(out, len(obj))
        out += obj
    elif t is Ref:
        out.append(_REF)
        out += obj
    else:
        _encode_subclass(obj, out, depth, where)


def _encode_subclass(obj: Any, out: bytearray, depth: int, where: str) -> None:
    """Encode instances of subclasses of the supported types as their base."""
    if isinstance(obj, bool):  # pragma: no cover - bool cannot be subclassed
        out.append(_T if obj else _F)
    elif isinstance(obj, Ref):
        out.append(_REF)
        out += bytes(obj)
    elif isinstance(obj, int):
        _encode_int(int(obj), out)
    elif isinstance(obj, float):
        _encode(float(obj), out, depth, where)
    elif isinstance(obj, str):
        _encode(str(obj), out, depth, where)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        _encode(bytes(obj), out, depth, where)
    elif isinstance(obj, dict):
        _encode_dict(obj, out, depth, where)
    elif isinstance(obj, list):
        _encode_list(obj, out, depth, where)
    else:
        raise TypeError(
            f"cannot encode {type(obj).__name__} at {where}: values are None, bool, int, float, "
            "str, bytes, Ref, list and dict with str keys"
        )


def _encode_int(n: int, out: bytearray) -> None:
    if _SMALL_MIN <= n <= _SMALL_MAX:
        out.append(_INT)
        _varint(out, (n << 1) if n >= 0 else ((-n) << 1) - 1)
    else:
        out.append(_BIGINT)
        out.append(1 if n < 0 else 0)
        mag = -n if n < 0 else n
        data = mag.to_bytes((mag.bit_length() + 7) // 8, "big")
        _varint(out, len(data))
        out += data


def _encode_list(items: list[Any], out: bytearray, depth: int, where: str) -> None:
    if depth >= MAX_DEPTH:
        raise ValueError(f"value nested deeper than {MAX_DEPTH} levels (or cyclic) at {where}")
    out.append(_LIST)
    _varint(out, len(items))
    for i, item in enumerate(items):
        _encode(item, out, depth + 1, where if depth > 8 else f"{where}[{i}]")


def _encode_dict(mapping: dict[Any, Any], out: bytearray, depth: int, where: str) -> None:
    if depth >= MAX_DEPTH:
        raise ValueError(f"value nested deeper than {MAX_DEPTH} levels (or cyclic) at {where}")
    keyed = []
    for key, item in mapping.items():
        if not isinstance(key, str):
            raise TypeError(f"dict keys must be str, got {type(key).__name__} {key!r} at {where}")
        keyed.append((str(key).encode("utf-8", "surrogatepass"), key, item))
    keyed.sort(key=lambda entry: entry[0])
    out.append(_DICT)
    _varint(out, len(keyed))
    for data, key, item in keyed:
        _varint(out, len(data))
        out += data
        _encode(item, out, depth + 1, where if depth > 8 else f"{where}[{key!r}]")


def decode_value(data: bytes | bytearray | memoryview) -> Any:
    """Decode bytes made by `encode_value`; raise `ValueFormatError` otherwise."""
    buf = bytes(data)
    if not buf or buf[0] != FORMAT_MARKER:
        raise ValueFormatError("not an encoded value (missing format marker 0xa1)")
    try:
        value, pos = _Decoder(buf).value(1, 0)
    except RecursionError:
        raise ValueFormatError("encoded value nested too deeply") from None
    if pos != len(buf):
        raise ValueFormatError(f"{len(buf) - pos} trailing bytes after the value at offset {pos}")
    return value


class _Decoder:
    """Bounds-checked reader over one encoded value."""

    __slots__ = ("buf", "end")

    def __init__(self, buf: bytes):
        self.buf = buf
        self.end = len(buf)

    def fail(self, pos: int, what: str) -> ValueFormatError:
        return ValueFormatError(f"malformed value at offset {pos}: {what}")

    def varint(self, pos: int) -> tuple[int, int]:
        buf, end = self.buf, self.end
        result = shift = 0
        start = pos
        while True:
            if pos >= end:
                raise self.fail(start, "truncated varint")
            byte = buf[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                if byte == 0 and pos - start > 1:
                    raise self.fail(start, "non-minimal varint")
                return result, pos
            shift += 7
            if shift > 70:
                raise self.fail(start, "varint too long")

    def take(self, pos: int, n: int) -> tuple[bytes, int]:
        if n > self.end - pos:
            raise self.fail(pos, f"length {n} runs past the end")
        return self.buf[pos : pos + n], pos + n

    def text(self, pos: int) -> tuple[str, bytes, int]:
        n, pos = self.varint(pos)
        raw, new = self.take(pos, n)
        try:
            return raw.decode("utf-8", "surrogatepass"), raw, new
        except UnicodeDecodeError:
            raise self.fail(pos, "invalid UTF-8") from None

    def value(self, pos: int, depth: int) -> tuple[Any, int]:
        if pos >= self.end:
            raise self.fail(pos, "truncated")
        tag = self.buf[pos]
        pos += 1
        if tag == _STR:
            text, _raw, pos = self.text(pos)
            return text, pos
        if tag == _INT:
            z, pos = self.varint(pos)
            n = (z >> 1) if not z & 1 else -((z + 1) >> 1)
            if not _SMALL_MIN <= n <= _SMALL_MAX:
                raise self.fail(pos, "small int out of range")
            return n, pos
        if tag == _DICT or tag == _LIST:
            if depth >= MAX_DEPTH:
                raise self.fail(pos, f"nested deeper than {MAX_DEPTH} levels")
            count, pos = self.varint(pos)
            if count > self.end - pos:
                raise self.fail(pos, f"count {count} exceeds the remaining bytes")
            return (self.dict_body if tag == _DICT else self.list_body)(pos, count, depth + 1)
        if tag == _N:
            return None, pos
        if tag == _T:
            return True, pos
        if tag == _F:
            return False, pos
        if tag == _FLOAT:
            raw, new = self.take(pos, 8)
            (x,) = _unpack_double(raw)
            if x != x and raw != _CANONICAL_NAN:
                raise self.fail(pos, "non-canonical NaN")
            return x, new
        if tag == _BYTES:
            n, pos = self.varint(pos)
            return self.take(pos, n)
        if tag == _REF:
            raw, pos = self.take(pos, REF_SIZE)
            return Ref._trusted(raw), pos
        if tag == _BIGINT:
            return self.bigint(pos)
        raise self.fail(pos - 1, f"unknown tag 0x{tag:02x}")

    def bigint(self, pos: int) -> tuple[int, int]:
        sign, pos = self.take(pos, 1)
        if sign not in (b"\x00", b"\x01"):
            raise self.fail(pos - 1, "bad sign byte")
        n, pos = self.varint(pos)
        raw, pos = self.take(pos, n)
        if not raw or raw[0] == 0:
            raise self.fail(pos, "non-minimal big int")
        mag = int.from_bytes(raw, "big")
        value = -mag if sign == b"\x01" else mag
        if _SMALL_MIN <= value <= _SMALL_MAX:
            raise self.fail(pos, "big int in the small-int range")
        return value, pos

    def list_body(self, pos: int, count: int, depth: int) -> tuple[list[Any], int]:
        items: list[Any] = []
        append = items.append
        for _ in range(count):
            item, pos = self.value(pos, depth)
            append(item)
        return items, pos

    def dict_body(self, pos: int, count: int, depth: int) -> tuple[dict[str, Any], int]:
        result: dict[str, Any] = {}
        previous: bytes | None = None
        for _ in range(count):
            start = pos
            key, raw, pos = self.text(pos)
            if previous is not None and raw <= previous:
                raise self.fail(start, "dict keys not in strictly increasing order")
            previous = raw
            result[key], pos = self.value(pos, depth)
        return result, pos
