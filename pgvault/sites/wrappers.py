"""Sites that wrap a Site: the same contract (pgvault.sites.base), behaviour added around it.

- ``SiteWrapper`` delegates every primitive and the capabilities, explicitly (no __getattr__:
  a primitive added to the contract must be added here, or the wrappers stop conforming).
- ``RetryingSite`` retries transient failures of idempotent calls with bounded backoff.
- ``FaultySite`` injects faults for tests: fail the Nth call, flip a byte on read, be slow,
  hang until released. It records every storage call as (op, key) in ``calls``.

The retry rule (RetryingSite): a call is retried only when doing it twice is the same as doing
it once, whatever the first attempt did. get/head/list/list_temporaries read; delete of a key
is idempotent by contract; opening a writer makes nothing visible. A writer's ``write`` and
``commit``, and ``create_exclusive`` (its repeat would find its own object), are never retried: the bytes already handed to a failed writer are not kept here,
and a commit that failed with an unknown outcome (the request may have been applied, the
answer lost) may have made the object visible — re-sending it could overwrite what another
writer committed meanwhile (two pushers of one WAL name), which is exactly the check callers
made before writing. The caller aborts and decides (wal-push spools, a backup fails and its
re-run converges). ``ObjectNotFound`` is an answer, not a failure: never retried.
"""
from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

from ..errors import ObjectLocked, ObjectNotFound, SiteError, SiteUnreachable
from .base import Capabilities, ObjectInfo, Site, Writer, WriterMixin


class SiteWrapper:
    """A Site that hands every call to ``inner``. Subclasses override what they change."""

    def __init__(self, inner: Site):
        self.inner = inner
        self.name = inner.name

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    def writer(self, key: str) -> Writer:
        return self.inner.writer(key)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        return self.inner.create_exclusive(key, data)

    def get(self, key: str) -> BinaryIO:
        return self.inner.get(key)

    def head(self, key: str) -> ObjectInfo | None:
        return self.inner.head(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def list_temporaries(self, prefix: str = "") -> list[str]:
        return self.inner.list_temporaries(prefix)

    def on_response(self, callback) -> None:
        self.inner.on_response(callback)

    def locked_until(self, key: str) -> float | None:
        return self.inner.locked_until(key)

    def lock_enabled(self) -> bool:
        return self.inner.lock_enabled()

    def describe(self) -> str:
        return self.inner.describe()


# -- retries


class RetryingSite(SiteWrapper):
    """Retries transient SiteErrors of idempotent calls (the rule is in the module docstring).
    ``attempts`` bounds the tries (the first included); the waits double from ``backoff`` up to
    ``max_backoff`` seconds, so a permanent failure costs at most their sum before it surfaces."""

    def __init__(self, inner: Site, *, attempts: int = 3, backoff: float = 0.2, max_backoff: float = 2.0,
                 sleep: Callable[[float], None] = time.sleep):
        super().__init__(inner)
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.attempts, self.backoff, self.max_backoff, self.sleep = attempts, backoff, max_backoff, sleep
        self.retries = 0  # how many calls were repeated (tests and logs read it)

    def _retry(self, fn: Callable, *args):
        wait = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                return fn(*args)
            except (ObjectNotFound, ObjectLocked):  # answers, not outages
                raise
            except SiteError:
                if attempt == self.attempts:
                    raise
            self.retries += 1
            self.sleep(wait)
            wait = min(wait * 2, self.max_backoff)
        raise AssertionError("unreachable")

    def writer(self, key: str) -> Writer:
        return self._retry(self.inner.writer, key)

    def get(self, key: str) -> BinaryIO:
        return self._retry(self.inner.get, key)

    def head(self, key: str) -> ObjectInfo | None:
        return self._retry(self.inner.head, key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Drivers may list lazily (S3 pages): the whole listing is one attempt.
        return iter(self._retry(lambda p: list(self.inner.list(p)), prefix))

    def delete(self, key: str) -> None:
        self._retry(self.inner.delete, key)

    def list_temporaries(self, prefix: str = "") -> list[str]:
        return self._retry(self.inner.list_temporaries, prefix)


# -- fault injection (tests)


@dataclass(frozen=True)
class Call:
    """One storage call as FaultySite's predicates see it: its 1-based position among the
    site's calls, the operation and the key (or prefix).

    Operations: writer, write, commit, abort (of a writer, key = the writer's key), get, read
    (one read of a stream that get returned), head, list, delete, list_temporaries."""

    n: int
    op: str
    key: str


Predicate = Callable[[Call], bool]


def nth(n: int, op: str | None = None) -> Predicate:
    """Matches the call at position ``n`` (counting only ``op`` calls if given, from 1). With
    ``op`` it counts the ``op`` calls it is shown, so use a fresh predicate for each run; without
    it compares ``Call.n``, which restarts when ``FaultySite.reset()`` is called."""
    seen = {"count": 0}
    lock = threading.Lock()

    def match(call: Call) -> bool:
        if op is None:
            return call.n == n
        if call.op != op:
            return False
        with lock:
            seen["count"] += 1
            return seen["count"] == n
    return match


def on(op: str, key_contains: str = "") -> Predicate:
    """Matches every ``op`` call whose key contains ``key_contains``."""
    return lambda call: call.op == op and key_contains in call.key


class FaultySite(SiteWrapper):
    """A site that misbehaves on purpose. Every fault is chosen by a predicate over Call and may
    be changed between runs (set the attribute, e.g. ``site.fail_on = None`` for a clean re-run).

    - ``fail_on``: the call raises SiteUnreachable, the error a real outage raises. By default
      the call is not applied (the request never arrived); with ``applied=True`` a commit or
      delete is applied first and then fails (the answer was lost: the outcome is unknown to the
      caller). A failed ``abort`` raises nothing but leaves the inner writer open: a lost abort
      leaves a temporary behind, as a crash does.
    - ``corrupt_reads``: a stream opened by a matching ``get`` has one byte flipped (at
      ``flip_offset``, or the last byte of a shorter object).
    - ``delay`` seconds before every call matching ``slow_on`` (all calls if None): a slow site
      (``sleep`` is injectable so a test can see the waits without timing them).
    - ``hang_on``: a matching call blocks until ``release`` (a threading.Event) is set;
      ``hanging`` is set while one waits, so a test can wait for it before releasing.
    """

    def __init__(self, inner: Site, *, fail_on: Predicate | None = None, applied: bool = False,
                 corrupt_reads: Predicate | None = None, flip_offset: int = 0,
                 delay: float = 0.0, slow_on: Predicate | None = None,
                 hang_on: Predicate | None = None, release: threading.Event | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        super().__init__(inner)
        self.fail_on, self.applied = fail_on, applied
        self.corrupt_reads, self.flip_offset = corrupt_reads, flip_offset
        self.delay, self.slow_on, self.sleep = delay, slow_on, sleep
        self.hang_on, self.release = hang_on, release or threading.Event()
        self.hanging = threading.Event()
        self.calls: list[tuple[str, str]] = []
        self.failures: list[Call] = []  # the calls that were made to fail
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Forget the recorded calls and failures (the faults stay as set)."""
        with self._lock:
            self.calls.clear()
            self.failures.clear()

    def _enter(self, op: str, key: str) -> Call:
        """Record the call, be slow or hang if asked; return it (``_fails`` decides failure)."""
        with self._lock:
            self.calls.append((op, key))
            call = Call(len(self.calls), op, key)
        if self.delay and (self.slow_on is None or self.slow_on(call)):
            self.sleep(self.delay)  # the fault itself (a slow site), not synchronisation
        if self.hang_on is not None and self.hang_on(call):
            self.hanging.set()
            self.release.wait()
        return call

    def _fails(self, call: Call) -> bool:
        if self.fail_on is None or not self.fail_on(call):
            return False
        with self._lock:
            self.failures.append(call)
        return True

    def _fault(self, call: Call) -> SiteUnreachable:
        return SiteUnreachable(f"site {self.name!r}: injected fault at call {call.n} ({call.op} {call.key!r})",
                               "a test made this call fail (pgvault.sites.wrappers.FaultySite)")

    def _plain(self, op: str, key: str, fn: Callable, *args, applies: bool = False):
        call = self._enter(op, key)
        if self._fails(call):
            if applies and self.applied:
                fn(*args)
            raise self._fault(call)
        return fn(*args)

    def writer(self, key: str) -> Writer:
        inner = self._plain("writer", key, self.inner.writer, key)
        return _FaultyWriter(self, key, inner)

    def get(self, key: str) -> BinaryIO:
        call = self._enter("get", key)
        if self._fails(call):
            raise self._fault(call)
        stream = self.inner.get(key)
        flip_at = None
        if self.corrupt_reads is not None and self.corrupt_reads(call):
            info = self.inner.head(key)  # not a recorded call: the fault's own bookkeeping
            flip_at = min(self.flip_offset, info.size - 1) if info else self.flip_offset
        return io.BufferedReader(_FaultyReader(self, key, stream, flip_at), buffer_size=1 << 20)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        return self._plain("create_exclusive", key, self.inner.create_exclusive, key, data, applies=True)

    def head(self, key: str) -> ObjectInfo | None:
        return self._plain("head", key, self.inner.head, key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return iter(self._plain("list", prefix, lambda p: list(self.inner.list(p)), prefix))

    def delete(self, key: str) -> None:
        self._plain("delete", key, self.inner.delete, key, applies=True)

    def list_temporaries(self, prefix: str = "") -> list[str]:
        return self._plain("list_temporaries", prefix, self.inner.list_temporaries, prefix)


class _FaultyWriter(WriterMixin):
    def __init__(self, site: FaultySite, key: str, inner: Writer):
        self.site, self.key, self.inner = site, key, inner

    def write(self, data: bytes) -> None:
        self.site._plain("write", self.key, self.inner.write, data)

    def commit(self) -> None:
        call = self.site._enter("commit", self.key)
        if self.site._fails(call):
            if self.site.applied:
                self.inner.commit()
            else:
                self.inner.abort()  # the request never arrived: nothing becomes visible
            raise self.site._fault(call)
        self.inner.commit()

    def abort(self) -> None:
        call = self.site._enter("abort", self.key)
        if self.site._fails(call):
            return  # lost: the inner writer stays open, a temporary as a crash leaves one
        self.inner.abort()


class _FaultyReader(io.RawIOBase):
    def __init__(self, site: FaultySite, key: str, stream: BinaryIO, flip_at: int | None):
        self.site, self.key, self.stream, self.flip_at = site, key, stream, flip_at
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        call = self.site._enter("read", self.key)
        if self.site._fails(call):
            raise self.site._fault(call)
        data = self.stream.read(len(b))
        if self.flip_at is not None and self.pos <= self.flip_at < self.pos + len(data):
            data = bytearray(data)
            data[self.flip_at - self.pos] ^= 0x01
            self.flip_at = None
        n = len(data)
        b[:n] = data
        self.pos += n
        return n

    def close(self) -> None:
        try:
            self.stream.close()
        finally:
            super().close()
