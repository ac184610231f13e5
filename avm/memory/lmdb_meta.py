"""What an LMDB ``data.mdb`` says about itself, read with plain file reads.

LMDB maps the whole data file and trusts it: a file shorter than its meta
page says makes the first read past the end a SIGBUS, which no Python code
can catch. So before LMDB maps a store, `check_data_file` reads the two meta
pages with ``pread`` and compares the file's length with the length the
newest meta page needs; a shorter file is refused with a `StoreError`.

The layout is LMDB's own, from ``libraries/liblmdb/mdb.c`` in the LMDB
repository (``MDB_page``, ``PAGEHDRSZ``, ``MDB_db``, ``MDB_meta`` and
``mdb_env_read_header``), for a 64-bit build:

- pages 0 and 1 are meta pages; each starts with the 16-byte page header
  (page number 8, pad 2, flags 2, lower/upper 4; flag ``P_META`` = 0x08);
- the meta follows the header: magic (u32, ``0xBEEFC0DE``), data version
  (u32, 1), fixed-map address (8), map size (8), two ``MDB_db`` records of 48
  bytes (free pages, main), the last used page number (8) and the id of the
  transaction that wrote it (8). The page size is the first ``MDB_db``'s
  ``md_pad``, and the second meta page starts one page size in;
- LMDB uses the meta page with the larger transaction id; every page up to
  its last used page must be in the file. Pages are written before the meta
  page that points at them, so a file another process is writing to passes
  too (the meta page is read before the length).

Everything is in the machine's byte order. The check is skipped where it
cannot apply (not a 64-bit build, a file too short or too odd to hold meta
pages: LMDB refuses those itself with an error, not a signal).
"""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

from avm.errors import StoreError

__all__ = ["LmdbMeta", "check_data_file", "read_meta"]

PAGE_HEADER = 16  # PAGEHDRSZ on a 64-bit build
P_META = 0x08
MAGIC = 0xBEEFC0DE
DATA_VERSION = 1
_HEADER = struct.Struct("=QHHI")  # page number, pad, flags, lower/upper
_META = struct.Struct("=IIQQ48s48sQQ")  # magic, version, address, map size, dbs[2], last page, txn id
_PSIZE = struct.Struct("=I")  # md_pad of the first MDB_db: the page size
_MIN_PAGE, _MAX_PAGE = 512, 1 << 16


class LmdbMeta(NamedTuple):
    """The meta page LMDB would use."""

    page_size: int
    map_size: int
    last_page: int
    txn_id: int

    @property
    def needed_bytes(self) -> int:
        """The length the data file must have: every page up to the last used one."""
        return (self.last_page + 1) * self.page_size


def _meta_at(fd: int, offset: int) -> tuple[int, LmdbMeta] | None:
    raw = os.pread(fd, PAGE_HEADER + _META.size, offset)
    if len(raw) < PAGE_HEADER + _META.size:
        return None
    _, _, flags, _ = _HEADER.unpack_from(raw)
    magic, version, _, map_size, free_db, _, last_page, txn_id = _META.unpack_from(raw, PAGE_HEADER)
    if not flags & P_META or magic != MAGIC or version != DATA_VERSION:
        return None
    (page_size,) = _PSIZE.unpack_from(free_db)
    return page_size, LmdbMeta(page_size, map_size, last_page, txn_id)


def read_meta(data_file: str) -> LmdbMeta | None:
    """The newest valid meta page of ``data_file``, or None if it has none this module can read."""
    if struct.calcsize("P") != 8:
        return None  # the layout above is the 64-bit one
    fd = os.open(data_file, os.O_RDONLY)
    try:
        first = _meta_at(fd, 0)
        if first is None:
            return None
        page_size = first[0]
        if not _MIN_PAGE <= page_size <= _MAX_PAGE or page_size & (page_size - 1):
            raise StoreError(f"{data_file} is damaged: its meta page gives a page size of {page_size} bytes")
        second = _meta_at(fd, page_size)
    finally:
        os.close(fd)
    if second is None:  # LMDB refuses such a file; its first meta page still says how long it was
        return first[1]
    return max(first[1], second[1], key=lambda m: m.txn_id)


def check_data_file(data_file: str) -> None:
    """Raise `StoreError` if ``data_file`` is shorter than its newest meta page says."""
    try:
        meta = read_meta(data_file)
        if meta is None:
            return
        size = os.stat(data_file).st_size
    except OSError as exc:
        raise StoreError(f"cannot read {data_file}: {exc.strerror or exc}") from exc
    if size < meta.needed_bytes:
        raise StoreError(
            f"{data_file} is truncated: it holds {size:,} bytes but its last transaction uses "
            f"{meta.needed_bytes:,} ({meta.last_page + 1:,} pages of {meta.page_size}); "
            "restore it from a copy (opening it would crash the process)")
