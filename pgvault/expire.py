"""Expiry at the sites: read manifests and pins, let the pure retention rules decide, delete.

Order, per site (each step safe to interrupt and repeat):
1. expired backups, newest first: the manifest, then the artifacts (``Catalog.delete_backup``,
   so a crash leaves debris, never a listed backup with missing pieces), then the method's own
   objects through its tool (``expire(manifest, site)`` in the method module, when it has one);
2. WAL wholly before the oldest kept PITR base, oldest first (the archive stays contiguous),
   then the site's WAL horizon moves up to that base (pgvault.wal.horizon);
3. debris (backup directories without a manifest, crashed writes) older than a grace period,
   and only when no job is running on this host.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from .catalog import layout
from .errors import ObjectNotFound, PgvaultError, UsageError
from .policy.retention import Backup, Decision, Rule, decide, wal_cutoff, wal_to_expire

log = logging.getLogger("pgvault.expire")

DEBRIS_GRACE = timedelta(hours=6)


@dataclass
class SiteExpiry:
    site: str
    decisions: list[Decision] = field(default_factory=list)
    manifests: dict = field(default_factory=dict)
    wal_cutoff: str | None = None
    wal: list[str] = field(default_factory=list)          # keys to delete
    wal_total: int = 0
    debris: list[str] = field(default_factory=list)       # keys to delete
    deleted: list[str] = field(default_factory=list)      # backup ids deleted
    errors: list[str] = field(default_factory=list)
    in_progress: list[str] = field(default_factory=list)  # live in-progress markers (debris left alone)
    wal_locked: int = 0                                   # WAL files past the cutoff but still locked
    wal_locked_until: float | None = None

    @property
    def expired(self) -> list[Decision]:
        return [d for d in self.decisions if not d.keep]

    def summary(self) -> str:
        kept = sum(d.keep for d in self.decisions)
        text = (f"site {self.site}: kept {kept}, expired {len(self.expired)} backup(s), "
                f"{len(self.wal)} WAL file(s), {len(self.debris)} debris object(s)")
        if self.in_progress:
            text += f"; debris left alone: {len(self.in_progress)} backup(s) in progress ({'; '.join(self.in_progress)})"
        if self.errors:
            text += "; errors: " + "; ".join(self.errors)
        return text

    def to_doc(self) -> dict:
        return {"site": self.site, "wal_cutoff": self.wal_cutoff, "wal_expire": len(self.wal),
                "wal_locked": self.wal_locked,
                "wal_total": self.wal_total, "debris": self.debris, "errors": self.errors,
                "in_progress": self.in_progress,
                "backups": [{"backup_id": d.backup_id, "job": d.job, "action": d.action, "reasons": d.reasons}
                            for d in self.decisions]}


def rules(policy, site: str) -> dict[str, Rule]:
    """Retention per job at one site: ``retain_at[site]`` overrides ``retain``."""
    return {name: Rule.of(job.retain_at.get(site, job.retain)) for name, job in policy.jobs.items()}


def pins(catalog) -> dict[str, dict]:
    """Pins held at the site, by backup id."""
    out = {}
    pre = layout.pins_prefix(catalog.cluster)
    for obj in catalog.site.list(pre):
        name = obj.key[len(pre):]
        if name.endswith(".json") and "/" not in name:
            out[name[:-5]] = {"key": obj.key}
    return out


def to_backup(m, pinned: bool) -> Backup:
    return Backup(m.backup_id, m.job, layout.backup_time(m.backup_id), good=m.status == "complete",
                  parent=m.parent, start_wal=m.start_wal, pinned=pinned, status=m.status)


def plan_site(policy, catalog, now: datetime, *, grace: timedelta = DEBRIS_GRACE, busy: bool = False) -> SiteExpiry:
    r = SiteExpiry(catalog.name)
    manifests = catalog.manifests()
    pinned = pins(catalog)
    backups = [to_backup(m, m.backup_id in pinned) for m in manifests]
    r.manifests = {m.backup_id: m for m in manifests}
    r.decisions = decide(backups, rules(policy, catalog.name), now)
    lock = catalog.site.capabilities.object_lock
    if lock is not None:
        hold_locked(catalog, r, now)  # before the WAL cutoff: a base kept by its lock keeps its WAL
    r.wal_cutoff = wal_cutoff(backups, r.decisions)
    listing = list(catalog.site.list(layout.wal_prefix(catalog.cluster)))
    wal = [(o.key, o.key.rsplit("/", 1)[-1]) for o in listing]
    r.wal_total = len(wal)
    doomed = set(wal_to_expire([n for _, n in wal], r.wal_cutoff))
    r.wal = sorted((k for k, n in wal if n in doomed), key=lambda k: k.rsplit("/", 1)[-1][8:])
    if lock is not None and r.wal:
        # A WAL file's lock runs from its upload (LastModified) for the site's retain period;
        # the archive is cut oldest first, so stop at the first file still locked.
        mtime = {o.key: o.mtime for o in listing}
        for i, k in enumerate(r.wal):
            if mtime[k] + lock.retain > now.timestamp():
                r.wal_locked = len(r.wal) - i
                r.wal_locked_until = mtime[k] + lock.retain
                r.wal = r.wal[:i]
                break
    # A backup in progress on any node (its marker at the site) looks like debris here: its files
    # have no manifest yet. While one is live, no debris is touched at this site.
    from .catalog.running import markers

    r.in_progress = [m.describe() for m in markers(catalog.site, catalog.cluster) if m.live(now_real())]
    if not busy and not r.in_progress:
        r.debris = _old_debris(catalog, grace)
    return r


def now_real() -> datetime:
    """Markers carry real times (like mtimes), whatever clock the tick was given."""
    return datetime.now(timezone.utc)


def hold_locked(catalog, r: SiteExpiry, now: datetime) -> None:
    """Keep every expired backup whose manifest (written last, so locked longest) is still
    under its Object Lock: S3 would refuse the delete. A later run deletes it once the lock
    has passed; the reason says until when."""
    lock = catalog.site.capabilities.object_lock
    for d in r.decisions:
        if d.keep:
            continue
        until = catalog.site.locked_until(layout.manifest(catalog.cluster, d.backup_id))
        if until is not None and until > now.timestamp():
            when = datetime.fromtimestamp(until, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            d.add(True, f"expired, but locked until {when} (S3 Object Lock, {lock.mode}): a later run deletes it")


def _old_debris(catalog, grace: timedelta) -> list[str]:
    """Keys of debris whose newest object is older than ``grace`` (real time: mtimes are real)."""
    cutoff = time.time() - grace.total_seconds()
    out = []
    for d in catalog.debris():
        if d.endswith("/"):
            objs = list(catalog.site.list(d))
            if objs and max(o.mtime for o in objs) < cutoff:
                out.extend(o.key for o in objs)
        else:
            info = catalog.site.head(d)
            if info is not None and info.mtime < cutoff:
                out.append(d)
    return out


def _method_hook(method: str):
    """The method's expiry adapter (Method.expire); None for a method this pgvault does not
    know (a manifest written by a newer one): pgvault's own artifacts are gone all the same."""
    from .methods import METHODS, get_method

    return get_method(method).expire if method in METHODS else None


def apply(catalog, plan: SiteExpiry) -> None:
    """Delete what ``plan`` expires; errors are collected in ``plan.errors``, never half-hidden."""
    for d in plan.expired:  # newest first
        m = plan.manifests[d.backup_id]
        try:
            catalog.delete_backup(d.backup_id)
            plan.deleted.append(d.backup_id)
            hook = _method_hook(m.method)
            if hook is not None:
                hook(m, catalog.site)
        except PgvaultError as exc:
            plan.errors.append(f"{d.backup_id}: {exc.message}")
    for key in plan.wal:  # oldest first
        try:
            catalog.site.delete(key)
        except PgvaultError as exc:
            plan.errors.append(f"{key}: {exc.message}")
            break  # keep the archive contiguous: stop at the first WAL we could not delete
    if plan.wal_cutoff and plan.wal_total:
        # Before the cutoff nothing is needed: a segment a node sends again later (a rewound
        # node's WAL) must not be taken for the archive's start (pgvault.wal.horizon).
        from .wal import horizon

        try:
            horizon.advance(catalog.site, catalog.cluster, plan.wal_cutoff)
        except PgvaultError as exc:
            plan.errors.append(f"WAL horizon: {exc.message}")
    for key in plan.debris:
        try:
            catalog.site.delete(key)
        except PgvaultError as exc:
            plan.errors.append(f"{key}: {exc.message}")


def expire_sites(policy, site_names: list[str] | None = None, *, now: datetime | None = None, dry_run: bool = False,
                 busy: bool = False, grace: timedelta = DEBRIS_GRACE) -> list[SiteExpiry]:
    """Plan (and unless ``dry_run``, apply) expiry at each named site (all sites by default)."""
    from .catalog.catalog import open_catalogs

    now = now or datetime.now(timezone.utc)
    names = list(policy.sites) if site_names is None else site_names
    out = []
    for name, cat in open_catalogs(policy, names).items():
        try:
            plan = plan_site(policy, cat, now, grace=grace, busy=busy)
        except PgvaultError as exc:
            # An unreadable site is left alone: never expire from a partial listing.
            out.append(SiteExpiry(name, errors=[f"cannot read the site: {exc.message}"]))
            continue
        if not dry_run:
            apply(cat, plan)
        out.append(plan)
    return out


# -- pins

def pin(policy, backup_id: str, site: str | None, *, note: str = "", now: datetime | None = None,
        remove: bool = False) -> list[str]:
    """Pin (or unpin) ``backup_id`` at ``site`` or at every site that holds it; returns the sites."""
    from .catalog.catalog import open_catalogs
    from .sites.base import put_bytes

    if site is not None and site not in policy.sites:
        raise UsageError(f"no site {site!r} in the policy", f"sites: {', '.join(policy.sites)}")
    done = []
    for name, cat in open_catalogs(policy, [site] if site else list(policy.sites)).items():
        key = layout.pin_key(policy.cluster.name, backup_id)
        if remove:
            if cat.site.head(key) is not None:
                cat.site.delete(key)
                done.append(name)
            continue
        try:
            cat.manifest(backup_id)
        except ObjectNotFound:
            continue
        doc = {"version": layout.FORMAT_VERSION, "backup_id": backup_id, "note": note,
               "pinned_at": (now or datetime.now(timezone.utc)).isoformat()}
        put_bytes(cat.site, key, (json.dumps(doc, indent=2) + "\n").encode())
        done.append(name)
    if not done:
        where = f"site {site!r}" if site else "any site"
        raise UsageError(f"backup {backup_id} is {'not pinned at' if remove else 'not held at'} {where}",
                         "list backups and pins with pgvault expire --dry-run")
    return done
