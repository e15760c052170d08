"""wal-push: make a WAL file durable at every site of ``wal.sites`` (or in the spool for a
site that is down), in Barman's cloud layout, refusing foreign or conflicting WAL.

One invocation ships a batch: the file PostgreSQL asked for plus up to ``wal.batch - 1``
others already marked ``.ready`` in pg_wal/archive_status. Each of those others is marked
``.done`` only once it is as durable as the one asked for; PostgreSQL's archiver (15+)
re-checks a ``.ready`` file before archiving it and skips one already marked done.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..catalog import layout
from ..errors import ClusterMismatch, PgvaultError, SiteError, UsageError
from . import WalConflict, codec, names, pgdata_of, spool_dir
from .spool import Spool

log = logging.getLogger("pgvault.wal")

# Page-header magic -> PostgreSQL major (used to bind a cluster at a site on first push).
MAGIC_MAJOR = {0xD106: 13, 0xD10D: 14, 0xD110: 15, 0xD113: 16, 0xD116: 17, 0xD118: 18}
DRAIN_PER_PUSH = 64


@dataclass
class Item:
    """One WAL file on its way: raw bytes, compressed blob, and what each site did with it."""

    name: str
    stored: str
    blob_future: Future | None = None
    blob: bytes | None = None
    raw: bytes | None = None
    error: PgvaultError | None = None
    left: int = 0                                 # site tasks still running for it
    stored_at: set = field(default_factory=set)   # sites that hold it now
    spool_for: set = field(default_factory=set)   # sites that failed: owed through the spool

    def data(self) -> bytes:
        if self.blob is None and self.blob_future is not None:
            self.blob = self.blob_future.result()
        return self.blob

    def content(self, compression: str) -> bytes:
        if self.raw is None:
            self.raw = codec.decompress(self.data(), compression)
        return self.raw


@dataclass
class PushResult:
    items: list[Item]
    drained: dict[str, int]

    @property
    def requested(self) -> Item:
        return self.items[0]


def stored_variants(site, cluster: str, name: str) -> list[str]:
    """Keys under which ``site`` already holds ``name`` (any compression suffix)."""
    keys = [layout.wal_key(cluster, name, s) for s in names.SUFFIXES.values()]
    if hasattr(site, "local_path"):  # a stat per variant is cheaper than walking the directory
        return [k for k in keys if site.head(k) is not None]
    base = layout.wal_key(cluster, name)
    return [o.key for o in site.list(base) if o.key in keys]


class Archiver:
    def __init__(self, policy, *, sites: dict | None = None, spool: Spool | None = None):
        from ..sites import open_sites

        self.policy = policy
        self.cluster = policy.cluster.name
        self.compression = policy.wal.compression
        self.suffix = names.SUFFIXES[self.compression]
        self.sites = sites if sites is not None else open_sites(policy, policy.wal.sites)
        if not self.sites:
            raise UsageError("no WAL sites configured", "list the sites that receive WAL under wal.sites in the policy")
        self.spool = spool or Spool(spool_dir(policy))
        self.retry = policy.wal.retry_interval.total_seconds()
        self._lock = threading.Lock()
        self._identity: dict | None = None
        self._failed: dict[str, str] = {}

    # -- identity: the system identifier every pushed file must carry
    def identity(self) -> dict:
        with self._lock:
            if self._identity is None:
                try:
                    self._identity = self.spool.identity()
                except OSError:
                    self._identity = {}
            return self._identity

    def expected_sysid(self) -> str | None:
        ident = self.identity()
        if ident.get("system_identifier"):
            return ident["system_identifier"]
        from ..catalog.catalog import Catalog

        for name, site in self.sites.items():
            try:
                b = Catalog(site, self.cluster).binding()
            except (SiteError, OSError):
                continue
            if b is not None:
                self._remember(system_identifier=b.system_identifier)
                return b.system_identifier
        return None

    def _remember(self, *, system_identifier: str | None = None, bound: str | None = None) -> None:
        with self._lock:
            ident = dict(self._identity or {})
            if system_identifier:
                ident["system_identifier"] = system_identifier
            if bound:
                ident.setdefault("bound", [])
                if bound not in ident["bound"]:
                    ident["bound"].append(bound)
            self._identity = ident
            try:
                self.spool.save_identity(ident)
            except OSError as exc:  # a cache: losing it costs a read of cluster.json, nothing more
                log.debug("cannot save the identity cache: %s", exc)

    def ensure_bound(self, site, sysid: str, pg_major: int, segsize: int) -> None:
        """Bind the cluster at a site on first use, or check the binding (once, then cached)."""
        key = site.describe()
        if key in self.identity().get("bound", []):
            return
        from ..catalog.catalog import Catalog

        Catalog(site, self.cluster).bind(sysid, pg_major, segsize)
        self._remember(bound=key)

    # -- reading and checking one file
    def load(self, path: Path, sysid: str | None) -> tuple[bytes, names.PageHeader | None]:
        name = path.name
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise UsageError(f"WAL file {path} does not exist",
                             "archive_command must be 'pgvault wal-push %p' (PostgreSQL runs it in the data directory)") from None
        if not names.has_header(name):
            return raw, None
        try:
            hdr = names.parse_header(raw)
        except ValueError as exc:
            raise PgvaultError(f"{path} is not a valid WAL segment: {exc}",
                               "the file is damaged or not WAL; it was not archived") from None
        problem = names.check_header(name, hdr)
        if problem:
            raise PgvaultError(f"{path}: {problem}", "the file is damaged or misnamed; it was not archived")
        if kind_is_segment(name) and len(raw) != hdr.segment_size:
            raise PgvaultError(f"{path} is {len(raw)} bytes, but its header says segments are {hdr.segment_size}",
                               "the file is truncated; it was not archived")
        if sysid is not None and str(hdr.system_identifier) != sysid:
            raise ClusterMismatch(
                f"{name} belongs to system identifier {hdr.system_identifier}, but cluster {self.cluster!r} "
                f"is bound to {sysid} at its sites",
                "WAL of another cluster must not enter this archive: give that cluster its own cluster.name "
                "(and policy); if this cluster was re-created on purpose, archive it under a new name")
        return raw, hdr

    # -- one site
    def ship(self, site, item: Item, bind: tuple) -> str:
        """Put ``item`` at ``site`` unless an identical copy is there; refuse a different one."""
        self.ensure_bound(site, *bind)
        existing = stored_variants(site, self.cluster, item.name)
        if existing:
            from ..sites.base import get_bytes

            for key in existing:
                other = get_bytes(site, key)
                try:
                    same = codec.decompress(other, names.split_stored(key.rsplit("/", 1)[1])[1]) == \
                        item.content(self.compression)
                except codec.CorruptWal:
                    same = False
                if same:
                    return "present"
            raise WalConflict(
                f"site {site.name!r} already holds {item.name} with different content ({existing[0]}); "
                f"nothing was overwritten",
                "two clusters or timelines are archiving under one name, or the stored copy is damaged: "
                "check `pgvault wal-status` and the cluster's history before removing anything")
        from ..sites.base import put_bytes

        put_bytes(site, layout.wal_key(self.cluster, item.name, self.suffix), item.data())
        return "stored"

    def _prepare(self, path: Path, sysid: str) -> bytes:
        raw, _hdr = self.load(path, sysid)
        return codec.compress(raw, self.compression)

    def _site_task(self, sname: str, item: Item, bind: tuple) -> None:
        try:
            self._ship_or_spool(sname, item, bind)
        finally:
            with self._lock:
                item.left -= 1
                if item.left == 0 and not item.spool_for:
                    item.blob = item.blob_future = None  # every site has it: free the memory

    def _ship_or_spool(self, sname: str, item: Item, bind: tuple) -> None:
        try:
            item.data()
        except PgvaultError as exc:  # a batch member that failed its checks: not shipped anywhere
            with self._lock:
                item.error = item.error or exc
            return
        if sname in self._failed:
            with self._lock:
                item.spool_for.add(sname)
            return
        try:
            self.ship(self.sites[sname], item, bind)
            with self._lock:
                item.stored_at.add(sname)
        except (WalConflict, ClusterMismatch) as exc:
            with self._lock:
                item.error = item.error or exc
        except (SiteError, OSError) as exc:
            msg = getattr(exc, "message", None) or str(exc)
            log.warning("site %r failed for %s: %s", sname, item.name, msg)
            with self._lock:
                self._failed.setdefault(sname, msg)
                item.spool_for.add(sname)

    # -- the whole push
    def push(self, path: str | os.PathLike, *, batch: int | None = None) -> PushResult:
        path = Path(path)
        batch = batch or self.policy.wal.batch
        stale = path.parent / ".pgvault-prefetch"
        if stale.is_dir():  # left by a recovery that ended at its target: this cluster archives now
            import shutil

            shutil.rmtree(stale, ignore_errors=True)
        paths = [path] + ready_neighbours(path, batch - 1)
        sysid = self.expected_sysid()
        pgdata = pgdata_of(path)

        now = time.time()
        resting = {s for s in self.sites if self.spool.is_resting(s, now)}
        if resting == set(self.sites):
            resting = set()  # every site is down: trying costs nothing, waiting helps no one
        self._failed = {s: "resting after a failure" for s in resting}
        self._prepare_clients()

        items: list[Item] = []
        with ThreadPoolExecutor(2, thread_name_prefix="wal-compress") as cpool:
            # The file asked for is read here first: its header settles the identity when
            # neither the cache nor any site knows it yet (the very first push).
            raw, hdr0 = self.load(path, sysid)
            if sysid is None:
                sysid = str(hdr0.system_identifier) if hdr0 else control_sysid(pgdata)
            if sysid is None:
                raise UsageError(f"cannot tell which cluster {path.name} belongs to",
                                 "push a WAL segment first, or run `pgvault check` to bind the cluster at its sites")
            first = Item(path.name, path.name + self.suffix)
            first.blob_future = cpool.submit(codec.compress, raw, self.compression)
            del raw
            items.append(first)
            for p in paths[1:]:
                it = Item(p.name, p.name + self.suffix)
                it.blob_future = cpool.submit(self._prepare, p, sysid)
                items.append(it)
            bind = (sysid, pg_major(hdr0, pgdata), hdr0.segment_size if hdr0 else 16 << 20)
            self._run(items, bind)
        for it in items:
            if not it.stored_at and not it.error:
                it.error = SiteError(
                    f"{it.name} was not archived: no site accepted it ({'; '.join(f'{s}: {m}' for s, m in sorted(self._failed.items()))})",
                    "PostgreSQL keeps the file and retries; check the sites with `pgvault check`")
            if it.error is None and it.spool_for:
                self.spool.enqueue(it.stored, it.data(), sorted(it.spool_for))
        self._update_breakers(now)
        drained = self.drain(bind, limit=DRAIN_PER_PUSH)
        for it in items[1:]:
            if it.error is None:
                mark_done(path.parent, it.name)
            else:  # PostgreSQL will ask for it again, alone, and then the error is its answer
                log.warning("%s", it.error.message)
        log.info("wal-push %s: %d file(s) in %.2fs, %d spooled, %s drained", path.name, len(items),
                 time.time() - now, sum(1 for i in items if i.spool_for), sum(drained.values()))
        return PushResult(items, drained)

    def _prepare_clients(self) -> None:
        # boto3 client creation is not thread-safe: build each S3 client here, once.
        for name, site in self.sites.items():
            if name not in self._failed and hasattr(site, "client"):
                site.client  # noqa: B018

    def _run(self, items: list[Item], bind: tuple) -> None:
        pools = {s: ThreadPoolExecutor(4, thread_name_prefix=f"wal-{s}") for s in self.sites}
        try:
            for it in items:
                it.left = len(self.sites)
            futures = [pools[s].submit(self._site_task, s, it, bind) for it in items for s in self.sites]
            for f in futures:
                f.result()
        finally:
            for p in pools.values():
                p.shutdown(wait=True)

    def _update_breakers(self, now: float) -> None:
        for s in self.sites:
            if s in self._failed:
                if self._failed[s] != "resting after a failure":
                    self.spool.mark_down(s, self._failed[s], self.retry, now)
            elif self.spool.site_state(s):
                self.spool.mark_up(s)

    def drain(self, bind: tuple | None = None, *, limit: int | None = None, sites: list[str] | None = None) -> dict[str, int]:
        """Ship spooled backlog to sites that are up; returns files delivered per site."""
        out: dict[str, int] = {}
        for sname in sites or self.spool.sites_with_backlog():
            if sname not in self.sites or sname in self._failed:
                continue
            pending = self.spool.backlog(sname)[:limit]
            n = 0
            for stored in pending:
                data = self.spool.read(stored)
                if data is None:  # delivered by a concurrent drain
                    self.spool.delivered(sname, stored)
                    continue
                name = names.split_stored(stored)[0]
                it = Item(name, stored, blob=data)
                if bind is None:
                    bind = self._bind_from_blob(it)
                self._site_task(sname, it, bind)
                if it.error:
                    log.error("%s", it.error.message)
                    continue
                if sname in self._failed:
                    self.spool.mark_down(sname, self._failed[sname], self.retry)
                    break
                self.spool.delivered(sname, stored)
                n += 1
            if n:
                out[sname] = n
        return out

    def _bind_from_blob(self, it: Item) -> tuple:
        sysid = self.expected_sysid()
        hdr = None
        if names.has_header(it.name):
            hdr = names.parse_header(it.content(names.split_stored(it.stored)[1]))
            sysid = sysid or str(hdr.system_identifier)
        return (sysid, pg_major(hdr, None), hdr.segment_size if hdr else 16 << 20)


def kind_is_segment(name: str) -> bool:
    return names.kind(name) == "segment"


def ready_neighbours(path: Path, limit: int) -> list[Path]:
    """Other files PostgreSQL has marked ready to archive, in the archiver's own order."""
    status = path.parent / "archive_status"
    if limit <= 0 or not status.is_dir():
        return []
    try:
        ready = [f[:-6] for f in os.listdir(status) if f.endswith(".ready")]
    except OSError:
        return []
    ready = sorted((n for n in ready if n != path.name and names.is_wal_name(n)), key=names.sort_key)
    return [path.parent / n for n in ready[:limit]]


def mark_done(pg_wal: Path, name: str) -> None:
    """Tell PostgreSQL a file is archived (what its archiver does after archive_command)."""
    status = pg_wal / "archive_status"
    try:
        os.rename(status / f"{name}.ready", status / f"{name}.done")
    except FileNotFoundError:
        pass


def control_sysid(pgdata: Path | None) -> str | None:
    """The system identifier from global/pg_control (its first field, a uint64)."""
    if pgdata is None:
        return None
    try:
        with open(pgdata / "global" / "pg_control", "rb") as fh:
            return str(int.from_bytes(fh.read(8), "little"))
    except OSError:
        return None


def pg_major(hdr: names.PageHeader | None, pgdata: Path | None) -> int:
    if hdr is not None and hdr.magic in MAGIC_MAJOR:
        return MAGIC_MAJOR[hdr.magic]
    if pgdata is not None:
        try:
            return int((pgdata / "PG_VERSION").read_text().strip())
        except (OSError, ValueError):
            pass
    return 0
