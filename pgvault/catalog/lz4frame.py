"""LZ4 frames compressed on several cores, readable by every lz4 frame reader.

A frame with *independent* blocks (the frame's B.Indep flag) is a header, then blocks each
compressed on its own, then an end mark. So the blocks can be compressed in a thread pool
(``lz4.block.compress`` releases the GIL) and written in order, and the result is ONE ordinary
frame: ``lz4 -d``, python-lz4's ``LZ4FrameDecompressor`` and barman-cloud-restore (which feeds
one decompressor and does not accept a second frame) read it. Concatenated frames would be
simpler but Barman rejects them — see docs/base-backups.md.
"""
from __future__ import annotations

import struct
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

BLOCK = 4 << 20                      # the frame's block maximum (4 MiB), and our unit of work
_UNCOMPRESSED = 0x80000000            # high bit of a block size: the block is stored as is
END_MARK = b"\x00\x00\x00\x00"


def header() -> bytes:
    """The frame header: 4 MiB blocks, independent, no checksums (the stored bytes' sha256
    is pgvault's integrity check), header checksum from python-lz4 itself.

    >>> header().hex()
    '04224d18607073'
    """
    import lz4.frame

    # begin() of a streaming compressor: compress() would shrink the block size to its input
    return lz4.frame.LZ4FrameCompressor(block_size=lz4.frame.BLOCKSIZE_MAX4MB, block_linked=False,
                                        content_checksum=False).begin()


def block(data: bytes) -> bytes:
    """One block with its size prefix (stored raw when compression does not pay)."""
    import lz4.block

    packed = lz4.block.compress(data, store_size=False)
    if len(packed) >= len(data):
        return struct.pack("<I", len(data) | _UNCOMPRESSED) + data
    return struct.pack("<I", len(packed)) + packed


class ParallelLz4:
    """Feed raw bytes with ``add``; compressed bytes come out, in order, through ``emit``.
    At most ``2 * threads`` blocks are in flight, so memory stays below ~``3 * threads * 4 MiB``."""

    def __init__(self, emit: Callable[[bytes], None], threads: int = 2):
        self.emit = emit
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="pgvault-lz4")
        self.limit = 2 * max(1, threads)
        self.pending: deque = deque()
        self.buf = bytearray()
        self.started = False

    def add(self, data: bytes) -> None:
        if not self.started:
            self.started = True
            self.emit(header())
        # Big pieces become blocks as they are (no copy); small ones (tar headers, small
        # files) are gathered. A block may be any size up to BLOCK.
        if len(self.buf) + len(data) > BLOCK and self.buf:
            self._submit(bytes(self.buf))
            self.buf.clear()
        if len(data) >= BLOCK // 4:
            if self.buf:
                self._submit(bytes(self.buf))
                self.buf.clear()
            for i in range(0, len(data), BLOCK):
                self._submit(data[i:i + BLOCK] if len(data) > BLOCK else data)
            return
        self.buf += data

    def _submit(self, chunk: bytes) -> None:
        self.pending.append(self.pool.submit(block, chunk))
        while len(self.pending) >= self.limit or (self.pending and self.pending[0].done()):
            self.emit(self.pending.popleft().result())

    def finish(self) -> None:
        try:
            if not self.started:
                self.started = True
                self.emit(header())
            if self.buf:
                self._submit(bytes(self.buf))
                self.buf.clear()
            while self.pending:
                self.emit(self.pending.popleft().result())
            self.emit(END_MARK)
        finally:
            self.close()

    def close(self) -> None:
        for f in self.pending:
            f.cancel()
        self.pending.clear()
        self.pool.shutdown(wait=True)


def compress_all(chunks: Iterable[bytes], threads: int = 2) -> bytes:
    """A whole frame in memory (tests and small objects).

    >>> import lz4.frame
    >>> lz4.frame.decompress(compress_all([b"pg" * 5_000_000, b"x"])) == b"pg" * 5_000_000 + b"x"
    True
    """
    out = []
    c = ParallelLz4(out.append, threads)
    for ch in chunks:
        c.add(ch)
    c.finish()
    return b"".join(out)
