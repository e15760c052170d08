"""A complete site driver in memory, for tests in one process (the conformance suite, fault
sweeps behind pgvault.sites.wrappers). It is deliberately not in the registry a policy reads:
every pgvault command is its own process (the tick's jobs, archive_command's wal-push), so a
``type: memory`` site would accept backups that vanish when the process exits. Tests put it in
place of a configured site with ``pgvault.sites.wrapping``.

It keeps the contract of pgvault.sites.base exactly: a writer's bytes become visible only at
``commit()``, at once; an open writer is a temporary (``list_temporaries``) and never listed;
keys are checked like the local driver's. One lock guards the store: threads may share it."""
from __future__ import annotations

import io
import threading
import time
from typing import BinaryIO, Iterator

from ..errors import ObjectNotFound, SiteError
from .base import Capabilities, ObjectInfo, WriterMixin


class _MemoryWriter(WriterMixin):
    def __init__(self, site: "MemorySite", key: str):
        self.site = site
        self.key = key
        self.buf = bytearray()
        self.done = False
        with site._lock:
            site._open[id(self)] = key

    def write(self, data: bytes) -> None:
        if self.done:
            raise SiteError(f"site {self.site.name!r}: write to {self.key!r} after commit or abort")
        self.buf += data

    def commit(self) -> None:
        if self.done:
            return
        with self.site._lock:
            self.site._objects[self.key] = (bytes(self.buf), time.time())
            self.site._open.pop(id(self), None)
        self.done = True

    def abort(self) -> None:
        if self.done:
            return
        self.done = True
        with self.site._lock:
            self.site._open.pop(id(self), None)
        self.buf = bytearray()


class MemorySite:
    def __init__(self, name: str = "memory"):
        self.name = name
        self._lock = threading.Lock()
        self._objects: dict[str, tuple[bytes, float]] = {}
        self._open: dict[int, str] = {}  # writers not yet committed or aborted: the temporaries
        self.capabilities = Capabilities(cheap_head=True, lists_temporaries=True)

    def _check(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise SiteError(f"site {self.name!r}: invalid key {key!r}")
        return key

    # -- the contract
    def writer(self, key: str) -> _MemoryWriter:
        return _MemoryWriter(self, self._check(key))

    def create_exclusive(self, key: str, data: bytes) -> bool:
        self._check(key)
        with self._lock:
            if key in self._objects:
                return False
            self._objects[key] = (bytes(data), time.time())
        return True

    def get(self, key: str) -> BinaryIO:
        with self._lock:
            found = self._objects.get(key)
        if found is None:
            raise ObjectNotFound(self.name, key)
        return io.BytesIO(found[0])

    def head(self, key: str) -> ObjectInfo | None:
        with self._lock:
            found = self._objects.get(key)
        return ObjectInfo(key, len(found[0]), found[1]) if found else None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._lock:
            found = [ObjectInfo(k, len(d), t) for k, (d, t) in self._objects.items() if k.startswith(prefix)]
        return iter(sorted(found, key=lambda o: o.key))

    def delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(key, None)

    def list_temporaries(self, prefix: str = "") -> list[str]:
        with self._lock:
            return sorted(k for k in self._open.values() if k.startswith(prefix))

    def on_response(self, callback) -> None:
        """Nothing to report: a call here cannot hang on a network."""

    def describe(self) -> str:
        return f"memory:{self.name}"
