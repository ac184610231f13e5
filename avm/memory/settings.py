"""The store's settings: one dict, units in comments.

``ContentStore(path, **overrides)`` starts from `DEFAULT_SETTINGS` and
replaces the named entries. An unknown name raises ``TypeError`` (like an
unexpected keyword argument); a value of the wrong type or out of range
raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

__all__ = ["DEFAULT_SETTINGS", "resolve_settings"]

KiB = 1024
MiB = 1024 * KiB

_DEFAULTS: dict[str, Any] = {
    # --- tier budgets -------------------------------------------------------
    "hot_bytes": 64 * MiB,  # bytes: hot tier budget (uncompressed objects, LRU)
    "warm_bytes": 256 * MiB,  # bytes: warm tier budget (compressed blobs, LRU);
    #                           with path=None warm is the last tier and keeps
    #                           everything, so the budget is not enforced
    # --- compression ----------------------------------------------------------
    "compress_min_bytes": 64,  # bytes: smaller objects are stored raw
    "compress_level": 6,  # zstd level, 1 (fast) .. 22 (small); compression runs on demotion
    #                       and at flush, off the read path; decompression speed does not depend on it
    "dict_enabled": True,  # bool: train zstd dictionaries from small objects
    "dict_size_bytes": 112 * KiB,  # bytes: target size of a trained dictionary
    "dict_sample_max_bytes": 16 * KiB,  # bytes: larger objects are not training samples
    "dict_train_samples": 2000,  # objects: samples needed before the first training
    "dict_train_min_bytes": 1 * MiB,  # bytes: total sample bytes needed to train
    "dict_retrain_samples": 20000,  # objects: new samples before retraining; 0 = never
    "dict_sample_buffer_bytes": 1 * MiB,  # bytes: cap on samples kept for retraining (the first training's minimum)
    "dict_use_max_bytes": 256 * KiB,  # bytes: larger objects compress without a dictionary
    "dict_reencode_bytes": 16 * MiB,  # bytes: warm objects (decoded size) re-encoded with a newly
    #                                   trained dictionary; 0 = leave existing blobs as they are
    # --- cold tier (LMDB) -------------------------------------------------------
    "write_batch_count": 2000,  # writes: pending puts + pin changes before an automatic flush
    "write_batch_bytes": 16 * MiB,  # bytes: pending object bytes before an automatic flush
    "map_size_bytes": 64 * MiB,  # bytes: initial LMDB map size; doubles whenever full
    "max_readers": 126,  # threads: LMDB reader slots (concurrent reading threads)
    "sync": True,  # bool: fsync on every committed write transaction
}

DEFAULT_SETTINGS: Mapping[str, Any] = MappingProxyType(_DEFAULTS)
"""The defaults, read-only. Copy with ``dict(DEFAULT_SETTINGS)``."""

_BOOLS = frozenset({"dict_enabled", "sync"})
_MINIMUMS = {
    "hot_bytes": 0,
    "warm_bytes": 0,
    "compress_min_bytes": 0,
    "dict_size_bytes": 256,
    "dict_sample_max_bytes": 1,
    "dict_train_samples": 8,
    "dict_train_min_bytes": 1,
    "dict_retrain_samples": 0,
    "dict_sample_buffer_bytes": 1,
    "dict_use_max_bytes": 0,
    "dict_reencode_bytes": 0,
    "write_batch_count": 1,
    "write_batch_bytes": 1,
    "map_size_bytes": 4 * KiB,
    "max_readers": 1,
}


def resolve_settings(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return the defaults with ``overrides`` applied, after checking them."""
    unknown = sorted(set(overrides) - set(_DEFAULTS))
    if unknown:
        known = ", ".join(sorted(_DEFAULTS))
        raise TypeError(f"unknown store setting(s) {', '.join(unknown)}; known settings: {known}")
    settings = dict(_DEFAULTS)
    for name, value in overrides.items():
        if name in _BOOLS:
            if not isinstance(value, bool):
                raise ValueError(f"store setting {name} must be a bool, got {value!r}")
        elif name == "compress_level":
            if type(value) is not int or not 1 <= value <= 22:
                raise ValueError(f"store setting compress_level must be an int in 1..22, got {value!r}")
        else:
            if type(value) is not int or value < _MINIMUMS[name]:
                raise ValueError(f"store setting {name} must be an int >= {_MINIMUMS[name]}, got {value!r}")
        settings[name] = value
    return settings
