"""The gather phase of a point-in-time restore, and what a recoverability window is computed
from: each site's bases (from its manifests) and its WAL archive (from its listing). Reads the
sites, decides nothing: pgvault.restore.plan (a restore) and pgvault.restore.windows (a
window, pgvault.restore.windows_read) judge what it returns.

Kept apart from pgvault.restore.pitr, which executes a restore (Barman's tools, PostgreSQL,
the WAL prefetcher): `pgvault status` and `pgvault windows` read these inputs on every run and
need none of that loaded."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from ..catalog import layout
from ..catalog.catalog import Catalog
from ..errors import PgvaultError
from ..sites import open_sites
from ..sites.base import get_bytes
from . import plan as planner
from .source import site_order

log = logging.getLogger("pgvault.restore.gather")


def _dt(v) -> datetime:
    return v if isinstance(v, datetime) else datetime.fromisoformat(str(v))


def method_of(name: str):
    """The registered Method of ``name``; None for one this pgvault does not know (a manifest
    written by a newer pgvault is skipped, not fatal)."""
    from ..methods import METHODS, get_method

    return get_method(name) if name in METHODS else None


def bases_from_manifest(m, site: str) -> list[planner.Base]:
    """Candidate bases from one manifest of a ``pitr_base`` method: a method with
    ``per_site_bases`` (barman) records one base per site in ``facts[method][site]``; any other
    that records start/stop LSN, time and timeline is a candidate as-is. The ref's ``route``
    says how fetch_base lays it down: barman's own route per site, or the method's restore
    route (``snapshot``)."""
    meth = method_of(m.method)
    if meth is None or not meth.pitr_base:
        return []
    per_site = (m.facts.get(meth.name) or {}).get(site) if meth.per_site_bases else None
    if per_site:
        return [planner.Base(m.backup_id, site, m.method, int(per_site["timeline"]),
                             planner.parse_lsn(per_site["begin_lsn"]), planner.parse_lsn(per_site["end_lsn"]),
                             _dt(per_site["begin_time"]), _dt(per_site["end_time"]), m.facts.get("start_xmin"),
                             {**per_site, "backup_id_at_site": per_site["backup_id"],
                              # pgvault's own engine: the tars are the manifest's artifacts
                              **({"manifest": m.model_dump(mode="json")} if per_site.get("route") == "pgvault" else {})})]
    if meth.per_site_bases or None in (m.start_lsn, m.stop_lsn, m.timeline):
        return []
    return [planner.Base(m.backup_id, site, m.method, m.timeline, planner.parse_lsn(m.start_lsn),
                         planner.parse_lsn(m.stop_lsn), m.start_time or m.started_at, m.stop_time or m.finished_at,
                         m.facts.get("start_xmin"), {"route": meth.restore_route, "manifest": m.model_dump(mode="json")})]


def archive_of(site, cluster: str, segment_size: int, objects=None, listing=None) -> planner.Archive:
    """List one site's WAL archive (names only; history files are read, they are tiny).
    ``objects``: that listing when the caller already has it (pgvault windows --all-clusters);
    ``listing``: the same parsed (pgvault.wal.listing: status parses each site's once, for its
    scan and the window alike)."""
    from ..errors import KeyRequired
    from ..wal import codec
    from ..wal import listing as wal_listing

    if listing is None:
        objs = site.list(layout.wal_prefix(cluster)) if objects is None else objects
        listing = wal_listing.parse([(o.key, o.mtime) for o in objs], segment_size)
    listing = listing.sized(segment_size)
    # Read only from here on: the listing's tables are shared, not copied.
    arch = planner.Archive(site.name, segments=listing.timelines, stored_at=wal_listing.StoredTimes(listing.keys),
                           segment_size=segment_size, keys=listing.keys)
    for name, key, comp in listing.histories:
        try:
            text = codec.decompress(get_bytes(site, key), comp).decode("utf-8", "replace")
        except KeyRequired as exc:
            # An encrypted history file on a host without the key (status, windows, check):
            # the timeline's segments still count; where it branched is unknown here.
            log.info("site %s: %s: %s", site.name, name, exc.message)
            continue
        arch.histories[int(name[:8], 16)] = planner.parse_history(text)
    return arch


@dataclass
class Gathered:
    bases: list[planner.Base] = field(default_factory=list)
    archives: list[planner.Archive] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def gather(policy, from_site: str | None) -> Gathered:
    g = Gathered()
    names = site_order(policy, from_site)
    wal_sites = set(policy.wal.sites) or set(names)
    for n, site in open_sites(policy, names).items():
        cat = Catalog(site, policy.cluster.name)
        try:
            binding = cat.binding()
            seg = binding.wal_segment_size if binding else planner.SEG
            for m in cat.manifests():
                g.bases.extend(bases_from_manifest(m, n))
            if n in wal_sites:
                g.archives.append(archive_of(site, policy.cluster.name, seg))
        except (PgvaultError, OSError) as exc:
            msg = getattr(exc, "message", None) or str(exc)
            g.warnings.append(f"site {n!r} skipped: {msg}")
            log.warning("site %s skipped: %s", n, msg)
    return g
