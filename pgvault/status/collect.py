"""Gather the facts behind `pgvault status` from the sites (the source of truth) and the
cluster. Nothing here judges: evaluate.py compares these facts with the policy.

Every site is read independently: one unreachable site is a fact about that site, never a
reason to stop reading the others."""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from .. import pg
from ..catalog import layout
from ..catalog.catalog import Catalog
from ..errors import PgvaultError
from ..sites import open_site
from . import wal as walscan

log = logging.getLogger("pgvault.status")

PASSED = ("passed", "ok", "success", "succeeded")


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat()


def cluster_facts(policy) -> dict:
    """The cluster's position in WAL, read over SQL; an unreachable cluster is a fact too."""
    try:
        with pg.connect(policy.cluster.conninfo) as conn:
            info = pg.server_info(conn)
            row = pg.query(conn, """
                SELECT current_setting('archive_mode'), archived_count, last_archived_wal, last_archived_time,
                       failed_count, last_failed_wal, last_failed_time FROM pg_stat_archiver""")[0]
    except PgvaultError as exc:
        return {"reachable": False, "error": exc.message, "hint": exc.hint}
    return {"reachable": True, "version": info.version, "system_identifier": info.system_identifier,
            "timeline": info.timeline, "in_recovery": info.in_recovery, "current_lsn": info.current_lsn,
            "wal_segment_size": info.wal_segment_size, "archive_mode": row[0],
            "archiver": {"archived_count": row[1], "last_archived_wal": row[2], "last_archived_time": _dt(row[3]),
                         "failed_count": row[4], "last_failed_wal": row[5], "last_failed_time": _dt(row[6])}}


def _dt(v: datetime | None) -> str | None:
    return None if v is None else v.astimezone(timezone.utc).isoformat()


def _backup_facts(cat: Catalog, jobs: list[str]) -> tuple[dict, str | None]:
    """Per job: count kept, newest backup; plus the start WAL of the oldest PITR base here."""
    by_job: dict[str, list] = {j: [] for j in jobs}
    oldest_wal = None
    for m in cat.manifests():
        if m.job in by_job:
            by_job[m.job].append(m)
        if m.start_wal and (oldest_wal is None or m.start_wal[8:] < oldest_wal[8:]):
            oldest_wal = m.start_wal
    out = {}
    for job, ms in by_job.items():
        last = max(ms, key=lambda m: m.finished_at) if ms else None
        out[job] = {"count": len(ms), "total_size": sum(m.total_size for m in ms), "last": None if last is None else {
            "backup_id": last.backup_id, "method": last.method, "started_at": last.started_at.isoformat(),
            "finished_at": last.finished_at.isoformat(), "size": last.total_size, "stop_lsn": last.stop_lsn}}
    return out, oldest_wal


def _drill_docs(cat: Catalog) -> list[dict]:
    """Drill evidence at one site, read defensively: a damaged or foreign object is skipped."""
    from ..sites.base import get_bytes

    docs = []
    for obj in cat.site.list(layout.drills_prefix(cat.cluster)):
        if not obj.key.endswith(".json"):
            continue
        try:
            doc = json.loads(get_bytes(cat.site, obj.key))
        except (PgvaultError, ValueError) as exc:
            log.warning("site %s: skipping drill evidence %s: %s", cat.name, obj.key, getattr(exc, "message", exc))
            continue
        if not isinstance(doc, dict):
            continue
        drill_id = obj.key.rsplit("/", 1)[-1][: -len(".json")]
        when = doc.get("finished_at") or doc.get("started_at")
        site = doc.get("site") if isinstance(doc.get("site"), str) else cat.name
        docs.append({"drill": str(doc.get("drill") or drill_id), "id": drill_id, "site": site, "stored_at": cat.name,
                     "started_at": doc.get("started_at"), "finished_at": doc.get("finished_at"),
                     "when": when if isinstance(when, str) else _iso(obj.mtime),
                     "outcome": str(doc.get("outcome", "unknown")).lower(),
                     "rto_seconds": _num(doc.get("rto_seconds")), "rpo_seconds": _num(doc.get("rpo_seconds")),
                     "message": doc.get("message")})
    return docs


def _instant(text) -> datetime:
    from .evaluate import parse_instant

    try:
        return parse_instant(text)
    except (TypeError, ValueError, AttributeError):
        return datetime.min.replace(tzinfo=timezone.utc)


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def spool_facts(policy, name: str) -> dict:
    """WAL waiting in wal-push's local spool for a site that did not take it (a dead site's
    backlog), and since when the site is marked down. Empty when this host has no spool."""
    try:
        from ..wal import spool_dir
        from ..wal.spool import Spool

        spool = Spool(spool_dir(policy))
        state = spool.site_state(name) or {}
        backlog = spool.backlog(name)
        return {"spooled": len(backlog), "spooled_age": spool.backlog_age(name),
                "down_since": _iso(state.get("down_since")), "failing": state.get("error"), "names": backlog}
    except (OSError, ValueError):
        return {"spooled": 0, "spooled_age": None, "down_since": None, "failing": None, "names": []}


def _impatient(policy, config):
    """A site configuration that gives up quickly: a monitoring check that hangs for minutes
    on a dead endpoint is worse than one that says CRITICAL in seconds."""
    return config.impatient(policy.monitoring.site_timeout.total_seconds())


def site_facts(policy, name: str, segment_size: int) -> dict:
    """Backups, WAL and drill evidence held at one site."""
    cluster = policy.cluster.name
    jobs = [j for j, job in policy.jobs.items() if name in job.sites]
    facts: dict = {"reachable": True, "error": None, "describe": None}
    try:
        site = open_site(name, _impatient(policy, policy.sites[name]))
        facts["describe"] = site.describe()
        cat = Catalog(site, cluster)
        binding = cat.binding()
        facts["bound_at"] = binding.created_at.isoformat() if binding else None
        facts["backups"], oldest_wal = _backup_facts(cat, jobs)
        if name in policy.wal.sites:
            listing = list(site.list(layout.wal_prefix(cluster)))
            objs = [(o.key, o.mtime) for o in listing]
            facts["spool"] = spool_facts(policy, name)
            s = walscan.scan(objs, segment_size, oldest_wal, pending=facts["spool"].pop("names"))
            facts["wal"] = {"count": s.count, "newest": s.newest, "newest_time": _iso(s.newest_mtime),
                            "oldest": s.oldest, "required_from": oldest_wal, "timelines": s.timelines,
                            "gaps": s.gaps, "gap_count": s.gap_count}
            facts["window"] = window_facts(policy, name, site, listing)   # the same listing, not a second one
        facts["drills"] = _drill_docs(cat)
    except PgvaultError as exc:
        return {"reachable": False, "error": exc.message, "hint": exc.hint, "describe": facts["describe"]}
    except OSError as exc:
        return {"reachable": False, "error": f"site {name!r}: {exc}", "hint": "check the path and its permissions",
                "describe": facts["describe"]}
    return facts


def window_facts(policy, name: str, site, wal_listing) -> dict:
    """The recoverability window of one WAL site (pgvault.restore.windows) from the WAL listing
    site_facts already made, as JSON; a window that cannot be computed is a fact here too."""
    from ..restore.windows_read import site_window

    try:
        w, _ = site_window(policy, name, site, wal_objects=wal_listing)
    except (PgvaultError, OSError) as exc:
        return {"site": name, "error": getattr(exc, "message", None) or str(exc)}
    return w.as_dict()


def _segment_size(policy, cluster: dict) -> int:
    if cluster.get("reachable"):
        return cluster["wal_segment_size"]
    # The cluster is down: the size it was bound with at any site still tells us how to count.
    for name in policy.sites:
        try:
            b = Catalog(open_site(name, policy.sites[name]), policy.cluster.name).binding()
        except PgvaultError:
            continue
        if b:
            return b.wal_segment_size
    return 16 << 20


def run_facts(policy) -> dict:
    """The last finished run of each job as this host's engine recorded it (a local cache: it
    knows about failures, which leave nothing at the sites). Empty on a host that runs no tick."""
    from ..tick.state import StateStore, state_dir

    store = StateStore(state_dir(policy.state_dir, policy.cluster.name))
    out = {}
    for job in policy.jobs:
        try:
            st = store.load(job)
        except OSError:
            continue
        if st and st.last:
            out[job] = {"outcome": st.last.outcome, "started_at": st.last.started_at.isoformat(),
                        "finished_at": st.last.finished_at.isoformat() if st.last.finished_at else None,
                        "message": st.last.message, "running": bool(st.running)}
    return out


def collect(policy, now: datetime) -> dict:
    """All facts status needs, as a JSON-able document."""
    cluster = cluster_facts(policy)
    seg = _segment_size(policy, cluster)
    # Sites are read in parallel: one slow or dead site costs its own timeout, not the sum.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, max(1, len(policy.sites)))) as pool:
        futures = {name: pool.submit(site_facts, policy, name, seg) for name in policy.sites}
        sites = {name: f.result() for name, f in futures.items()}
    windows = {name: sites[name].pop("window", None) or {"site": name, "error": sites[name].get("error") or "not read"}
               for name in policy.wal.sites}
    for name in policy.wal.sites:
        if "spool" not in sites[name]:  # unreachable: the spool still says what waits for it
            sites[name]["spool"] = spool_facts(policy, name)
            sites[name]["spool"].pop("names")
    # The newest evidence per drill and drilled site: a drill that passes from one site and
    # fails from another is two facts, both shown.
    drills: dict[str, dict] = {}
    for name, f in sites.items():
        for d in f.pop("drills", []):
            key = f"{d['drill']}@{d['site']}"
            cur = drills.get(key)
            if cur is None or _instant(d["when"]) > _instant(cur["when"]):
                drills[key] = d
    return {"cluster_name": policy.cluster.name, "collected_at": now.isoformat(), "wal_segment_size": seg,
            "cluster": cluster, "sites": sites, "drills": drills, "runs": run_facts(policy), "windows": windows}
