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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..catalog import layout
from ..errors import ClusterMismatch, PgvaultError, SiteError, UsageError
from . import WalConflict, codec, divergence, names, pgdata_of, spool_dir
from .pgwal import control_sysid, is_segment, mark_done, pg_major, ready_neighbours
from .item import Item, PushResult, read_wal, stored_variants
from .spool import Spool
from .workers import DaemonPool

log = logging.getLogger("pgvault.wal")

DRAIN_PER_PUSH = 64
SHIP_WORKERS = 4     # requests in flight per site while shipping a backlog


def _import_crypto() -> None:
    from ..crypt import age

    age.warm()


def _have_identity() -> bool:
    from ..crypt import keys

    return bool(keys.identities())


class Archiver:
    def __init__(self, policy, *, sites: dict | None = None, spool: Spool | None = None):
        from ..sites import open_sites

        self.policy = policy
        self.cluster = policy.cluster.name
        self.compression = policy.wal.compression
        self.suffix = names.SUFFIXES[self.compression]
        self.sites = sites if sites is not None else open_sites(policy, policy.wal.sites)
        self.recipients = {s: policy.recipients(s) for s in self.sites}
        if any(self.recipients.values()):
            # The crypto library takes longer to import than a segment takes to compress: do it
            # while the first segment is read and compressed (zstd releases the GIL).
            threading.Thread(target=_import_crypto, name="wal-crypto-import", daemon=True).start()
        if not self.sites:
            raise UsageError("no WAL sites configured", "list the sites that receive WAL under wal.sites in the policy")
        self.spool = spool or Spool(spool_dir(policy))
        self.retry = policy.wal.retry_interval.total_seconds()
        self._lock = threading.Lock()
        self._identity: dict | None = None
        self._failed: dict[str, str] = {}
        self._pools: dict[str, DaemonPool] = {}
        self._bind: tuple | None = None
        self._refused: dict[str, set] = {}  # site -> spooled files it refused (a conflict)
        self.before_deliver = None  # the background shipper's hook: yield to a running wal-push
        self._fork_cache: dict[str, divergence.Forks] = {}  # per site: histories above a timeline
        self._sender: dict | None = None  # who sends (evidence of a quarantine), found on first need
        self._live: tuple | None = None  # (timeline, leader) when Patroni and SQL agree; asked once, on first need
        self._live_asked = False
        self._pgdata: Path | None = None

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

    def ensure_bound(self, site, bind) -> None:
        """Bind the cluster at a site on first use, or check the binding (once, then cached).
        ``bind`` is (sysid, pg_major, segsize), or a callable returning it (computed only when
        the site is not known to be bound yet)."""
        key = site.describe()
        if key in self.identity().get("bound", []):
            return
        from ..catalog.catalog import Catalog

        sysid, major, segsize = bind() if callable(bind) else bind
        Catalog(site, self.cluster).bind(sysid, major, segsize)
        self._remember(bound=key)

    # -- reading and checking one file
    def load(self, path: Path, sysid: str | None) -> tuple["bytes | mmap.mmap", names.PageHeader | None]:
        name = path.name
        try:
            raw = read_wal(path)
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
        if is_segment(name) and len(raw) != hdr.segment_size:
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
    def ship(self, site, item: Item, bind: tuple, listing: set | None = None) -> str:
        """Put ``item`` at ``site`` unless an identical copy is there; refuse a different one.
        ``listing``: the keys of the file's directory at the site, listed once for a whole
        backlog (saves a LIST request per file at an S3 site)."""
        self.ensure_bound(site, bind)
        if listing is not None:
            existing = [k for k in (layout.wal_key(self.cluster, item.name, x) for x in names.SUFFIXES.values())
                        if k in listing]
        else:
            existing = stored_variants(site, self.cluster, item.name)
        if existing:
            from ..sites.base import get_bytes

            for key in existing:
                other = get_bytes(site, key)
                if codec.is_sealed(other) and not _have_identity():
                    # The pushing host holds only public keys: it cannot compare an encrypted
                    # copy. Re-archiving a file already stored (a crash between the upload and
                    # PostgreSQL's .done) is the case that reaches here; WAL of another cluster
                    # is refused earlier by the system identifier bound at the site.
                    log.info("site %r already holds %s encrypted (%s); not compared (no identity here)",
                             site.name, item.name, key)
                    return "present"
                try:
                    same = codec.decompress(other, names.split_stored(key.rsplit("/", 1)[1])[1]) == \
                        item.content(self.compression)
                except codec.CorruptWal:
                    same = False
                if same or self._same_before_fork(site, item, other, key):
                    return "present"
            # Kept as evidence (the archive's copy stays what recovery reads): see divergence.py.
            self._quarantine(site, item, "conflict", None, note=f"the archive holds {existing[0]}")
            raise WalConflict(
                f"site {site.name!r} already holds {item.name} with different content ({existing[0]}); "
                f"nothing was overwritten",
                "two clusters or timelines are archiving under one name, or the stored copy is damaged: "
                "check `pgvault wal-status` and the cluster's history before removing anything")
        if names.kind(item.name) == "segment":
            fork = self._forks(site).fork(names.parse_segment(item.name)[0])
            # (``bind`` may be a callable not yet called: the segment size comes from the header.)
            if fork is not None and divergence.past_fork(item.name, fork, self._segment_size(item)):
                hdr = names.parse_header(item.content(self.compression))
                if divergence.written_past(item.content(self.compression), fork, hdr.segment_size,
                                           hdr.block_size, hdr.magic):
                    live = self._live_timeline()
                    if live is None or live[0] != fork.timeline:
                        evidence = self._quarantine(site, item, "divergent", fork)
                        if stored_variants(site, self.cluster, fork.history):
                            return "quarantined"
                        # Another node's push retired the fork's branch meanwhile (its sweep of
                        # quarantine/ may have run before this evidence existed): stored below.
                        for key in (evidence, evidence[: -len(".json")] + self.suffix):
                            site.delete(key)
                        with self._lock:
                            item.quarantined.discard(site.name)
                        log.info("%s: %s was retired meanwhile; stored after all", item.name, fork.history)
                    else:  # the leader runs on this timeline: the history's branch is the dead one
                        divergence.retire_branches(site, self.cluster, fork.timeline, self._forks(site).histories,
                                                   leader=live[1], who=self._who())
                        with self._lock:
                            self._fork_cache.pop(site.name, None)
        from ..sites.base import put_bytes

        put_bytes(site, layout.wal_key(self.cluster, item.name, self.suffix),
                  item.stored_bytes(self.recipients.get(site.name, ())))
        return "stored"

    def _same_before_fork(self, site, item: Item, other: bytes, key: str) -> bool:
        """The archive's copy differs from this one only past the fork (divergence.same_before_fork)."""
        if names.kind(item.name) != "segment":
            return False
        fork = self._forks(site).fork(names.parse_segment(item.name)[0])
        try:
            theirs = codec.decompress(other, names.split_stored(key.rsplit("/", 1)[1])[1])
        except codec.CorruptWal:
            return False
        if fork is None or not divergence.same_before_fork(item.name, item.content(self.compression), theirs, fork):
            return False
        log.info("%s: the archive's copy differs from this one only past the fork (%s): this node's copy "
                 "ends its timeline there; the archive's stays", item.name, fork.describe())
        return True

    def _segment_size(self, item: Item) -> int:
        try:
            return names.parse_header(item.content(self.compression)).segment_size
        except ValueError:
            return 16 << 20

    def _forks(self, site) -> "divergence.Forks":
        with self._lock:
            if site.name not in self._fork_cache:
                self._fork_cache[site.name] = divergence.Forks(site, self.cluster)
            return self._fork_cache[site.name]

    def _live_timeline(self) -> tuple | None:
        with self._lock:
            if not self._live_asked:
                self._live, self._live_asked = divergence.live_timeline(self.policy), True
            return self._live

    def _who(self) -> dict:
        with self._lock:
            if self._sender is None:
                self._sender = divergence.sender(self._pgdata, self.policy)
            return self._sender

    def _quarantine(self, site, item: Item, reason: str, fork, note: str = "") -> str:
        """Keep ``item`` at ``site`` under quarantine/ with evidence of who sent it; never in wals/."""
        raw = item.content(self.compression)
        try:
            header = names.parse_header(raw) if names.has_header(item.name) else None
        except ValueError:
            header = None
        key = divergence.quarantine(site, self.cluster, item.name, self.suffix,
                                    item.stored_bytes(self.recipients.get(site.name, ())), raw, reason=reason,
                                    header=header, fork=fork, who=self._who(),
                                    segment_size=header.segment_size if header else 16 << 20, note=note)
        with self._lock:
            item.quarantined.add(site.name)
        # stderr goes to the PostgreSQL server log of the node that sent it: the zombie's own log says it.
        log.warning("%s %s: kept out of the archive at site %r, evidence %s%s", item.name,
                    "is past the fork of its timeline (" + fork.describe() + ")" if fork else "conflicts with the archive",
                    site.name, key, "" if reason == "conflict" else
                    "; this server is not the cluster's primary: stop it and pg_rewind or re-clone it")
        return key

    def _prepare(self, path: Path, sysid: str, item: Item) -> bytes:
        raw, _hdr = self.load(path, sysid)
        return self._compress(item, raw)

    def _compress(self, item: Item, raw) -> bytes:
        """Compress, then encrypt once per recipient set of the sites, in the compression
        worker: the site threads only upload."""
        blob = codec.compress(raw, self.compression)
        for rcpts in {r for r in self.recipients.values() if r}:
            item.sealed[rcpts] = codec.seal(blob, rcpts)
        return blob

    def _site_task(self, sname: str, item: Item, bind: tuple) -> None:
        try:
            self._ship_or_spool(sname, item, bind)
        finally:
            with self._lock:
                item.done_sites.add(sname)
                if len(item.done_sites) == len(self.sites) and not item.spool_for:
                    item.blob = item.blob_future = None  # every site has it: free the memory
                    item.sealed = {}

    def _ship_or_spool(self, sname: str, item: Item, bind: tuple, listing: set | None = None) -> None:
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
            self.ship(self.sites[sname], item, bind, listing)
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
        """Ship ``path`` (and ready neighbours), holding the spool's push lock (shared), which
        tells the background shipper that the archiver is busy."""
        from .launch import push_lock

        with push_lock(self.spool):
            return self._push(Path(path), batch)

    def _push(self, path: Path, batch: int | None) -> PushResult:
        batch = batch or self.policy.wal.batch
        if self.compression == "none":
            batch = min(batch, 16)  # uncompressed files owed to a slow site stay in memory: bound it
        stale = path.parent / ".pgvault-prefetch"
        if stale.is_dir():  # left by a recovery that ended at its target: this cluster archives now
            import shutil

            shutil.rmtree(stale, ignore_errors=True)
        paths = [path] + ready_neighbours(path, batch - 1)
        sysid = self.expected_sysid()
        pgdata = pgdata_of(path)
        self._pgdata = pgdata

        now = time.time()
        resting = {s for s in self.sites if self.spool.is_resting(s, now)}
        if resting == set(self.sites):
            resting = set()  # every site is down: trying costs nothing, waiting helps no one
        self._failed = {s: "resting after a failure" for s in resting}
        n_sync = self.sync_count()

        items: list[Item] = []
        stop = time.monotonic() + self.policy.wal.keep_going.total_seconds()
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
            first.blob_future = cpool.submit(self._compress, first, raw)
            del raw
            bind = (sysid, pg_major(hdr0, pgdata), hdr0.segment_size if hdr0 else 16 << 20)
            self._bind = bind
            round_items, todo, seen = [first], paths[1:], {p.name for p in paths}
            while True:
                for p in todo:
                    it = Item(p.name, p.name + self.suffix)
                    it.blob_future = cpool.submit(self._prepare, p, sysid, it)
                    round_items.append(it)
                self._round(round_items, bind, n_sync, path.parent, requested=path.name)
                items += round_items
                # More files waiting (a backlog): another batch in this process, while time is left.
                if batch == 1 or time.monotonic() >= stop or not any(it.stored_at for it in round_items):
                    break  # (a batch no site took: the next would fare no better)
                todo = [p for p in ready_neighbours(path, batch + len(seen)) if p.name not in seen][:batch]
                if not todo:
                    break
                seen.update(p.name for p in todo)
                round_items = []
        self._update_breakers(now)
        if n_sync < len(self.sites):
            from .launch import kick

            # Started once this push is done: its start-up (imports, S3 clients) and its
            # uploads would take CPU from the compression PostgreSQL is waiting on.
            drained = {}
            kick(self.spool, self.policy)
        else:
            drained = self.drain(bind, limit=DRAIN_PER_PUSH, budget=self.policy.wal.slow_site_grace.total_seconds())
        self.close()
        log.info("wal-push %s: %d file(s) in %.2fs, %d spooled, %s drained", path.name, len(items),
                 time.time() - now, sum(1 for i in items if i.spool_for), sum(drained.values()))
        return PushResult(items, drained)

    def _round(self, items: list[Item], bind: tuple, n_sync: int, pg_wal: Path, requested: str) -> None:
        """Ship one batch: to every site, or to the first ``n_sync`` that are up; spool what a
        site is owed; mark the batch's other files done once they are durable."""
        if n_sync >= len(self.sites):
            self._run(items, bind)
        else:
            self._run_sync_sites(items, bind, n_sync)
        for it in items:
            if not it.stored_at and not it.error:
                it.error = SiteError(
                    f"{it.name} was not archived: no site accepted it ({'; '.join(f'{s}: {m}' for s, m in sorted(self._failed.items()))})",
                    "PostgreSQL keeps the file and retries; check the sites with `pgvault check`")
            if it.error is None and it.stored_at:
                # every site not holding it now is owed it (async sites were not even tried)
                it.spool_for |= set(self.sites) - it.stored_at
        owed = [it for it in items if it.error is None and it.spool_for]
        if owed:
            self.spool.enqueue_many([(it.stored, it.data(), sorted(it.spool_for), self._local_copy(it))
                                     for it in owed])
        for it in items:
            if it.name != requested:
                if it.error is None:
                    mark_done(pg_wal, it.name)
                else:  # PostgreSQL will ask for it again, alone, and then the error is its answer
                    log.warning("%s", it.error.message)
            if not it.late:  # durable where it must be: the next batch needs the memory
                it.blob = it.blob_future = None
                it.sealed = {}

    def _local_copy(self, it: Item):
        """The committed file of ``it`` at a local site that stored it (for the spool to link)."""
        key = layout.wal_key(self.cluster, it.name, self.suffix)
        for sname, site in self.sites.items():
            if self.recipients.get(sname):
                continue  # its file is encrypted to its own recipients: the spool keeps the compressed blob
            if sname in it.stored_at and (root := site.capabilities.local_root) is not None:
                return root / key
        return None

    def sync_count(self) -> int:
        """How many sites wal-push writes to before it returns (wal.sync_sites)."""
        n = self.policy.wal.sync_sites
        return len(self.sites) if n == "all" else max(1, min(int(n), len(self.sites)))

    def _run_sync_sites(self, items: list[Item], bind: tuple, n_sync: int) -> None:
        """wal.sync_sites = N: write to the first N sites that are up, in wal.sites order; if one
        of them fails, the next sites stand in for the files it missed. Whatever a site does not
        hold is spooled for it by the caller and delivered by the background shipper."""
        order = [s for s in self.sites if s not in self._failed]
        first, rest = order[:n_sync], order[n_sync:]
        self._run(items, bind, first)
        while rest:
            short = [it for it in items if it.error is None and len(it.stored_at) < n_sync]
            if not short:
                break
            need = n_sync - min(len(it.stored_at) for it in short)
            group, rest = rest[:need], rest[need:]
            log.warning("%d file(s) not confirmed by %d site(s); writing them to %s as well",
                        len(short), n_sync, ", ".join(group))
            self._run(short, bind, group)

    def _run(self, items: list[Item], bind: tuple, sites: list[str] | None = None) -> None:
        """Ship every item to every site (of ``sites``). Once one site has the whole batch, the
        others get ``wal.slow_site_grace`` (or as long again as that site took, if longer); what
        a site has not confirmed by then is spooled for it, and the site rests like a failed one."""
        from concurrent.futures import FIRST_COMPLETED, wait

        grace = self.policy.wal.slow_site_grace.total_seconds()
        sites = list(self.sites) if sites is None else sites
        if not sites:
            return
        by_site = {s: [(it, self._pool(s).submit(self._site_task, s, it, bind)) for it in items] for s in sites}
        pending = {f for fs in by_site.values() for _it, f in fs}
        t0 = time.monotonic()
        deadline = None
        while pending:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            _done, pending = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
            if deadline is None and any(all(f.done() for _it, f in fs) for fs in by_site.values()):
                deadline = time.monotonic() + max(grace, time.monotonic() - t0)
            if pending and deadline is not None and time.monotonic() >= deadline:
                break
        with self._lock:
            for sname, fs in by_site.items():
                late = [it for it, _f in fs if sname not in it.done_sites]
                if late:
                    self._failed.setdefault(sname, f"too slow: no answer within {grace:.0f}s after another site "
                                                   f"had the whole batch")
                    for it in late:
                        it.spool_for.add(sname)
                        it.late = True

    def close(self) -> None:
        """Release the worker threads (a long-running caller such as tick reuses the process)."""
        for pool in self._pools.values():
            pool.close()
        self._pools = {}

    def _pool(self, site: str) -> DaemonPool:
        if site not in self._pools:
            self._pools[site] = DaemonPool(4, f"wal-{site}")
        return self._pools[site]

    def _update_breakers(self, now: float) -> None:
        for s in self.sites:
            if s in self._failed:
                if self._failed[s] != "resting after a failure":
                    self.spool.mark_down(s, self._failed[s], self.retry, now)
            elif self.spool.site_state(s):
                self.spool.mark_up(s)

    def drain(self, bind: tuple | None = None, *, limit: int | None = None, budget: float | None = None,
              workers: int = 1) -> dict[str, int]:
        """Ship spooled backlog to the sites that are up, for at most ``budget`` seconds (all
        sites in parallel, ``workers`` requests at a time per site); returns the files
        delivered per site."""
        from concurrent.futures import wait

        todo = [s for s in self.spool.sites_with_backlog() if s in self.sites and s not in self._failed]
        if not todo:
            return {}
        stop = None if budget is None else time.monotonic() + budget
        futures = {s: self._pool(s).submit(self._drain_site, s, bind, limit, stop, workers) for s in todo}
        wait(futures.values(), timeout=budget)
        return {s: f.result() for s, f in futures.items() if f.done() and not f.exception() and f.result()}

    def _drain_site(self, sname: str, bind: tuple | None, limit: int | None, stop: float | None,
                    workers: int = 1) -> int:
        backlog = self.spool.backlog(sname)[:limit]
        listing = None
        site = self.sites[sname]
        if len(backlog) > 1 and not site.capabilities.cheap_head:
            # One LIST per WAL directory instead of one per file (a directory holds at most
            # 256 segments). A file written there after this listing by another pusher would
            # be overwritten, not compared: see "Limits" in docs/wal-archiving.md.
            # History files sit at the top of wals/ (no hash directory): they look for themselves.
            top = layout.wal_prefix(self.cluster)
            dirs = {d for d in (self._wal_dir(n) for n in backlog) if d != top}
            try:
                listing = {"dirs": dirs, "keys": {o.key for d in sorted(dirs) for o in site.list(d)}}
            except (SiteError, OSError):
                listing = None  # each file then finds out for itself (and fails the site)

        def one(stored: str) -> int:
            known = listing["keys"] if listing and self._wal_dir(stored) in listing["dirs"] else None
            return self._deliver(sname, stored, bind, stop, known)

        if workers <= 1 or len(backlog) <= 1:
            return sum(one(stored) for stored in backlog)
        with ThreadPoolExecutor(workers, thread_name_prefix=f"ship-{sname}") as pool:
            return sum(pool.map(one, backlog))

    def _wal_dir(self, stored: str) -> str:
        return layout.wal_key(self.cluster, names.split_stored(stored)[0]).rsplit("/", 1)[0] + "/"

    def _deliver(self, sname: str, stored: str, bind: tuple | None, stop: float | None,
                 listing: set | None = None) -> int:
        """Ship one spooled file to one site; 1 if delivered."""
        if sname in self._failed or (stop is not None and time.monotonic() > stop) \
                or stored in self._refused.get(sname, ()):
            return 0
        if self.before_deliver is not None:
            self.before_deliver(sname, stored)
        data = self.spool.read(stored)
        if data is None:  # delivered by a concurrent drain
            self.spool.delivered(sname, stored)
            return 0
        it = Item(names.split_stored(stored)[0], stored, blob=data)
        self._ship_or_spool(sname, it, bind or (lambda: self._bind_from_blob(it)), listing)
        if it.error:
            log.error("%s", it.error.message)  # kept in the spool; wal-status shows it
            with self._lock:
                self._refused.setdefault(sname, set()).add(stored)  # not retried by this process
            return 0
        if sname in self._failed:
            self.spool.mark_down(sname, self._failed[sname], self.retry)
            return 0
        self.spool.delivered(sname, stored)
        return 1

    def _bind_from_blob(self, it: Item) -> tuple:
        if self._bind is not None:
            return self._bind
        sysid = self.expected_sysid()
        hdr = None
        if names.has_header(it.name):
            hdr = names.parse_header(it.content(names.split_stored(it.stored)[1]))
            sysid = sysid or str(hdr.system_identifier)
        bind = (sysid, pg_major(hdr, None), hdr.segment_size if hdr else 16 << 20)
        if hdr is not None:
            self._bind = bind
        return bind
