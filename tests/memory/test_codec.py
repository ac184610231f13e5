"""Blob encoding: codec byte, zstd with and without dictionaries, verification."""

from __future__ import annotations

import json
import os

import pytest
import zstandard

from avm.errors import CorruptObject, NotFound
from avm.memory.codec import CODEC_RAW, CODEC_ZSTD, CODEC_ZSTD_DICT, Codec, blob_info
from avm.memory.ref import Ref, hash_bytes


def sample(i: int) -> bytes:
    return json.dumps({"role": "tool", "tool_call_id": f"call_{i:06d}", "content": f"result {i} " * (3 + i % 7),
                       "status": ["ok", "error"][i % 2]}).encode()


def make_codec(dictionaries: dict[Ref, bytes] | None = None, **kw: int) -> Codec:
    known = dictionaries if dictionaries is not None else {}

    def load(ref: Ref) -> bytes:
        if ref not in known:
            raise NotFound(ref)
        return known[ref]

    return Codec(level=kw.get("level", 3), compress_min_bytes=kw.get("compress_min_bytes", 64),
                 dict_use_max_bytes=kw.get("dict_use_max_bytes", 1 << 20), load_dictionary=load)


def trained() -> tuple[Ref, bytes]:
    data = zstandard.train_dictionary(4096, [sample(i) for i in range(300)]).as_bytes()
    return hash_bytes(data), data


def test_small_objects_are_raw() -> None:
    codec = make_codec()
    data = b"tiny"
    blob = codec.encode(hash_bytes(data), data)
    assert blob[0] == CODEC_RAW and blob[1:] == data
    assert codec.decode(hash_bytes(data), blob, "warm") == data


def test_incompressible_objects_stay_raw() -> None:
    codec = make_codec()
    data = os.urandom(5000)
    assert codec.encode(hash_bytes(data), data)[0] == CODEC_RAW


def test_plain_zstd_round_trip() -> None:
    codec = make_codec()
    data = b"hello agents " * 200
    ref = hash_bytes(data)
    blob = codec.encode(ref, data)
    info = blob_info(blob)
    assert info.codec == CODEC_ZSTD and info.raw_size == len(data)
    assert len(blob) < len(data) // 10
    assert codec.decode(ref, blob, "warm") == data


def test_dictionary_blobs_record_their_dictionary() -> None:
    dict_ref, dict_bytes = trained()
    codec = make_codec({dict_ref: dict_bytes})
    codec.use_dictionary(dict_ref, dict_bytes)
    assert codec.current_dictionary == dict_ref
    data = sample(1000)
    ref = hash_bytes(data)
    blob = codec.encode(ref, data)
    assert blob[0] == CODEC_ZSTD_DICT
    assert codec.dictionary_of(blob) == dict_ref
    assert len(blob) < len(make_codec().encode(ref, data))
    # A fresh codec that only knows the registry (as after a restart) loads the dictionary lazily.
    fresh = make_codec({dict_ref: dict_bytes})
    fresh.register_dictionary(dict_ref)
    assert fresh.decode(ref, blob, "cold") == data


def test_dictionaries_are_never_compressed() -> None:
    dict_ref, dict_bytes = trained()
    codec = make_codec({dict_ref: dict_bytes})
    codec.use_dictionary(dict_ref, dict_bytes)
    assert codec.encode(dict_ref, dict_bytes)[0] == CODEC_RAW


def test_missing_dictionary_is_corruption_not_a_crash() -> None:
    dict_ref, dict_bytes = trained()
    codec = make_codec({dict_ref: dict_bytes})
    codec.use_dictionary(dict_ref, dict_bytes)
    data = sample(5)
    blob = codec.encode(hash_bytes(data), data)
    stranger = make_codec({})
    with pytest.raises(CorruptObject) as info:
        stranger.decode(hash_bytes(data), blob, "cold")
    assert info.value.tier == "cold" and info.value.ref == hash_bytes(data)
    stranger.register_dictionary(dict_ref)  # known id, but the bytes cannot be loaded
    with pytest.raises(CorruptObject):
        stranger.decode(hash_bytes(data), blob, "cold")


@pytest.mark.parametrize("blob", [b"", b"\x07abc", b"\x01", b"\x01\x80", b"\x02abc", b"\x01\x05garbage"])
def test_malformed_blobs_are_corrupt(blob: bytes) -> None:
    with pytest.raises(CorruptObject):
        make_codec().decode(hash_bytes(b"x"), blob, "warm")


def test_a_flipped_byte_never_yields_wrong_bytes() -> None:
    codec = make_codec()
    data = b"the same old tool result, " * 40
    ref = hash_bytes(data)
    blob = codec.encode(ref, data)
    detected = 0
    for i in range(len(blob)):
        for mask in (0x01, 0x40, 0xFF):
            bad = bytearray(blob)
            bad[i] ^= mask
            try:
                out = codec.decode(ref, bytes(bad), "warm")
            except CorruptObject:
                detected += 1
            else:  # a few header bits do not change the output: then it must be exact
                assert out == data
    assert detected >= 3 * len(blob) - 6
