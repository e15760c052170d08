"""Compression of WAL files as barman-cloud stores them (whole-file gzip, bzip2 or zstd).

Every format used carries its own checksum — gzip a CRC-32 and length, bzip2 block CRCs, zstd
the content checksum pgvault asks for — so a decompression that succeeds is an integrity check.
Compression works on bytes in memory (a segment is 16 MiB by default); zlib, bz2 and zstandard
release the GIL, so segments of a batch compress in parallel threads.
"""
from __future__ import annotations

import zlib

# gzip level 1: WAL is dominated by page images and zero padding, where level 1 keeps most of
# the ratio of level 6 at several times the speed; the archiver waits on this.
GZIP_LEVEL = 1
ZSTD_LEVEL = 1


class CorruptWal(ValueError):
    """Stored bytes that do not decompress (bad checksum, truncated, wrong format)."""


def compress(data: bytes, compression: str) -> bytes:
    """Compress one WAL file.

    >>> decompress(compress(b"wal" * 1000, "gzip"), "gzip") == b"wal" * 1000
    True
    """
    if compression == "none":
        return data if isinstance(data, bytes) else bytes(data)  # (a mapped segment: keep no mapping)
    if compression == "gzip":
        c = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
        return c.compress(data) + c.flush()
    if compression == "bzip2":
        import bz2

        return bz2.compress(data, 9)
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compress(data)
    raise ValueError(f"unknown WAL compression {compression!r}")


def decompress(data: bytes, compression: str) -> bytes:
    """Decompress and check; raise CorruptWal when the bytes are damaged.

    >>> decompress(compress(b"x" * 100, "gzip")[:-3], "gzip")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ...
    pgvault.wal.codec.CorruptWal: gzip data is damaged: incomplete or truncated stream
    """
    try:
        if compression == "none":
            return data
        if compression == "gzip":
            d = zlib.decompressobj(31)
            out = d.decompress(data) + d.flush()
            if not d.eof:
                raise CorruptWal("gzip data is damaged: incomplete or truncated stream")
            return out
        if compression == "bzip2":
            import bz2

            return bz2.decompress(data)
        if compression == "zstd":
            import zstandard

            d = zstandard.ZstdDecompressor()
            # Frames written without a content size (streamed) need the streaming reader.
            import io

            return d.stream_reader(io.BytesIO(data)).read()
    except CorruptWal:
        raise
    except Exception as exc:  # zlib.error, OSError (bz2), zstandard.ZstdError
        raise CorruptWal(f"{compression} data is damaged: {exc}") from None
    raise ValueError(f"unknown WAL compression {compression!r}")
