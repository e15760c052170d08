"""The Site contract: a handful of primitives every driver implements identically.

- ``writer(key)`` returns a Writer; bytes written to it become visible under ``key`` only when
  ``commit()`` returns, all at once. ``abort()`` (or an exception inside ``with``) leaves nothing
  under ``key``. Committing over an existing key replaces it atomically (callers that must not
  overwrite use ``create_exclusive``, or check first).
- ``create_exclusive(key, data)`` makes the small object ``data`` visible under ``key`` only if
  no object is there, at once and whole: True if this call created it, False if one was there
  (left as it was). Two calls racing for one key: exactly one gets True, wherever the store
  offers the test-and-set (local: link(2) of a finished temp file; S3: PutObject with
  ``If-None-Match: *``; memory: under its lock). Not idempotent — a call repeated after a lost
  answer sees its own object and gets False — so it is never retried by a wrapper; callers who
  must know put something unique in ``data`` and read it back.
- ``get(key)`` returns a readable binary stream; a missing key raises ``ObjectNotFound`` on
  every driver.
- ``list(prefix)`` yields ObjectInfo for every committed object whose key starts with prefix,
  in key order; temporary/in-flight data is never listed.
- ``delete(key)`` is idempotent: deleting a missing key succeeds.
- ``list_temporaries(prefix)`` names in-flight or crashed writes (debris) under prefix, for
  verify and cleanup; a driver that cannot see them returns [] and says so in its capabilities.
- ``describe()`` names the location without credentials.
- ``capabilities`` declares what the driver offers beyond these primitives (see Capabilities).
  Callers ask it; they never sniff a driver's attributes or compare site types as strings.

Each site configuration gives ``location_key()``, a (space, path parts) pair: two sites overlap
when their spaces are equal and one's parts start with the other's (see ``overlaps``).

Drivers make their own lazy set-up thread-safe (the S3 client): callers may share a Site
between threads without preparing it.

Hashing and compression are stream wrappers above this (pgvault.catalog.streams); retry and
fault injection are Sites that wrap a Site (pgvault.sites.wrappers); pgvault.sites.memory is a
complete driver in memory, for tests in one process.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator, Protocol

from ..errors import ObjectNotFound

CHUNK = 1 << 20


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float  # seconds since the epoch


@dataclass(frozen=True)
class BarmanCloud:
    """Where barman-cloud-* tools reach a site: the site's URL as they write it, the
    ``--cloud-provider``, the endpoint and the environment to run them in. Credentials are never
    here: the tools take them from the same standard chain as pgvault (environment, profile,
    role); ``env`` holds only non-secret settings such as the region."""

    url: str                            # e.g. s3://bucket/prefix (no trailing slash)
    provider: str                       # barman's --cloud-provider: aws-s3, google-cloud-storage, ...
    endpoint_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def argv(self) -> list[str]:
        """The provider and endpoint arguments every barman-cloud tool takes.

        >>> BarmanCloud("s3://b", "aws-s3", "http://127.0.0.1:9000").argv()
        ['--cloud-provider', 'aws-s3', '--endpoint-url', 'http://127.0.0.1:9000']
        """
        return ["--cloud-provider", self.provider] + (["--endpoint-url", self.endpoint_url] if self.endpoint_url else [])


@dataclass(frozen=True)
class Capabilities:
    """What a driver offers beyond the primitives. Each field names what callers need it for."""

    # The object under ``key`` is the plain file ``local_root / key`` on this host: hard links
    # (the WAL spool links a committed file instead of copying it) and tools that need a
    # directory (a Barman server's home).
    local_root: Path | None = None
    # barman-cloud-* can reach the site (Barman's cloud layout is kept there).
    barman_cloud: BarmanCloud | None = None
    # ``head`` costs a local lookup, not a network round trip: probing a few keys one by one is
    # cheaper than one listing (WAL variants, a spool backlog). False: prefer one list().
    cheap_head: bool = False
    # ``list_temporaries`` sees in-flight and crashed writes.
    lists_temporaries: bool = False
    # The store can copy an object without the bytes passing through pgvault. No driver offers
    # a primitive for it yet: the field exists so one can be added without sniffing.
    server_side_copy: bool = False
    # Every object is written immutable until a retain-until date (S3 Object Lock): expiry asks
    # ``locked_until(key)`` before deleting and never tries a locked object; `check` asks
    # ``lock_enabled()`` of the bucket. None: objects are deletable at once.
    object_lock: "LockTerms | None" = None


# The write probe of `pgvault check` (``…/.probe-<random>``): written and deleted at once, so a
# locking site writes it unlocked (a locked probe could not be deleted for the retain period).
PROBE_MARK = "/.probe-"


@dataclass(frozen=True)
class LockTerms:
    """How a site locks what it writes: ``mode`` governance|compliance, for ``retain`` seconds."""

    mode: str
    retain: float


def overlaps(a: tuple, b: tuple) -> bool:
    """Whether two ``location_key()`` values name nested or equal places.

    >>> overlaps((("local",), ("srv", "a")), (("local",), ("srv", "a", "b")))
    True
    >>> overlaps((("local",), ("srv", "a")), (("local",), ("srv", "ab")))
    False
    >>> overlaps((("s3", None, "b1"), ()), (("s3", None, "b2"), ()))
    False
    """
    (space_a, parts_a), (space_b, parts_b) = a, b
    n = min(len(parts_a), len(parts_b))
    return space_a == space_b and parts_a[:n] == parts_b[:n]


def path_parts(path: str) -> tuple[str, ...]:
    """A path or key prefix as its components (no empty ones).

    >>> path_parts("/srv//a/b/")
    ('srv', 'a', 'b')
    """
    return tuple(p for p in path.split("/") if p and p != ".")


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


class Site(Protocol):
    name: str

    def writer(self, key: str) -> Writer: ...
    def create_exclusive(self, key: str, data: bytes) -> bool: ...
    def get(self, key: str) -> BinaryIO: ...
    def head(self, key: str) -> ObjectInfo | None: ...
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...
    def delete(self, key: str) -> None: ...
    def list_temporaries(self, prefix: str = "") -> list[str]: ...
    def describe(self) -> str: ...

    # Only for a site whose capabilities declare ``object_lock``:
    #   locked_until(key) -> float | None   the retain-until time (epoch seconds) of the
    #                                       object's current version, None if unlocked or absent
    #   lock_enabled() -> bool              the bucket has Object Lock enabled
    # ``callback()`` after every response the storage sends: a sign of life that lets a
    # read-only probe tell a slow, answering site from a partitioned one (sites/readonly.py).
    def on_response(self, callback) -> None: ...

    @property
    def capabilities(self) -> Capabilities: ...


class WriterMixin:
    """Context-manager behaviour shared by drivers' writers: commit on success, abort on error."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False


def put_bytes(site: Site, key: str, data: bytes) -> None:
    w = site.writer(key)
    try:
        w.write(data)
    except BaseException:
        w.abort()
        raise
    w.commit()


def put_stream(site: Site, key: str, stream: BinaryIO) -> int:
    w = site.writer(key)
    n = 0
    try:
        while chunk := stream.read(CHUNK):
            w.write(chunk)
            n += len(chunk)
    except BaseException:
        w.abort()
        raise
    w.commit()
    return n


def get_bytes(site: Site, key: str) -> bytes:
    with site.get(key) as fh:
        return fh.read()


def exists(site: Site, key: str) -> bool:
    return site.head(key) is not None


def get_or_none(site: Site, key: str) -> bytes | None:
    try:
        return get_bytes(site, key)
    except ObjectNotFound:
        return None


class ClosingBytesIO(io.BytesIO):
    pass
