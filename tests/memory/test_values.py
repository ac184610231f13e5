"""The canonical value encoding behind put_value / get_value."""

from __future__ import annotations

import math
from collections import OrderedDict
from enum import IntEnum
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avm.errors import StoreError
from avm.memory import (
    ContentStore,
    Ref,
    ValueFormatError,
    decode_value,
    encode_value,
    hash_bytes,
)
from avm.memory.values import MAX_DEPTH

refs = st.binary(min_size=32, max_size=32).map(Ref)
scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**200), max_value=2**200)
           | st.floats(allow_nan=False) | st.text() | st.binary() | refs)
values = st.recursive(scalars,
                      lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
                      max_leaves=30)


def same(a: Any, b: Any) -> bool:
    """Equality that also tells types apart (1 vs 1.0 vs True, Ref vs bytes, -0.0 vs 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    return bool(a == b)


@settings(max_examples=150)
@given(values)
def test_round_trip(value: Any) -> None:
    data = encode_value(value)
    assert same(decode_value(data), value)
    assert encode_value(decode_value(data)) == data


@settings(max_examples=60)
@given(st.dictionaries(st.text(), scalars, min_size=2, max_size=8), st.randoms())
def test_dict_order_does_not_matter(mapping: dict[str, Any], rnd: Any) -> None:
    items = list(mapping.items())
    rnd.shuffle(items)
    assert encode_value(dict(items)) == encode_value(mapping)


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_malformed_bytes_never_crash(data: bytes) -> None:
    try:
        value = decode_value(b"\xa1" + data)
    except ValueFormatError:
        return
    assert encode_value(value) == b"\xa1" + data  # only canonical encodings decode


@settings(max_examples=100)
@given(values, st.data())
def test_truncated_or_mutated_encodings_are_rejected_or_canonical(value: Any, data: st.DataObject) -> None:
    enc = bytearray(encode_value(value))
    cut = data.draw(st.integers(0, len(enc) - 1))
    with pytest.raises(ValueFormatError):
        decode_value(bytes(enc[:cut]))
    pos = data.draw(st.integers(0, len(enc) - 1))
    enc[pos] ^= data.draw(st.integers(1, 255))
    try:
        decoded = decode_value(bytes(enc))
    except ValueFormatError:
        return
    assert encode_value(decoded) == bytes(enc)


def test_types_are_distinct() -> None:
    encodings = {encode_value(v) for v in (1, 1.0, True, "1", b"1", [1], None, 0, False, 0.0, -0.0)}
    assert len(encodings) == 11
    ref = hash_bytes(b"x")
    assert encode_value(ref) != encode_value(bytes(ref))
    assert type(decode_value(encode_value(ref))) is Ref
    assert type(decode_value(encode_value(bytes(ref)))) is bytes


def test_nan_is_canonical() -> None:
    nan_a = float("nan")
    nan_b = -float("nan")
    assert encode_value(nan_a) == encode_value(nan_b)
    assert math.isnan(decode_value(encode_value(nan_a)))


def test_subclasses_encode_as_their_base() -> None:
    class Color(IntEnum):
        RED = 3

    assert encode_value(Color.RED) == encode_value(3)
    assert encode_value(OrderedDict([("b", 1), ("a", 2)])) == encode_value({"a": 2, "b": 1})
    assert encode_value(bytearray(b"ab")) == encode_value(b"ab")


@pytest.mark.parametrize("bad", [(1, 2), {1, 2}, object(), {1: "int key"}, [1, {"ok": (2,)}], 1j])
def test_unsupported_types_are_type_errors(bad: Any) -> None:
    with pytest.raises(TypeError):
        encode_value(bad)


def test_type_error_says_where() -> None:
    with pytest.raises(TypeError, match=r"\['a'\]\[1\]"):
        encode_value({"a": [1, (2, 3)]})


def test_depth_and_cycles() -> None:
    deep: Any = []
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(ValueError, match="nested"):
        encode_value(deep)
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(ValueError):
        encode_value(cyclic)
    bomb = b"\xa1" + b"l\x01" * (MAX_DEPTH + 5) + b"n"
    with pytest.raises(ValueFormatError, match="nested"):
        decode_value(bomb)


@pytest.mark.parametrize("data", [
    b"", b"\x00", b"\xa1", b"\xa1z", b"\xa1n\x00", b"\xa1i\x80", b"\xa1i\x80\x00",
    b"\xa1s\x05ab", b"\xa1s\x02\xff\xfe", b"\xa1l\xff\xff\xff\xff\x0f", b"\xa1m\x02\x01bn\x01an",
    b"\xa1I\x00\x01\x05", b"\xa1I\x02\x09" + b"\x01" * 9, b"\xa1d\x7f\xf8\x00\x00\x00\x00\x00\x01",
    b"\xa1r" + b"\x00" * 31,
])
def test_specific_malformed_inputs(data: bytes) -> None:
    with pytest.raises(ValueFormatError) as info:
        decode_value(data)
    assert isinstance(info.value, StoreError) and isinstance(info.value, ValueError)


def test_store_put_value_get_value() -> None:
    store = ContentStore()
    value = {"role": "user", "content": "hi", "n": [1, 2.5, None, True], "ref": hash_bytes(b"x")}
    ref = store.put_value(value)
    assert store.put_value(dict(reversed(list(value.items())))) == ref
    assert same(store.get_value(ref), value)
    raw = store.put(b"not a value")
    with pytest.raises(ValueFormatError):
        store.get_value(raw)
