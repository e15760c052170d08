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


AGE_MAGIC = b"age-encryption.org/v1\n"  # (pgvault.crypt.age.MAGIC; not imported: wal-push's start-up budget)


def is_sealed(data) -> bool:
    """Stored bytes that are age-encrypted (the compressed file inside). Keys keep Barman's
    names; no compressed or raw WAL file starts with this line."""
    return bytes(data[: len(AGE_MAGIC)]) == AGE_MAGIC


def seal(data: bytes, recipients) -> bytes:
    """Encrypt a compressed WAL file to ``recipients`` (after compression: ciphertext does not compress)."""
    from ..crypt import age

    return age.seal(data, list(recipients))


def unseal(data: bytes) -> bytes:
    """The compressed file inside an age-encrypted one, opened with the identities this process
    was given; KeyRequired without one that opens it, CorruptWal when the ciphertext is damaged."""
    from ..crypt import age, keys
    from ..errors import KeyRequired

    ids = keys.identities()
    if not ids:
        raise KeyRequired("the WAL file is encrypted and no identity was given",
                          f"pass the age identity file with --identity FILE or set {keys.ENV}")
    try:
        return age.open_bytes(data, ids)
    except age.NoMatchingIdentity:
        raise KeyRequired("the WAL file is encrypted and none of the identities given opens it",
                          "pass the identity of one of the recipients the policy had when it was archived") from None
    except age.CorruptCiphertext as exc:
        raise CorruptWal(f"the ciphertext is damaged: {exc}") from None


def decompress(data: bytes, compression: str) -> bytes:
    """Decompress and check (decrypting first if the stored bytes are encrypted); raise
    CorruptWal when the bytes are damaged.

    >>> decompress(compress(b"x" * 100, "gzip")[:-3], "gzip")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ...
    pgvault.wal.codec.CorruptWal: gzip data is damaged: incomplete or truncated stream
    """
    if is_sealed(data):
        data = unseal(data)
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
