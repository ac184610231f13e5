"""The content-addressed store: hot (dict), warm (zstd), cold (LMDB).

``ContentStore`` is the entry point; ``Ref`` names its objects. See
`avm.memory.store` for how the tiers fit together and
`avm.memory.settings` for the settings (units in comments).
"""

from __future__ import annotations

from avm.memory.ref import REF_SIZE, Ref, hash_bytes
from avm.memory.settings import DEFAULT_SETTINGS
from avm.memory.stats import StoreStatistics, TierStatistics
from avm.memory.store import ContentStore
from avm.memory.values import ValueFormatError, decode_value, encode_value

__all__ = [
    "DEFAULT_SETTINGS",
    "REF_SIZE",
    "ContentStore",
    "Ref",
    "StoreStatistics",
    "TierStatistics",
    "ValueFormatError",
    "decode_value",
    "encode_value",
    "hash_bytes",
]
