"""WAL file names and page headers: pure functions, no I/O.

A segment name is TTTTTTTTLLLLLLLLSSSSSSSS (timeline, log, segment within log, hex). Besides
segments PostgreSQL archives ``<tli>.history`` (timeline switches), ``<segment>.<offset>.backup``
(backup labels) and, from pg_receivewal or a promoted standby, ``<segment>.partial``.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from ..lsn import format_lsn

SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
ANY_RE = re.compile(r"^(?:[0-9A-F]{24}(?:\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)$")

# Compression name -> key suffix, as barman-cloud writes and reads them (it detects the
# compression of a stored WAL file by this suffix alone).
SUFFIXES = {"none": "", "gzip": ".gz", "bzip2": ".bz2", "zstd": ".zst"}
BY_SUFFIX = {v: k for k, v in SUFFIXES.items() if v}

XLP_LONG_HEADER = 0x0002
LONG_HEADER = struct.Struct("<HHIQI4xQII")  # magic, info, tli, pageaddr, rem_len, (pad), sysid, seg_size, blcksz


@dataclass(frozen=True)
class PageHeader:
    magic: int
    info: int
    timeline: int
    pageaddr: int
    system_identifier: int
    segment_size: int
    block_size: int


def is_wal_name(name: str) -> bool:
    """Any file PostgreSQL archives.

    >>> [is_wal_name(n) for n in ("000000010000000000000003", "00000002.history",
    ...  "000000010000000000000002.00000028.backup", "000000010000000000000003.partial", "x.gz")]
    [True, True, True, True, False]
    """
    return bool(ANY_RE.match(name))


def kind(name: str) -> str:
    """segment | history | backup | partial.

    >>> kind("00000002.history"), kind("000000010000000000000003"), kind("000000010000000000000003.partial")
    ('history', 'segment', 'partial')
    """
    if name.endswith(".history"):
        return "history"
    if name.endswith(".backup"):
        return "backup"
    if name.endswith(".partial"):
        return "partial"
    return "segment"


def has_header(name: str) -> bool:
    """Files that start with a WAL page header (the rest are text)."""
    return kind(name) in ("segment", "partial")


def split_stored(filename: str) -> tuple[str, str]:
    """(WAL name, compression) of a file name as stored at a site.

    >>> split_stored("000000010000000000000003.gz")
    ('000000010000000000000003', 'gzip')
    >>> split_stored("00000002.history")
    ('00000002.history', 'none')
    """
    for suffix, comp in BY_SUFFIX.items():
        if filename.endswith(suffix):
            return filename[: -len(suffix)], comp
    return filename, "none"


def segments_per_log(segment_size: int) -> int:
    """Segments in one 4 GiB "log" (the middle eight hex digits of a name).

    >>> segments_per_log(16 * 1024 * 1024)
    256
    """
    return 0x100000000 // segment_size


def parse_segment(name: str, segment_size: int = 16 << 20) -> tuple[int, int]:
    """(timeline, segment number) of a segment (or .partial) name.

    >>> parse_segment("000000020000000100000003")
    (2, 259)
    """
    m = SEGMENT_RE.match(name[:24])
    if not m:
        raise ValueError(f"not a WAL segment name: {name!r}")
    tli, log, seg = (int(g, 16) for g in m.groups())
    return tli, log * segments_per_log(segment_size) + seg


def segment_name(timeline: int, segno: int, segment_size: int = 16 << 20) -> str:
    """The segment name of a timeline and segment number.

    >>> segment_name(2, 259)
    '000000020000000100000003'
    """
    per = segments_per_log(segment_size)
    return f"{timeline:08X}{segno // per:08X}{segno % per:08X}"


def sort_key(name: str) -> tuple:
    """Archive order: timeline history files first (a restore needs them to pick a timeline),
    then everything else by name.

    >>> sorted(["000000010000000000000002", "00000002.history", "000000010000000000000001"], key=sort_key)
    ['00000002.history', '000000010000000000000001', '000000010000000000000002']
    """
    return (0 if name.endswith(".history") else 1, name)


def parse_header(data: bytes) -> PageHeader:
    """The long page header that starts every WAL segment (XLogLongPageHeaderData).

    >>> hdr = LONG_HEADER.pack(0xD110, 2, 1, 0x3000000, 0, 7312345678901234567, 16 << 20, 8192)
    >>> h = parse_header(hdr)
    >>> (h.timeline, h.pageaddr, h.system_identifier, h.segment_size)
    (1, 50331648, 7312345678901234567, 16777216)
    """
    if len(data) < LONG_HEADER.size:
        raise ValueError(f"too short for a WAL page header ({len(data)} bytes)")
    magic, info, tli, pageaddr, _rem, sysid, segsize, blcksz = LONG_HEADER.unpack_from(data)
    if not info & XLP_LONG_HEADER:
        raise ValueError("first page has no long header (not the start of a WAL segment)")
    if segsize < (1 << 20) or segsize & (segsize - 1) or blcksz not in (1024, 2048, 4096, 8192, 16384, 32768):
        raise ValueError(f"implausible WAL page header (segment size {segsize}, block size {blcksz})")
    return PageHeader(magic, info, tli, pageaddr, sysid, segsize, blcksz)


def check_header(name: str, header: PageHeader) -> str | None:
    """Why the header does not belong to the segment ``name`` (None when it does).

    >>> h = PageHeader(0xD110, 2, 1, 3 * (16 << 20), 42, 16 << 20, 8192)
    >>> check_header("000000010000000000000003", h) is None
    True
    >>> check_header("000000010000000000000004", h)
    'page address 0/3000000 does not match the segment name (expected 0/4000000)'
    """
    _tli, segno = parse_segment(name, header.segment_size)
    expected = segno * header.segment_size
    if header.pageaddr != expected:
        return (f"page address {format_lsn(header.pageaddr)} does not match the segment name "
                f"(expected {format_lsn(expected)})")
    return None
