"""PostgreSQL page checksums, verified while a base backup reads the files (as pgBackRest does).

The algorithm is PostgreSQL's ``pg_checksum_page`` (src/include/storage/checksum_impl.h): each
8 KiB page is 64 rows of 32 uint32 columns, each column folded with an FNV-1a variant from its
own base offset, two rounds of zeros, the columns xor-ed, the block number mixed in, reduced
to 16 bits. Per page in pure Python that costs ~2 ms; here the 32 columns AND every page of a
chunk are one numpy array, so a 4 MiB chunk is 66 vector steps (hundreds of MB/s).

Which pages count (as pgBackRest): new pages (``pd_upper == 0``, all zeros) have no checksum,
and a page whose LSN is at or after the backup's start LSN is being written concurrently —
WAL replay rewrites it — so it is exempt. A mismatching page is re-read once by the caller
(a torn read of a page being written), and only then reported with file and block.
"""
from __future__ import annotations

import re

import numpy as np

BLCKSZ = 8192
RELSEG_BLOCKS = 131072          # 1 GiB segment files: block numbers continue across .1, .2, ...
_BASE = np.array([
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
], dtype=np.uint32)
_PRIME = np.uint32(16777619)

# Relation files only (base/, global/, a tablespace's PG_<major>_<catalog>/ seen from PGDATA or
# from the tablespace's own tar): "16384", "16384_fsm", "16384_vm", "16384.3".
_RELATION = re.compile(r"^(?:base/\d+|global|(?:pg_tblspc/\d+/)?PG_[^/]+/\d+)/\d+(?:_(?:fsm|vm|init))?(?:\.(\d+))?$")


def checked_file(path: str) -> tuple[bool, int]:
    """Whether a file (path relative to PGDATA) carries page checksums, and the block number
    its first page has.

    >>> checked_file("base/5/16384.2"), checked_file("global/1262"), checked_file("base/5/PG_VERSION")
    ((True, 262144), (True, 0), (False, 0))
    >>> checked_file("pg_tblspc/16390/PG_15_202209061/5/16391_vm"), checked_file("PG_15_202209061/5/16391.1")
    ((True, 0), (True, 131072))
    """
    m = _RELATION.match(path)
    if not m:
        return False, 0
    return True, int(m.group(1) or 0) * RELSEG_BLOCKS


_NO_CHECKSUM = np.array([0xFFFFFFFF, 0xFFFFFFFF, 0xFFFF0000] + [0xFFFFFFFF] * 29, dtype=np.uint32)


def checksums(pages: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """pg_checksum_page of each row of ``pages`` (uint8, shape (n, 8192)) at block numbers
    ``blocks``: the 32 columns and all n pages advance together, 66 vector steps in all, each
    four in-place operations on (n, 32) arrays. The pages are read where they are (step i
    takes row i of every page, a strided view): no copy of the data, only of row 0, whose
    pd_checksum (bytes 8-9) counts as zero."""
    n = len(pages)
    words = pages.view("<u4").reshape(n, 64, 32)
    row0 = words[:, 0, :] & _NO_CHECKSUM
    sums = np.empty((n, 32), dtype=np.uint32)
    sums[:] = _BASE
    tmp = np.empty_like(sums)
    shifted = np.empty_like(sums)
    for i in range(66):                        # 64 rows, then two rounds of zeros
        if i < 64:
            np.bitwise_xor(sums, row0 if i == 0 else words[:, i, :], out=tmp)
        else:
            tmp[:] = sums
        np.right_shift(tmp, 17, out=shifted)
        np.multiply(tmp, _PRIME, out=sums)
        np.bitwise_xor(sums, shifted, out=sums)
    result = np.bitwise_xor.reduce(sums, axis=1) ^ blocks.astype(np.uint32)
    return ((result % np.uint32(65535)) + np.uint32(1)).astype(np.uint16)


def bad_pages(data: bytes | memoryview, first_block: int, start_lsn: int) -> list[int]:
    """Block numbers in ``data`` (whole pages of one file, the first at ``first_block``) whose
    checksum does not match, skipping new pages and pages written since ``start_lsn``."""
    n = len(data) // BLCKSZ
    return [first_block + i for i in bad_indexes(data, np.arange(first_block, first_block + n), start_lsn)]


def bad_indexes(data: bytes | memoryview, blocks: np.ndarray, start_lsn: int) -> list[int]:
    """Which pages of ``data`` (whole pages, page i at block number ``blocks[i]``: pages of
    several small files may be checked in one call) fail their checksum, skipping new pages
    and pages written since ``start_lsn``."""
    n = len(data) // BLCKSZ
    if n == 0:
        return []
    pages = np.frombuffer(data, dtype=np.uint8, count=n * BLCKSZ).reshape(n, BLCKSZ)
    hdr = pages[:, :24].copy()
    lsn = (hdr[:, 0:4].view("<u4").astype(np.uint64)[:, 0] << np.uint64(32)) | hdr[:, 4:8].view("<u4").astype(np.uint64)[:, 0]
    stored = hdr[:, 8:10].view("<u2")[:, 0]
    upper = hdr[:, 14:16].view("<u2")[:, 0]
    candidates = np.nonzero((upper != 0) & (lsn < np.uint64(start_lsn)))[0]
    if len(candidates) == 0:
        return []
    # every page is a candidate in the usual case: the array as it is, not a copy of it
    chosen = pages if len(candidates) == n else pages[candidates]
    got = checksums(chosen, np.asarray(blocks)[candidates])
    return [int(i) for i in candidates[got != stored[candidates]]]
