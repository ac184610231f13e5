"""`Ref`: the name of an object in the content-addressed store.

A ref is the 32-byte blake3 digest of an object's bytes. It is a ``bytes``
subclass, so it hashes and compares exactly like the plain digest (a dict
keyed by refs can be probed with plain 32-byte ``bytes``), costs one small
object, and pickles, sorts and slices like bytes. ``str(ref)`` and
``ref.hex()`` give the 64-character hex form; ``Ref(hex_string)`` parses it.
"""

from __future__ import annotations

from typing import Final

from blake3 import blake3

__all__ = ["REF_SIZE", "Ref", "hash_bytes"]

REF_SIZE: Final = 32
"""Length of a ref in bytes (a blake3-256 digest)."""


class Ref(bytes):
    """A 32-byte blake3 digest naming one object in a `ContentStore`.

    ``Ref(digest_bytes)`` wraps a digest; ``Ref("ab12...")`` parses 64 hex
    characters. Anything else raises ``TypeError`` or ``ValueError``.
    """

    __slots__ = ()

    def __new__(cls, value: bytes | bytearray | memoryview | str) -> Ref:
        if isinstance(value, str):
            try:
                raw = bytes.fromhex(value)
            except ValueError:
                raise ValueError(f"not a hex ref: {value!r}") from None
        elif isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
        else:
            raise TypeError(f"a Ref is made from 32 bytes or 64 hex characters, not {type(value).__name__}")
        if len(raw) != REF_SIZE:
            raise ValueError(f"a ref is {REF_SIZE} bytes, got {len(raw)}")
        return bytes.__new__(cls, raw)

    @classmethod
    def _trusted(cls, digest: bytes) -> Ref:
        """Wrap a digest known to be 32 bytes (skips validation; internal)."""
        return bytes.__new__(cls, digest)

    @classmethod
    def coerce(cls, value: object) -> Ref:
        """Return ``value`` as a Ref, accepting a Ref, 32 bytes or 64 hex chars."""
        if type(value) is cls:
            return value  # type: ignore[return-value]
        return cls(value)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"Ref('{self.hex()}')"

    def __str__(self) -> str:
        return self.hex()

    @property
    def short(self) -> str:
        """The first 12 hex characters, for logs and dashboards."""
        return self.hex()[:12]

    def __reduce__(self) -> tuple[type[Ref], tuple[bytes]]:
        return (Ref, (bytes(self),))


def hash_bytes(data: bytes) -> Ref:
    """The ref of ``data``: its blake3 digest."""
    return Ref._trusted(blake3(data).digest())
