"""Point-in-time drills (barman bases + archived WAL): plan, lay the base down and recover in
the scratch area with pgvault.restore.pitr, to the drill's target, then promote.

Strictly one site: the restore sees a policy with only the drilled site, and so does the
restore_command — it runs ``pgvault wal-fetch`` against a one-site copy of the policy written
into the scratch directory, so WAL cannot quietly come from another site either."""
from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import yaml

from .. import pg
from ..errors import PgvaultError
from .load import policy_dir
from .scratch import Scratch
from ..methods import all_methods, get_method
from .sources import DrillRun, Restored, backups_at, choose_backup, requires

WAL_TIMEOUT = 120.0


def one_site_document(raw: dict, site: str) -> dict:
    """The policy document narrowed to one site: other sites, their jobs' references and the
    drills are dropped.

    >>> doc = {"version": 1, "sites": {"a": {}, "b": {}}, "wal": {"sites": ["a", "b"]}, "drills": ["x"],
    ...        "jobs": {"d": {"method": "logical", "sites": ["b"]}, "p": {"method": "barman", "sites": ["a", "b"],
    ...                 "retain_at": {"b": {}}}}}
    >>> one_site_document(doc, "a")
    {'version': 1, 'sites': {'a': {}}, 'wal': {'sites': ['a']}, 'drills': [], 'jobs': {'p': {'method': 'barman', 'sites': ['a'], 'retain_at': {}}}}
    """
    doc = dict(raw)
    doc["sites"] = {site: raw["sites"][site]}
    if isinstance(raw.get("wal"), dict):
        doc["wal"] = dict(raw["wal"], sites=[site])
    doc["drills"] = []
    jobs = {}
    needs_sites = {m.name for m in all_methods() if m.needs_sites}
    for name, job in (raw.get("jobs") or {}).items():
        job = dict(job)
        job["sites"] = [s for s in job.get("sites") or [] if s == site]
        if isinstance(job.get("retain_at"), dict):
            job["retain_at"] = {k: v for k, v in job["retain_at"].items() if k == site}
        # A job whose method needs sites (the policy loader insists) goes with its last site.
        if job["sites"] or job.get("method") not in needs_sites:
            jobs[name] = job
    doc["jobs"] = jobs
    return doc


def one_site_policy(policy, site: str, directory: Path):
    """Write the one-site policy next to the scratch instance and load it (it carries no
    credentials: policies never do). Relative paths keep their meaning via absolute globs."""
    from ..policy.load import load_policy

    src = getattr(policy, "_source", None)
    if not src:
        raise PgvaultError("a point-in-time drill needs the policy file (restore_command reads it)",
                           "run drills through the pgvault CLI with --policy FILE")
    raw = yaml.safe_load(Path(src).read_text())
    doc = one_site_document(raw, site)
    if doc.get("state_dir") and not os.path.isabs(doc["state_dir"]):
        doc["state_dir"] = str(policy_dir(policy) / doc["state_dir"])
    path = directory / "policy.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.chmod(path, 0o644)
    return load_policy(path)


def target_for(drill, started_at: datetime, canary=None):
    """The recovery target of a PITR drill.

    >>> from datetime import timezone
    >>> from pgvault.drills.model import Drill
    >>> d = Drill(name="x", source={"method": "barman"}, target="-90m")
    >>> t = target_for(d, datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc))
    >>> t.kind, t.time.isoformat()
    ('time', '2026-11-25T10:30:00+00:00')
    >>> target_for(d.model_copy(update={"target": "random"}), datetime.now(timezone.utc)).kind
    'latest'
    """
    from ..restore import plan as planner

    if drill.target_kind == "offset":
        return planner.Target("time", time=started_at - drill.target_offset, how=f"{drill.target} before the drill started")
    if drill.target_kind == "canary":
        return planner.Target("lsn", lsn=planner.parse_lsn(canary.planted_lsn),
                              how=f"LSN {canary.planted_lsn}, just before the canary's TRUNCATE")
    return planner.Target("latest", how="the end of the archived WAL")


def target_time(target, started_at: datetime, canary=None) -> datetime:
    """The instant the target stands for, for RPO: its time, the canary's, or the drill's start."""
    if target.kind == "time":
        return target.time
    return canary.planted_at if canary is not None else started_at


def wait_for_wal(policy, site: str, wal_file: str, timeout: float = WAL_TIMEOUT) -> None:
    """PostgreSQL counts a segment archived once wal-push made it durable — at a site that was
    down, that may mean the spool. Wait (bounded) until this site holds the canary's segment."""
    from ..proc import wait_until
    from ..sites import open_site
    from ..wal.item import stored_variants

    s = open_site(site, policy.sites[site])
    try:
        wait_until(lambda: stored_variants(s, policy.cluster.name, wal_file), timeout,
                   f"{wal_file} at site {site}", interval=0.5)
    except TimeoutError:
        raise PgvaultError(f"site {site!r} does not hold WAL file {wal_file} (the canary's TRUNCATE) "
                           f"{timeout:.0f}s after it was archived",
                           "the site may be down and its WAL spooled; see pgvault wal-status") from None


def newest_before(policy, drill, site: str, method: str, when: datetime | None) -> str:
    """A snapshot-sourced PITR drill recovers from the newest snapshot of its source that ends
    before the target (the planner alone might pick another method's base)."""
    found = [m for m in backups_at(policy, drill, site, method)
             if when is None or (m.stop_time or m.finished_at) <= when]
    if not found:
        raise PgvaultError(f"site {site!r} holds no {method} snapshot of {drill.source.job or method} "
                           f"taken before the target {when.isoformat() if when else ''}",
                           "take a snapshot before the point you want to recover to")
    return found[-1].backup_id


def restore_pitr(run: DrillRun, scratch: Scratch) -> Restored:
    requires("pgvault.restore.pitr", "point-in-time")
    from ..restore import pitr

    policy = one_site_policy(run.policy, run.site, scratch.dir)
    drill = run.drill
    if drill.target_kind == "canary":
        wait_for_wal(policy, run.site, run.canary.wal_file)
    target = target_for(drill, run.started_at, run.canary)
    when = target_time(target, run.started_at, run.canary)
    backup_id = None
    if drill.target_kind == "random":
        backup_id = choose_backup(policy, drill, run.site, run.method).backup_id
    elif get_method(run.method).restore_route == "snapshot":
        backup_id = newest_before(policy, drill, run.site, run.method, None if target.kind == "latest" else when)
    dest = scratch.pgdata
    # The instance is known before recovery starts, so the teardown stops it whatever happens.
    scratch.instance = pg.Instance(dest, scratch.port, socket_dir=dest, bindir=scratch.bindir)
    result = pitr.run(policy, target, target_dir=str(dest), from_site=run.site, port=scratch.port, start=True,
                      action="promote", backup_id=backup_id)
    out = result.outcome or {}
    if out.get("state") != "promoted":
        raise PgvaultError(f"recovery ended {out.get('state', 'without an outcome')}, not promoted",
                           f"PostgreSQL said: {out.get('postgres_says') or '-'}")
    base = result.plan["base"]
    replayed = out.get("last_replayed_transaction_time")
    replayed = datetime.fromisoformat(replayed) if isinstance(replayed, str) else replayed
    restored = Restored(scratch.instance, base["backup_id"], None,
                        target=f"base {base['backup_id']} + WAL to {result.plan['target']}",
                        target_time=when,
                        replayed_until=replayed)
    restored.notes += [str(n) for n in result.warnings]
    if out.get("postgres_says"):
        restored.notes.append(f"PostgreSQL: {out['postgres_says']}")
    return restored
