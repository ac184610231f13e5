"""Ref: a 32-byte blake3 digest that behaves like bytes."""

from __future__ import annotations

import pickle

import pytest
from blake3 import blake3

from avm.memory import REF_SIZE, Ref, hash_bytes


def test_hash_bytes_is_blake3() -> None:
    ref = hash_bytes(b"hello")
    assert isinstance(ref, Ref)
    assert bytes(ref) == blake3(b"hello").digest()
    assert len(ref) == REF_SIZE


def test_ref_equals_and_hashes_like_its_digest() -> None:
    ref = hash_bytes(b"x")
    digest = blake3(b"x").digest()
    assert ref == digest
    assert hash(ref) == hash(digest)
    assert {digest: 1}[ref] == 1


def test_hex_round_trip_and_repr() -> None:
    ref = hash_bytes(b"abc")
    assert Ref(ref.hex()) == ref
    assert str(ref) == ref.hex()
    assert repr(ref) == f"Ref('{ref.hex()}')"
    assert ref.short == ref.hex()[:12]
    assert eval(repr(ref), {"Ref": Ref}) == ref


def test_bad_refs_are_refused() -> None:
    with pytest.raises(ValueError):
        Ref(b"short")
    with pytest.raises(ValueError):
        Ref("zz" * 32)
    with pytest.raises(TypeError):
        Ref(42)  # type: ignore[arg-type]


def test_coerce_and_pickle() -> None:
    ref = hash_bytes(b"p")
    assert Ref.coerce(ref) is ref
    assert Ref.coerce(bytes(ref)) == ref
    again = pickle.loads(pickle.dumps(ref))
    assert type(again) is Ref and again == ref
