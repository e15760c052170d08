"""Archive status per WAL site: newest file, lag behind the newest file archived anywhere
(segments and seconds), the spooled backlog, the circuit-breaker state and gaps.

``summarize`` is pure (tested without I/O); ``archive_status`` gathers its inputs."""
from __future__ import annotations

import time
from datetime import datetime, timezone

from . import names


def summarize(listings: dict, spooled: dict, breakers: dict, now: float, segment_size: int = 16 << 20) -> dict:
    """Per-site status from site listings ({site: [(name, mtime)] or an error string}), spooled
    names ({site: ([names], oldest age)}) and circuit-breaker states ({site: state or None}).

    >>> s = summarize({"a": [("000000010000000000000001", 10.0), ("000000010000000000000002", 20.0)],
    ...                "b": [("000000010000000000000001", 10.0)]},
    ...               {"b": (["000000010000000000000002"], 30.0)}, {}, now=100.0)
    >>> s["newest"], s["sites"]["a"]["lag_segments"], s["sites"]["b"]["lag_segments"], s["sites"]["b"]["lag_seconds"]
    ('000000010000000000000002', 0, 1, 30.0)
    >>> s["sites"]["b"]["gaps"], s["sites"]["b"]["spooled"]
    ([], 1)
    """
    newest_key = None
    newest = None
    for site, entries in list(listings.items()) + [(s, [(n, 0.0) for n in v[0]]) for s, v in spooled.items()]:
        if isinstance(entries, str):
            continue
        for name, _m in entries:
            if names.kind(name) != "segment":
                continue
            k = names.parse_segment(name, segment_size)[::-1]  # by segment number, then timeline
            if newest_key is None or k > newest_key:
                newest_key, newest = k, name
    out = {"newest": newest, "sites": {}}
    for site, entries in listings.items():
        backlog, age = spooled.get(site, ([], None))
        st: dict = {"reachable": not isinstance(entries, str), "error": entries if isinstance(entries, str) else None,
                    "files": 0, "newest": None, "newest_time": None, "lag_segments": None, "lag_seconds": None,
                    "spooled": len(backlog), "spooled_age": age, "gaps": [],
                    "down_since": (breakers.get(site) or {}).get("down_since"),
                    "failing": (breakers.get(site) or {}).get("error")}
        if not isinstance(entries, str):
            segs = [(n, m) for n, m in entries if names.kind(n) == "segment"]
            st["files"] = len(entries)
            if segs:
                name, mtime = max(segs, key=lambda e: names.parse_segment(e[0], segment_size)[::-1])
                st["newest"] = name
                st["newest_time"] = datetime.fromtimestamp(mtime, timezone.utc).isoformat()
            if newest is not None:
                mine = names.parse_segment(st["newest"], segment_size)[1] if st["newest"] else None
                top = names.parse_segment(newest, segment_size)[1]
                st["lag_segments"] = top - mine if mine is not None else None
                if st["lag_segments"] == 0:
                    st["lag_seconds"] = 0.0
                elif age is not None:
                    st["lag_seconds"] = age
                elif segs:
                    st["lag_seconds"] = max(0.0, now - max(m for _n, m in segs))
            present = [n for n, _m in entries] + list(backlog)
            st["gaps"] = [list(g) for g in names.gaps(present, segment_size)]
        out["sites"][site] = st
    return out


def list_wal(site, cluster: str) -> list[tuple[str, float]]:
    """(WAL name, mtime) of every WAL file a site holds for a cluster, in archive order."""
    from ..catalog import layout

    out = []
    for o in site.list(layout.wal_prefix(cluster)):
        name = names.split_stored(o.key.rsplit("/", 1)[1])[0]
        if names.is_wal_name(name):
            out.append((name, o.mtime))
    return sorted(out, key=lambda e: names.sort_key(e[0]))


def archive_status(policy, *, sites: dict | None = None) -> dict:
    """Status of every WAL site (lists each site's archive: for check/status, not per push)."""
    from ..errors import SiteError
    from ..sites import open_sites
    from . import spool_dir
    from .spool import Spool

    sites = sites if sites is not None else open_sites(policy, policy.wal.sites)
    spool = Spool(spool_dir(policy))
    listings: dict = {}
    spooled: dict = {}
    breakers: dict = {}
    for sname, site in sites.items():
        try:
            listings[sname] = list_wal(site, policy.cluster.name)
        except (SiteError, OSError) as exc:
            listings[sname] = getattr(exc, "message", None) or str(exc)
        try:
            backlog = [names.split_stored(n)[0] for n in spool.backlog(sname)]
            spooled[sname] = (backlog, spool.backlog_age(sname))
            breakers[sname] = spool.site_state(sname)
        except OSError:
            spooled[sname] = ([], None)
    doc = summarize(listings, spooled, breakers, time.time())
    doc["cluster"] = policy.cluster.name
    doc["spool"] = str(spool.root)
    return doc


def render(status: dict) -> str:
    """Plain text for `pgvault wal-status`."""
    lines = [f"cluster {status['cluster']}: newest archived segment {status['newest'] or '-'} (spool {status['spool']})"]
    for site, st in status["sites"].items():
        if not st["reachable"]:
            lines.append(f"{site}: UNREACHABLE ({st['error']}); {st['spooled']} file(s) spooled")
            continue
        if st["failing"]:
            lines.append(f"{site}: FAILING since {st['down_since']:.0f} ({st['failing']})")
        lag = "-" if st["lag_segments"] is None else f"{st['lag_segments']} segment(s)"
        age = "" if not st["lag_seconds"] else f", {st['lag_seconds']:.0f}s behind"
        lines.append(f"{site}: {st['files']} file(s), newest {st['newest'] or '-'}, lag {lag}{age}, "
                     f"{st['spooled']} spooled" + (f", GAPS {st['gaps']}" if st["gaps"] else ""))
    return "\n".join(lines)
