"""Training zstd dictionaries from the small objects the store sees.

Small objects (chat messages, tool results) compress poorly alone: each is
too short for zstd to find repeats. A dictionary trained on many of them
holds their common shapes (JSON keys, roles, boilerplate) and lifts the ratio
several times. The trainer keeps a bounded sample (reservoir sampling, so
the samples it keeps add up to at most ``dict_sample_buffer_bytes``), trains
once enough has been seen, and again every ``dict_retrain_samples`` new
samples. It keeps each sample compressed (zstd level 1, no dictionary; they
are decompressed to train): kept plain, the samples of the next training were
1 MiB of the process's memory for as long as it ran, 1 KiB per agent of a
1,000-agent fleet.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import zstandard

__all__ = ["DictionaryTrainer"]

# fastCOVER parameters: segment size k and d-mer size d. Fixed values avoid the
# trainer's parameter search, which is ~10x slower for a small gain. f is the log2
# of the frequency table's entries: zstd's default 20 made each training a 12.6 MiB
# spike of the process's memory on 1 MiB of samples (12 KiB per agent of a 1,000-agent
# fleet's peak); 16 takes 3.3 MiB and compressed chat-like samples as well (within 0.1%).
_K = 1024
_D = 8
_F = 16
_ACCEL = 2


class DictionaryTrainer:
    """Collects sample objects and trains dictionaries when enough are seen."""

    def __init__(self, settings: Mapping[str, Any]):
        self.enabled: bool = settings["dict_enabled"]
        self._dict_size: int = settings["dict_size_bytes"]
        self._min_sample: int = max(settings["compress_min_bytes"], 8)
        self._max_sample: int = settings["dict_sample_max_bytes"]
        self._first_count: int = settings["dict_train_samples"]
        self._min_bytes: int = settings["dict_train_min_bytes"]
        self._retrain_count: int = settings["dict_retrain_samples"]
        self._cap_bytes: int = settings["dict_sample_buffer_bytes"]
        self._level: int = settings["compress_level"]
        self._rng = random.Random(0x5EED)
        self._samples: list[bytes] = []  # zstd frames (with their content size) of the samples kept
        self._compress = zstandard.ZstdCompressor(level=1, write_checksum=False).compress
        self._sample_bytes = 0
        self._seen = 0  # samples offered since the last training
        self._seen_bytes = 0
        self.trainings = 0
        self.failures = 0

    def offer(self, data: bytes) -> bool:
        """Consider ``data`` as a training sample; True when it is time to train."""
        if not self.enabled or (self.trainings and not self._retrain_count):  # (trained for good)
            return False
        n = len(data)
        if n < self._min_sample or n > self._max_sample:
            return False
        self._seen += 1
        self._seen_bytes += n
        if self._sample_bytes + n <= self._cap_bytes:
            self._samples.append(self._pack(data))
            self._sample_bytes += n
        else:  # reservoir: replace a random sample with probability k/seen
            slot = self._rng.randrange(self._seen)
            if slot < len(self._samples):
                old = zstandard.frame_content_size(self._samples[slot])
                if self._sample_bytes - old + n <= self._cap_bytes:
                    self._samples[slot] = self._pack(data)
                    self._sample_bytes += n - old
        return self.ready()

    def _pack(self, data: bytes) -> bytes:
        # copied: zstandard's result keeps the allocation of its worst case (the input's size and more)
        return bytes(memoryview(self._compress(data)))

    def ready(self) -> bool:
        """True when enough samples have been seen since the last training."""
        if not self.enabled:
            return False
        needed = self._first_count if self.trainings == 0 else self._retrain_count
        if needed == 0:
            return False
        return self._seen >= needed and self._seen_bytes >= self._min_bytes

    def train(self) -> bytes | None:
        """Train on the samples and start a new round; None if zstd could not train."""
        unpack = zstandard.ZstdDecompressor().decompress
        # typed as zstandard's stub wants it: its list[ByteString] is invariant, so list[bytes] is refused
        samples: list[bytes | bytearray | memoryview] = [unpack(sample) for sample in self._samples]
        self._samples = []
        self._sample_bytes = self._seen = self._seen_bytes = 0
        size = min(self._dict_size, max(1024, sum(map(len, samples)) // 4))
        try:
            zdict = zstandard.train_dictionary(
                size, samples, k=_K, d=_D, f=_F, accel=_ACCEL, level=self._level)
        except zstandard.ZstdError:
            # Too few or too uniform samples: try again after another round,
            # and give up on dictionaries after three failures in a row.
            self.failures += 1
            if self.failures >= 3:
                self.enabled = False
            return None
        self.failures = 0
        self.trainings += 1
        return zdict.as_bytes()
