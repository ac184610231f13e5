"""Small bytes for what a conversation keeps between its requests: its messages' JSON and tool calls.

A conversation is sent again with every request, so a `Message` keeps the JSON the encoder made for
it (`avm.io.wire`) and an assistant turn its tool calls' JSON (`avm.io.request.ToolCalls`) rather
than encode them again each time; kept plain, they were the largest part of what a waiting agent of
bench/fleet.py held (the VM's agents now store their past turns instead: `avm.conversation.store_turn`).
A fleet's messages are alike (the same tools, results of the same shapes, ids
of the same form), so one zstd dictionary trained on the first few hundred of them packs them far
better than zstd alone: on bench/fleet.py's tool results 589 bytes became 58 (199 without the
dictionary), its tool calls 159 bytes 41 (141).

``pack(data)`` is the packed form of ``data``, or None when packing does not save a quarter: one
byte, the number of the dictionary used (0: none), then a zstd frame without magic number,
dictionary id or checksum (the frame keeps its content size). A dictionary is trained from the
first 512 samples offered (`avm.memory.dictionary.DictionaryTrainer`, which also trains the
store's) and again, twice, on the 2,048 after each training (a fleet's first messages are its
tasks; its tool calls and results come after); each is kept for the process's life, so packed
bytes never outlive the dictionary they need. Packing takes a few microseconds, unpacking about
one; both may run in any thread.
"""

from __future__ import annotations

import threading
from typing import Any

import zstandard

from avm.memory.dictionary import DictionaryTrainer

__all__ = ["PACK_MIN_BYTES", "pack", "unpack"]

PACK_MIN_BYTES = 64  # shorter bytes are kept as they are (a frame's header and a bytes object's would eat the gain)
_FORMAT = zstandard.FORMAT_ZSTD1_MAGICLESS
_LEVEL = 1
_TRAINER_SETTINGS = {
    "dict_enabled": True,
    "dict_size_bytes": 8 << 10,
    "compress_min_bytes": PACK_MIN_BYTES,
    "dict_sample_max_bytes": 16 << 10,
    "dict_train_samples": 512,
    "dict_train_min_bytes": 32 << 10,
    # Trained again on the samples after that (a fleet's first messages are all of one kind, its task:
    # the tool calls and results come after), up to `_MAX_DICTS` - 1 trainings: no dictionary is dropped.
    "dict_retrain_samples": 2048,
    "dict_sample_buffer_bytes": 256 << 10,  # training on this takes a few milliseconds, once
    "compress_level": _LEVEL,
}

_MAX_DICTS = 4  # "no dictionary" and three trained ones
_lock = threading.Lock()  # the trainer's
_trainer = DictionaryTrainer(_TRAINER_SETTINGS)
_dicts: list[zstandard.ZstdCompressionDict | None] = [None]  # number -> dictionary; only ever appended to
_local = threading.local()  # zstandard's compressors are not thread-safe: each thread has its own


def _compressor(zdict: zstandard.ZstdCompressionDict | None) -> Any:
    params = zstandard.ZstdCompressionParameters.from_level(
        _LEVEL, format=_FORMAT, write_content_size=1, write_checksum=0, write_dict_id=0)
    return zstandard.ZstdCompressor(dict_data=zdict, compression_params=params).compress


def _offer(data: bytes) -> None:
    with _lock:
        if len(_dicts) < _MAX_DICTS and _trainer.offer(data):
            trained = _trainer.train()
            if trained is not None:
                _dicts.append(zstandard.ZstdCompressionDict(trained, dict_type=zstandard.DICT_TYPE_AUTO))


def pack(data: bytes) -> bytes | None:
    """``data`` packed (a dictionary number, then a zstd frame), or None if that saves less than a quarter."""
    n = len(data)
    if n < PACK_MIN_BYTES:
        return None
    if len(_dicts) < _MAX_DICTS and _trainer.enabled:
        _offer(data)
    number = len(_dicts) - 1
    try:
        current = _local.c
    except AttributeError:
        current = _local.c = (-1, None)
    if current[0] != number:
        current = _local.c = (number, _compressor(_dicts[number]))
    packed = bytes((number,)) + current[1](data)
    return packed if len(packed) * 4 <= n * 3 else None


def unpack(packed: bytes) -> bytes:
    """The bytes ``pack`` made ``packed`` from."""
    number = packed[0]
    try:
        decompress = _local.d[number]
    except AttributeError:
        _local.d = {}
        return unpack(packed)
    except KeyError:
        decompress = _local.d[number] = zstandard.ZstdDecompressor(
            dict_data=_dicts[number], format=_FORMAT).decompress
    return decompress(packed[1:])  # type: ignore[no-any-return]
