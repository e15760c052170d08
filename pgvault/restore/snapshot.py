"""Restoring snapshots: clone a local snapshot set into a new place, or receive a chain of send
streams from a site into a new dataset/subvolume; then clone hygiene and (optionally) start.

Targets: zfs — a dataset name that does not exist yet (its parent must); each volume of the
set lands at TARGET/<last component of its name>. btrfs — a directory that does not exist or
is empty, on a btrfs file system; each volume lands at TARGET/<subvolume name>."""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field

from .. import pg, proc
from ..policy.model import get_job
from ..catalog.catalog import Catalog
from ..catalog.formats import Manifest
from ..catalog.streams import CHUNK
from ..errors import IntegrityError, ObjectNotFound, PgvaultError, UsageError
from ..methods import get_method
from ..methods.snapshot import Driver, Snap
from ..sites import open_sites
from .snapshot_prepare import prepare

log = logging.getLogger("pgvault.restore.snapshot")


@dataclass
class Restored:
    backup_id: str
    pgdata: str
    port: int
    paths: dict[str, str]
    started: bool = False
    socket_dir: str | None = None
    site: str | None = None
    chain: list[str] = field(default_factory=list)

    @property
    def conninfo(self) -> str:
        return f"host={self.socket_dir} port={self.port} user=postgres dbname=postgres"


def snapshot_driver(method: str, job_name: str, job=None) -> Driver:
    """The snapshot Driver of ``method`` (the Method contract names it); ``job`` may be None
    for the restore side, which works from manifests."""
    cls = get_method(method).snapshot_driver
    if cls is None:
        from ..methods import all_methods

        kinds = " or ".join(m.name for m in all_methods() if m.snapshot_driver)
        raise UsageError(f"job {job_name!r} is a {method} job, not a snapshot job", f"use a job with method {kinds}")
    return cls(job_name, job)


def driver_for(policy, job_name: str) -> Driver:
    job = get_job(policy, job_name)
    return snapshot_driver(job.method, job_name, job)


def leaves(volumes: list[str]) -> dict[str, str]:
    """A distinct short name per volume.

    >>> leaves(["tank/a/pg", "tank/b/pg", "tank/wal"])
    {'tank/a/pg': 'pg', 'tank/b/pg': 'pg-2', 'tank/wal': 'wal'}
    """
    out, used = {}, set()
    for i, v in enumerate(volumes, 1):
        name = v.rstrip("/").replace("@", "/").rsplit("/", 1)[-1]
        if name in used:
            name = f"{name}-{i}"
        used.add(name)
        out[v] = name
    return out


def _cleanup(drv: Driver, target: str, created: list[str]) -> None:
    try:
        drv.cleanup(target, created)
    except PgvaultError as exc:
        log.warning("cleanup of %s incomplete: %s", target, getattr(exc, "message", exc))


def _start(prepared, socket_dir: str | None) -> str:
    sock = socket_dir or tempfile.mkdtemp(prefix="pgvault-clone-")
    os.chmod(sock, 0o755)
    pg.chown_to_run_user(sock)
    pg.Instance(prepared.pgdata, prepared.port, socket_dir=sock).start()
    return sock


# -- from a local snapshot
def clone_local(policy, job_name: str, backup_id: str | None, target: str, *, port: int | None = None,
                start: bool = False, socket_dir: str | None = None) -> Restored:
    drv = driver_for(policy, job_name)
    sets = drv.local_sets()
    if not sets:
        raise PgvaultError(f"job {job_name!r} has no local snapshot", f"take one with pgvault backup {job_name}")
    bid = backup_id or max(sets)
    if bid not in sets:
        raise UsageError(f"job {job_name!r} has no local snapshot {bid}", f"local snapshots: {', '.join(sorted(sets))}")
    snaps: dict[str, Snap] = sets[bid]
    meta = drv.read_meta(next(iter(snaps.values())))
    missing = [s["volume"] for s in meta["snapshots"] if s["volume"] not in snaps]
    if missing:
        raise PgvaultError(f"snapshot set {bid} is incomplete here: no snapshot of {', '.join(missing)}",
                           "restore it from a site with pgvault snapshot restore --from-site")
    names = leaves([s["volume"] for s in meta["snapshots"]])
    paths, created = {}, []
    drv.make_target(target)
    try:
        for vol, short in names.items():
            paths[vol] = drv.clone(snaps[vol], target, short, created)
        prepared = prepare(meta, paths, port or pg.free_port())
        result = Restored(bid, prepared.pgdata, prepared.port, paths)
        if start:
            result.socket_dir = _start(prepared, socket_dir)
            result.started = True
        return result
    except BaseException:
        _cleanup(drv, target, created)
        raise


# -- from a site
def chain(cat: Catalog, newest: Manifest) -> list[Manifest]:
    """The manifests to receive in order: the full one first, ``newest`` last."""
    out = [newest]
    while out[-1].parent:
        try:
            out.append(cat.manifest(out[-1].parent))
        except ObjectNotFound:
            raise PgvaultError(f"site {cat.name!r}: backup {newest.backup_id} needs {out[-1].parent}, which is gone",
                               "restore an older complete chain, or from another site") from None
    return list(reversed(out))


def candidates(policy, job_name: str, backup_id: str | None, from_site: str | None) -> list[tuple[Catalog, Manifest]]:
    """Sites holding the wanted snapshot (default: each site's newest), in preference order."""
    job = get_job(policy, job_name)
    names = [from_site] if from_site else list(job.sites)
    out, errors = [], []
    for n, site in open_sites(policy, names).items():
        cat = Catalog(site, policy.cluster.name)
        try:
            ms = [m for m in cat.manifests() if m.job == job_name and m.method == job.method]
        except PgvaultError as exc:
            errors.append(f"{n}: {exc.message}")
            continue
        if backup_id:
            ms = [m for m in ms if m.backup_id == backup_id]
        if ms:
            out.append((cat, max(ms, key=lambda m: m.backup_id)))
    if not out:
        what = f"snapshot {backup_id}" if backup_id else "any snapshot"
        raise PgvaultError(f"no site of job {job_name!r} holds {what}" + (f" ({'; '.join(errors)})" if errors else ""),
                           "list backups with pgvault list")
    if not backup_id:  # the newest snapshot wins, whichever site holds it
        newest = max(m.backup_id for _, m in out)
        out = [(c, m) for c, m in out if m.backup_id == newest]
    return out


def _feed(cat: Catalog, m: Manifest, artifact: str, argv: list[str]) -> None:
    import zstandard

    reader = cat.open_artifact(m, artifact)
    with proc.Sink(argv, hint=f"the stream {artifact} of {m.backup_id} could not be received") as sink:
        # The reader checks size and sha256 at EOF and raises before finish(): a damaged
        # stream fails the restore, and the caller removes what was received.
        try:
            while chunk := reader.read(CHUNK):
                sink.write(chunk)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"site {cat.name!r}: {m.backup_id}/{artifact} is damaged (checksum/zstd: {exc})",
                                 "restore from another site (--from-site)") from None
        sink.finish()


def receive_from_site(policy, job_name: str, backup_id: str | None, target: str, *, from_site: str | None = None,
                      port: int | None = None, start: bool = False, socket_dir: str | None = None,
                      warn=None) -> Restored:
    """Receive the chain from the first site whose copy is intact; a damaged copy is reported
    and the next site holding the snapshot is tried."""
    found = candidates(policy, job_name, backup_id, from_site)
    for i, (cat, newest) in enumerate(found):
        try:
            return _receive(cat, newest, target, port, start, socket_dir)
        except IntegrityError as exc:
            if i == len(found) - 1:
                raise
            note = f"{exc.message}; trying site {found[i + 1][0].name!r}"
            log.warning("%s", note)
            if warn:
                warn(note)
    raise AssertionError("unreachable")


def _receive(cat: Catalog, newest: Manifest, target: str, port, start, socket_dir) -> Restored:
    drv = snapshot_driver(newest.method, newest.job)
    links = chain(cat, newest)
    # Check every stream of the chain before `zfs/btrfs receive` sees a byte: a receive that is
    # aborted part-way can leave zfs-fuse unable to destroy what it received. The streaming
    # hash check in _feed stays as the second line of defence.
    from .source import damaged

    for m in links:
        bad = damaged(cat, m)
        if bad:
            raise IntegrityError(f"site {cat.name!r}: {m.backup_id} is damaged ({bad})",
                                 "restore from another site (--from-site)")
    volumes = [s["volume"] for s in newest.facts["snapshots"]]
    names = leaves(volumes)
    paths, created = {}, []
    drv.make_target(target)
    try:
        for i, m in enumerate(links):
            streams = m.facts.get("streams") or {}
            for vol in volumes:
                if vol not in streams:
                    raise PgvaultError(f"site {cat.name!r}: backup {m.backup_id} has no stream of {vol}",
                                       "the chain was taken with a different set of volumes; restore a newer full snapshot")
                _feed(cat, m, streams[vol], drv.receive_argv(target, names[vol], vol, m.backup_id, i > 0, created))
        for vol, short in names.items():
            paths[vol] = drv.received(target, short, vol, newest.backup_id, created)
        prepared = prepare(newest.facts, paths, port or pg.free_port())
        result = Restored(newest.backup_id, prepared.pgdata, prepared.port, paths, site=cat.name,
                          chain=[m.backup_id for m in links])
        if start:
            result.socket_dir = _start(prepared, socket_dir)
            result.started = True
        return result
    except BaseException:
        _cleanup(drv, target, created)
        raise
