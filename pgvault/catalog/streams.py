"""Stream wrappers above the Site contract, written once: hashing, compression, encryption
(age, after compression), and a tee that writes one stream to several sites in one pass (a
site that fails is dropped, not fatal)."""
from __future__ import annotations

import hashlib
import logging
import threading
from collections import deque
from typing import BinaryIO, Callable

from ..errors import IntegrityError, SiteError
from ..sites.base import CHUNK, Site

log = logging.getLogger("pgvault.streams")


class SiteFailure(Exception):
    pass


# Bytes a site's writer thread may have waiting (per site): a slow site holds the others back
# only once this much is queued for it; memory stays bounded whatever the stream's size.
SITE_QUEUE = 16 << 20
# How long an abort waits for a lane to finish the write it is in: a hung site must not hang
# the abort; past it the writer is aborted under the lane (its write then fails, as wanted).
ABORT_WAIT = 30.0
_CLOSE = object()


class _SiteLane:
    """One site's writer on a thread of its own, fed through a queue bounded in bytes.

    ``put`` blocks only while ``limit`` bytes wait. The first error of the writer is kept in
    ``error``; from then on the lane discards what it is given (the producer never blocks on a
    dead site) and ``Tee`` drops the site at its next write. ``close(commit)`` ends the thread
    after everything queued, committing the writer there when asked (each site's commit waits
    on its own fsync or upload, beside the others')."""

    def __init__(self, name: str, writer, limit: int = SITE_QUEUE):
        self.name, self.writer, self.limit = name, writer, limit
        self.error: Exception | None = None
        self.queued = 0
        self.items: deque = deque()
        self.cond = threading.Condition()
        self.commit_on_close = False
        self.thread = threading.Thread(target=self._run, name=f"pgvault-site-{name}", daemon=True)
        self.thread.start()

    def put(self, data) -> None:
        with self.cond:
            # one item may exceed the limit (a big block): it waits for an empty queue, not forever
            while self.items and self.queued + len(data) > self.limit and self.error is None:
                self.cond.wait()
            if self.error is not None:
                return
            self.items.append(data)
            self.queued += len(data)
            self.cond.notify_all()

    def _next(self):
        with self.cond:
            while not self.items:
                self.cond.wait()
            data = self.items.popleft()
            self.queued -= 0 if data is _CLOSE else len(data)
            self.cond.notify_all()
            return data

    def _run(self) -> None:
        while True:
            data = self._next()
            if data is _CLOSE:
                break
            if self.error is None:
                try:
                    self.writer.write(data)
                except Exception as exc:  # noqa: BLE001 - handed to the producer's thread
                    self._failed(exc)
        if self.commit_on_close and self.error is None:
            try:
                self.writer.commit()
            except Exception as exc:  # noqa: BLE001 - handed to the caller's thread
                self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        with self.cond:
            self.error = exc
            self.items = deque(x for x in self.items if x is _CLOSE)
            self.queued = 0
            self.cond.notify_all()

    def end(self, commit: bool) -> None:
        """Stop after what is queued (``commit``: then commit the writer); ``join`` waits."""
        with self.cond:
            self.commit_on_close = commit
            self.items.append(_CLOSE)
            self.cond.notify_all()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    def close(self, commit: bool, timeout: float | None = None) -> None:
        if self.thread.is_alive():
            self.end(commit)
            self.join(timeout)


class _Hashing:
    """The Tee's own sha256 of the stored bytes, as a lane's writer (hashlib releases the GIL:
    the hash runs beside the sites' writes and the reading)."""

    def __init__(self):
        self.sha = hashlib.sha256()

    def write(self, data) -> None:
        self.sha.update(data)

    def commit(self) -> None:
        pass


class Tee:
    """Writes one byte stream to ``key`` at several sites; hashes the stored bytes once.

    Each site's writer runs on its own thread behind a bounded queue (``_SiteLane``): a local
    write, S3 part uploads and the hash overlap with each other and with producing the stream.
    A site whose write fails is aborted and recorded in ``failed`` (name -> error) at the next
    ``write`` or at ``commit``; the others continue. ``commit()`` commits every surviving writer
    and raises if none survive. Chunks handed to ``write`` must not be changed afterwards (they
    are queued, not copied: bytes, or a buffer the caller never reuses).
    """

    def __init__(self, targets: dict[str, tuple[Site, str]], *, queue_bytes: int = SITE_QUEUE):
        self.writers = {}
        self.lanes: dict[str, _SiteLane] = {}
        self.failed: dict[str, Exception] = {}
        for name, (site, key) in targets.items():
            try:
                self.writers[name] = site.writer(key)
            except Exception as exc:  # an unreachable site must not stop the others
                self._fail(name, exc)
        if not self.writers:
            raise self._all_failed()
        self._hash = _Hashing()
        self._hash_lane = _SiteLane("sha256", self._hash, queue_bytes)
        self.lanes = {n: _SiteLane(n, w, queue_bytes) for n, w in self.writers.items()}
        self.size = 0

    @property
    def sha(self):
        """The stored bytes' sha256 (complete once ``commit`` has returned)."""
        return self._hash.sha

    def _fail(self, name: str, exc: Exception) -> None:
        log.info("site %s failed: %s", name, exc)  # reported once by the caller (failed_sites)
        self.failed[name] = exc
        lane = self.lanes.pop(name, None)
        if lane is not None:
            lane.close(commit=False)           # its thread is done with the writer first
        w = self.writers.pop(name, None)
        if w is not None:
            try:
                w.abort()
            except Exception:
                pass

    def _all_failed(self) -> SiteError:
        detail = "; ".join(f"{n}: {getattr(e, 'message', e)}" for n, e in self.failed.items())
        return SiteError(f"every site failed: {detail}", "check the sites with pgvault check")

    def _drop_failed(self) -> None:
        for name, lane in list(self.lanes.items()):
            if lane.error is not None:
                self._fail(name, lane.error)
        if not self.writers:
            raise self._all_failed()

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        self._hash_lane.put(data)
        for lane in list(self.lanes.values()):
            lane.put(data)
        self._drop_failed()

    def commit(self) -> list[str]:
        """Commit every writer, all at once (each on its own lane's thread)."""
        self._hash_lane.close(commit=False)
        lanes = list(self.lanes.values())
        for lane in lanes:
            lane.end(commit=True)
        for lane in lanes:
            lane.join()
        self._drop_failed()
        return list(self.writers)

    def abort(self) -> None:
        self._hash_lane.close(commit=False)
        for name in list(self.writers):
            lane = self.lanes.pop(name, None)
            if lane is not None:
                lane.close(commit=False, timeout=ABORT_WAIT)
            w = self.writers.pop(name)
            try:
                w.abort()
            except Exception:
                pass


class _Sealing:
    """A sealed group's encryption, as a lane's writer: ciphertext goes on to the group's Tee.
    age's chunks (64 KiB, each its own AEAD call) then run beside the reading, not in it."""

    def __init__(self, sealer, tee: Tee):
        self.sealer, self.tee = sealer, tee

    def write(self, data) -> None:
        out = self.sealer.update(data)
        if out:
            self.tee.write(out)

    def commit(self) -> None:
        self.tee.write(self.sealer.finish())      # the last chunk, marked last


class SealedTee:
    """One compressed stream to groups of sites, each group with its own recipients (``()`` =
    stored in clear). Each group gets its own ciphertext — age draws a fresh file key per
    file — and so its own stored hash and size: ``tees[recipients]`` is that group's Tee.
    An encrypted group is sealed on a lane of its own (``_Sealing``). Same interface as Tee
    (write, commit, abort, failed); a group whose sites all fail is dropped, the stream goes on
    while one group survives."""

    def __init__(self, groups: dict[tuple, dict[str, tuple[Site, str]]]):
        from ..crypt.age import Sealer

        self.tees: dict[tuple, Tee] = {}
        self.lanes: dict[tuple, _SiteLane] = {}
        self._failed: dict[str, Exception] = {}
        for rcpts, targets in groups.items():
            try:
                self.tees[rcpts] = Tee(targets)
            except SiteError as exc:
                self._failed.update({n: exc for n in targets})
                continue
            if rcpts:
                self.lanes[rcpts] = _SiteLane(f"seal-{len(self.lanes)}", _Sealing(Sealer(list(rcpts)), self.tees[rcpts]))
        if not self.tees:
            detail = "; ".join(f"{n}: {getattr(e, 'message', e)}" for n, e in self._failed.items())
            raise SiteError(f"every site failed: {detail}", "check the sites with pgvault check")

    @property
    def failed(self) -> dict[str, Exception]:
        out = dict(self._failed)
        for tee in self.tees.values():
            out.update(tee.failed)
        return out

    def _each(self, fn) -> None:
        for rcpts, tee in list(self.tees.items()):
            try:
                fn(rcpts, tee)
            except SiteError as exc:  # every site of this group failed: the others go on
                self._failed.update(tee.failed)
                lane = self.lanes.pop(rcpts, None)
                if lane is not None:
                    lane.close(commit=False)
                tee.abort()
                del self.tees[rcpts]
                if not self.tees:
                    raise exc
        if not self.tees:
            raise SiteError("every site failed", "check the sites with pgvault check")

    def write(self, data: bytes) -> None:
        def one(rcpts, tee):
            lane = self.lanes.get(rcpts)
            if lane is None:
                tee.write(data)
                return
            lane.put(data)
            if lane.error is not None:        # the group's Tee: every site failed
                raise lane.error
        self._each(one)

    def commit(self) -> list[str]:
        survivors: list[str] = []

        def one(rcpts, tee):
            lane = self.lanes.get(rcpts)
            if lane is not None:
                lane.close(commit=True)        # everything sealed and handed on, the last chunk too
                if lane.error is not None:
                    raise lane.error
            survivors.extend(tee.commit())
        self._each(one)
        return survivors

    def abort(self) -> None:
        for lane in self.lanes.values():
            lane.close(commit=False, timeout=ABORT_WAIT)
        for tee in self.tees.values():
            tee.abort()


class Compressor:
    """zstd (multi-threaded, with frame checksums) or pass-through."""

    def __init__(self, kind: str, level: int = 1, threads: int = 2):
        self.kind = kind
        if kind == "zstd":
            import zstandard

            self._c = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True).compressobj()
        elif kind == "none":
            self._c = None
        else:
            raise ValueError(f"unsupported compression {kind!r}")

    def compress(self, data: bytes) -> bytes:
        return self._c.compress(data) if self._c else data

    def flush(self) -> bytes:
        return self._c.flush() if self._c else b""


SUFFIX = {"zstd": ".zst", "lz4": ".lz4", "none": ""}


def pump(source: BinaryIO, tee: "Tee | SealedTee", compression: str = "zstd", level: int = 1, threads: int = 2,
         progress: Callable[[int], None] | None = None) -> int:
    """Copy ``source`` into ``tee`` compressing on the way; return the raw byte count.
    ``lz4``: one frame of independent blocks compressed on ``threads`` cores (lz4frame.py)."""
    if compression == "lz4":
        return _pump_lz4(source, tee, threads, progress)
    comp = Compressor(compression, level, threads)
    raw = 0
    read = getattr(source, "read1", source.read)
    while True:
        chunk = read(CHUNK)
        if not chunk:
            break
        raw += len(chunk)
        out = comp.compress(chunk)
        if out:
            tee.write(out)
        if progress:
            progress(raw)
    tail = comp.flush()
    if tail:
        tee.write(tail)
    return raw


def _pump_lz4(source: BinaryIO, tee: Tee, threads: int, progress) -> int:
    from .lz4frame import BLOCK, ParallelLz4

    comp = ParallelLz4(tee.write, threads)
    raw = 0
    try:
        while chunk := source.read(BLOCK):
            raw += len(chunk)
            comp.add(chunk)
            if progress:
                progress(raw)
        comp.finish()
    finally:
        comp.close()
    return raw


class VerifyingReader:
    """Reads a stored object, hashing as it goes; at EOF the hash must match or IntegrityError."""

    def __init__(self, stream: BinaryIO, expected_sha256: str, expected_size: int, what: str):
        self.stream = stream
        self.sha = hashlib.sha256()
        self.size = 0
        self.expected = expected_sha256
        self.expected_size = expected_size
        self.what = what

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        if data:
            self.sha.update(data)
            self.size += len(data)
        else:
            self.check()
        return data

    def check(self) -> None:
        if self.size != self.expected_size or self.sha.hexdigest() != self.expected:
            raise IntegrityError(f"{self.what}: checksum mismatch (read {self.size} bytes, expected "
                                 f"{self.expected_size}; sha256 {self.sha.hexdigest()[:16]}… != {self.expected[:16]}…)",
                                 "the copy at this site is damaged; restore from another site (--from-site)")

    def close(self):
        self.stream.close()


class _Decrypting:
    """The plaintext of an age stream; a chunk that fails authentication is an IntegrityError
    (the copy at this site is damaged: the caller falls back to another site)."""

    def __init__(self, stream: BinaryIO, identities: list[bytes], what: str):
        from ..crypt import age

        self._age = age
        self.what = what
        self.stream = stream
        try:
            self.opener = age.Opener(stream, identities)
        except age.CorruptCiphertext as exc:
            raise self._damaged(exc) from None
        except age.NoMatchingIdentity:
            from ..errors import KeyRequired

            raise KeyRequired(f"{what}: none of the identities given opens it",
                              "pass the identity of one of the recipients the manifest lists") from None

    def _damaged(self, exc) -> IntegrityError:
        return IntegrityError(f"{self.what}: the ciphertext is damaged ({exc})",
                              "the copy at this site was altered; restore from another site (--from-site)")

    def read(self, n: int = -1) -> bytes:
        try:
            return self.opener.read(n)
        except self._age.CorruptCiphertext as exc:
            raise self._damaged(exc) from None

    read1 = read

    def readable(self) -> bool:
        return True

    def close(self):
        self.stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def decrypting(stream: BinaryIO, identities: list[bytes], what: str) -> BinaryIO:
    return _Decrypting(stream, identities, what)


def decompressing(stream: BinaryIO, compression: str) -> BinaryIO:
    if compression == "none":
        return stream
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(stream, read_size=CHUNK, read_across_frames=True)
    if compression == "lz4":
        import lz4.frame

        return lz4.frame.open(stream, mode="rb")
    raise ValueError(f"unsupported compression {compression!r}")


def hash_stream(stream: BinaryIO) -> tuple[str, int]:
    sha = hashlib.sha256()
    n = 0
    while chunk := stream.read(CHUNK):
        sha.update(chunk)
        n += len(chunk)
    return sha.hexdigest(), n
