"""Gather the facts behind `pgvault status` from the sites (the source of truth) and the
cluster. Nothing here judges: evaluate.py compares these facts with the policy.

Every site is read independently: one unreachable site is a fact about that site, never a
reason to stop reading the others. All sites are read at once, each within
``monitoring.site_timeout`` (pgvault.sites.readonly: capped S3 timeouts, one thread per site
joined against one deadline), while the cluster is asked over SQL: a dead or hanging site
costs that bound once, never a sum, and never the full timeouts a backup is granted."""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from .. import pg
from ..catalog import layout
from ..catalog.catalog import Catalog
from ..errors import PgvaultError
from ..sites import open_site
from ..sites.readonly import Deadline, Probes, open_readonly, site_timeout
from ..wal import listing as wal_listing
from ..wal import status as walscan

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


def _backup_facts(manifests: list, jobs: list[str]) -> tuple[dict, str | None]:
    """Per job: count kept, newest backup; plus the start WAL of the oldest PITR base here."""
    by_job: dict[str, list] = {j: [] for j in jobs}
    oldest_wal = None
    for m in manifests:
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
                     "message": doc.get("message"),
                     # what the windows relate the drill by (pgvault.restore.windows.proof)
                     "backup_id": doc.get("backup_id"), "target_time": doc.get("target_time"),
                     "replayed_until": doc.get("replayed_until")})
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


def _read_site(policy, name: str) -> dict:
    """Everything status reads from one site (run in the site's probe thread): the binding,
    backups, the WAL listing and drill evidence. Judged and scanned later, in the caller."""
    cluster = policy.cluster.name
    jobs = [j for j, job in policy.jobs.items() if name in job.sites]
    site = open_readonly(policy, name)
    try:
        cat = Catalog(site, cluster)
        binding = cat.binding()
        raw = {"bound_at": binding.created_at.isoformat() if binding else None,
               "segment_size": binding.wal_segment_size if binding else None}
        manifests = cat.manifests()
        raw["backups"], raw["oldest_wal"] = _backup_facts(manifests, jobs)
        raw["drills"] = _drill_docs(cat)
        if name in policy.wal.sites:
            objects = [(o.key, o.mtime) for o in site.list(layout.wal_prefix(cluster))]
            # Each listed name is parsed once, here: the scan (site_facts) and the window read it.
            raw["wal"] = wal_listing.parse(objects, binding.wal_segment_size if binding else 16 << 20)
            from ..wal import horizon

            raw["horizon"] = horizon.read(site, cluster)
            # The same binding, manifests, listing and drill records: nothing is read twice.
            raw["window"] = window_facts(policy, name, site, raw["wal"], raw["drills"], manifests, binding)
            from ..wal.divergence import read_evidence

            raw["quarantine"] = read_evidence(site, cluster)
    except OSError as exc:
        raise PgvaultError(f"site {name!r}: {exc}", "check the path and its permissions") from None
    return raw


def site_facts(policy, name: str, answer, segment_size: int) -> dict:
    """Backups, WAL and drill evidence held at one site, from its probe's answer."""
    describe = open_site(name, policy.sites[name]).describe()
    if not answer.ok:
        return {"reachable": False, "error": answer.message, "hint": getattr(answer.error, "hint", None),
                "describe": describe}
    raw = answer.value
    facts = {"reachable": True, "error": None, "describe": describe, "bound_at": raw["bound_at"],
             "backups": raw["backups"], "drills": raw["drills"]}
    if name in policy.wal.sites:
        facts["spool"] = spool_facts(policy, name)
        oldest_wal = raw["oldest_wal"]
        s = walscan.scan_listing(raw["wal"].sized(segment_size), oldest_wal, pending=facts["spool"].pop("names"),
                                 horizon=raw.get("horizon"))
        facts["wal"] = {"count": s.count, "newest": s.newest, "newest_time": _iso(s.newest_mtime),
                        "oldest": s.oldest, "required_from": oldest_wal, "timelines": s.timelines,
                        "gaps": s.gaps, "gap_count": s.gap_count, "horizon": raw.get("horizon"),
                        "before_horizon": s.before_horizon}
        facts["quarantine"] = raw.get("quarantine", [])
    return facts


def window_facts(policy, name: str, site, wal: wal_listing.Listing, drills: list[dict] | None = None, manifests=None,
                 binding=None) -> dict:
    """The recoverability window of one WAL site (pgvault.restore.windows) from the WAL listing
    _read_site already made and parsed, as JSON; a window that cannot be computed is a fact here too."""
    from ..restore.windows_read import site_window

    try:
        w, _ = site_window(policy, name, site, listing=wal, drills=drills, manifests=manifests, binding=binding)
    except (PgvaultError, OSError) as exc:
        return {"site": name, "error": getattr(exc, "message", None) or str(exc)}
    return w.as_dict()


def _window_of(name: str, answer) -> dict:
    """The window _read_site computed for a WAL site, or why there is none."""
    if not answer.ok:
        return {"site": name, "error": answer.message}
    return answer.value.get("window") or {"site": name, "error": "not read"}


def _segment_size(cluster: dict, answers: dict) -> int:
    if cluster.get("reachable"):
        return cluster["wal_segment_size"]
    # The cluster is down: the size it was bound with at any site still tells us how to count.
    for a in answers.values():
        if a.ok and a.value["segment_size"]:
            return a.value["segment_size"]
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


def collect(policy, now: datetime, deadline: Deadline | None = None) -> dict:
    """All facts status needs, as a JSON-able document, within ``deadline`` (default: one
    monitoring.site_timeout from now) whatever the sites do."""
    deadline = deadline or Deadline(site_timeout(policy))
    probes = Probes(policy.sites, lambda n: _read_site(policy, n), what="status")
    cluster = cluster_facts(policy)  # meanwhile
    standbys = standby_facts(policy, cluster, deadline)  # meanwhile too
    answers = probes.wait(deadline)
    seg = _segment_size(cluster, answers)
    sites = {name: site_facts(policy, name, answers[name], seg) for name in policy.sites}
    windows = {name: _window_of(name, answers[name]) for name in policy.wal.sites}
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
            "cluster": cluster, "sites": sites, "drills": drills, "runs": run_facts(policy), "windows": windows,
            "standbys": standbys}


def standby_facts(policy, cluster: dict, deadline: Deadline) -> dict:
    """What each delayed standby (method: standby) says about itself, each asked over SQL
    within what is left of the deadline (an unreachable or hanging one is a fact, not a stall)."""
    if not any(j.method == "standby" for j in policy.jobs.values()):
        return {}
    from ..methods.standby import probe_all

    left = max(deadline.remaining(), 1.0)
    return probe_all(policy, cluster.get("current_lsn") if cluster.get("reachable") else None, left)
