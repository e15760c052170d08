"""Point-in-time restore, executed in phases: gather (bases and WAL listings from the sites,
pgvault.restore.gather), plan (pure, pgvault.restore.plan — coverage is proven BEFORE anything
touches disk), fetch the base with the stock Barman tools, write the recovery settings, and
optionally start the instance and wait until the target is reached."""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .. import pg, proc
from ..catalog import layout
from ..errors import DatabaseError, NotSupported, PgvaultError
from ..methods import barman_tools as bt
from ..sites import open_site
from . import plan as planner
from . import prefetch
from .gather import archive_of, bases_from_manifest, gather, method_of  # noqa: F401  (pitr.* names, as before)

log = logging.getLogger("pgvault.restore.pitr")

RECOVERY_TIMEOUT = 3600


# -- execute


def policy_file(policy) -> str:
    src = getattr(policy, "_source", None)
    return str(Path(src).resolve()) if src else os.environ.get("PGVAULT_POLICY", "/etc/pgvault/policy.yaml")


def restore_command(policy, wal_site: str | None) -> str:
    """restore_command through this pgvault (absolute invocation: it runs as postgres)."""
    from ..proc import pgvault_command

    cmd = pgvault_command(policy_file(policy)) + " wal-fetch %f %p"
    if wal_site and wal_site in policy.sites:
        cmd += f" --from-site {proc.quote([wal_site])}"
    return cmd


def recovery_settings(p: planner.Plan, restore_cmd: str, action: str, port: int | None) -> dict:
    """The settings appended to the restored postgresql.auto.conf (later lines win).

    >>> from datetime import datetime, timezone
    >>> b = planner.Base("b", "s", "barman", 1, 0, 1, datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 1, tzinfo=timezone.utc))
    >>> t = planner.Target("lsn", lsn=0x3000060)
    >>> s = recovery_settings(planner.Plan(t, b, "s", 1, "x", "y", 1, 0, None), "cmd %f %p", "pause", 5433)
    >>> s["recovery_target_lsn"], s["archive_mode"], s["recovery_target_action"], s["port"]
    ('0/3000060', False, 'pause', 5433)
    """
    s = {"restore_command": restore_cmd, "recovery_target_timeline": "latest",
         # The restored instance must never write into the production archive.
         "archive_mode": False, "archive_command": "", "hot_standby": True,
         "primary_conninfo": "", "primary_slot_name": ""}
    t = p.target
    if t.kind == "time":
        s["recovery_target_time"] = t.time.strftime("%Y-%m-%d %H:%M:%S.%f+00")
    elif t.kind == "lsn":
        s["recovery_target_lsn"] = planner.format_lsn(t.lsn)
    elif t.kind == "xid":
        s["recovery_target_xid"] = str(t.xid)
    if t.kind != "latest":
        s["recovery_target_action"] = action
        if not t.inclusive:
            s["recovery_target_inclusive"] = False
    if port:
        s["port"] = port
    return s


def fetch_base(policy, base: planner.Base, dest: Path) -> str:
    """Lay the base backup down in ``dest``: pgvault's own tars, or an earlier engine's Barman
    backup with the stock Barman tools. Returns the site it came from: the planned one, or
    another holding the same backup when the planned copy failed its checksum."""
    ref = base.ref
    route = ref.get("route")
    caps = open_site(base.site, policy.sites[base.site]).capabilities
    if route == "pgvault":
        # a base taken by pgvault's engine: parallel download, decompress and untar, from the
        # chosen site first, another site's copy if a checksum fails (restore/base_tar.py)
        from .base_tar import lay_down

        return lay_down(policy, base.site, ref["manifest"], dest)
    if route == "barman-cloud":
        cloud = caps.barman_cloud
        proc.run(bt.cloud_restore_argv(layout.barman_cloud_url(cloud.url), ref["server"], ref["backup_id"], str(dest),
                                       cloud), extra_env=cloud.env,
                 hint=f"check that site {base.site!r} is reachable; barman-cloud-backup-list shows its backups")
    elif route == "barman-server":
        conf = caps.local_root / ref["config"]
        data = caps.local_root / layout.barman_home(ref["server"]) / ref["server"] / "base" / ref["backup_id"] / "data"
        if _plain_copy_ok(data):
            # Barman's postgres method keeps a plain PGDATA (pg_basebackup -Fp); with no tablespaces
            # a straight copy is what `barman recover` does, without its rsync and WAL staging
            # (measured: bench/pitr_restore.py). `barman recover` stays the stock way (docs/barman.md).
            proc.run(["cp", "-a", "--", f"{data}/.", str(dest)], hint=f"or restore with: barman -c {conf} recover ...")
        else:
            proc.run(bt.server_argv(str(conf), "recover", "--jobs", "2", ref["server"], ref["backup_id"], str(dest)),
                     hint=f"run: barman -c {conf} check-backup {ref['server']} {ref['backup_id']}")
    elif route == "snapshot":
        # A snapshot base: cloned locally or received from the site, copied out (pgvault.restore.snapshot_base).
        from ..catalog.formats import Manifest
        from .snapshot_base import fetch_base as lay_down_snapshot

        lay_down_snapshot(policy, Manifest.model_validate(ref["manifest"]), base.site, dest)
    elif (meth := method_of(base.method)) is not None and meth.lay_down_base is not None:
        meth.lay_down_base(policy, base.site, ref, dest)  # the method's own adapter (Method contract)
    else:
        raise NotSupported(f"base {base.backup_id} at site {base.site!r} was taken by method {base.method!r}, "
                           "which this pgvault cannot lay down for a point-in-time restore yet",
                           "pick a barman base with --from-site, or restore that backup with its own method")
    return base.site


def _plain_copy_ok(data: Path) -> bool:
    """A Barman server backup that is a plain data directory without tablespaces."""
    tblspc = data / "pg_tblspc"
    return (data / "PG_VERSION").is_file() and (data / "backup_label").is_file() and \
        (not tblspc.is_dir() or not any(tblspc.iterdir()))


def prepare(dest: Path, settings: dict) -> None:
    """Make a laid-down base ready to recover: no stale pid/signal files, our settings last."""
    for name in ("postmaster.pid", "postmaster.opts", "standby.signal", "recovery.signal", "recovery.conf"):
        (dest / name).unlink(missing_ok=True)
    # Files a base may carry that would be wrong on this instance.
    shutil.rmtree(dest / "pg_replslot", ignore_errors=True)
    (dest / "pg_replslot").mkdir(mode=0o700, exist_ok=True)
    (dest / "pg_wal" / "archive_status").mkdir(parents=True, exist_ok=True)
    inst = pg.Instance(dest, settings.get("port") or 5432, socket_dir=dest)
    inst.configure(**settings)
    (dest / "recovery.signal").touch()
    os.chmod(dest, 0o700)
    pg.chown_to_run_user(dest, recursive=True)


@dataclass
class Outcome:
    state: str                        # paused | promoted | shut down
    timeline: int | None = None
    last_replay_time: datetime | None = None
    replay_lsn: str | None = None
    stop_line: str | None = None      # PostgreSQL's "recovery stopping ..." log line


def _stop_line(logfile: Path) -> str | None:
    try:
        lines = logfile.read_text(errors="replace").splitlines()
    except OSError:
        return None
    hits = [ln for ln in lines if "recovery stopping" in ln or "last completed transaction" in ln]
    return hits[-1].split("LOG:", 1)[-1].strip() if hits else None


def fresh_log(logfile: Path) -> None:
    """Give this start a log of its own: a previous run's (``--force`` into the same target
    keeps the log, which lives beside the target) becomes ``<log>.1``. The wait below judges
    the server by its log ("FATAL", "recovery stopping"); an old run's lines would mislead it."""
    try:
        os.replace(logfile, logfile.with_name(logfile.name + ".1"))
    except FileNotFoundError:
        pass


def start_and_wait(dest: Path, port: int, action: str, timeout: float = RECOVERY_TIMEOUT) -> Outcome:
    """Start the restored instance and wait until recovery reaches its target."""
    inst = pg.Instance(dest, port, socket_dir=dest)
    fresh_log(inst.logfile)
    inst.start(wait=False)
    deadline = time.monotonic() + timeout
    seen = False
    while True:
        if time.monotonic() > deadline:
            raise DatabaseError(f"recovery in {dest} did not reach its target within {timeout:.0f}s",
                                f"see the server log {inst.logfile}")
        if not pg.running_postmaster(dest):
            text = inst.logfile.read_text(errors="replace") if inst.logfile.exists() else ""
            if seen or "FATAL" in text or "PANIC" in text:
                if action == "shutdown" and "recovery stopping" in text:
                    return Outcome("shut down", stop_line=_stop_line(inst.logfile))
                raise DatabaseError(f"the restored instance in {dest} stopped during recovery:\n{text[-3000:]}",
                                    f"see the server log {inst.logfile}")
            time.sleep(0.2)
            continue
        seen = True
        try:
            conn = inst.connect()
        except PgvaultError:
            time.sleep(0.2)
            continue
        try:
            state = pg.replay_pause_state(conn)
            paused = state == "paused"
            if state is None or paused:
                # After a promotion the checkpoint timeline lags; the current WAL file names it.
                row = pg.query(conn, """SELECT pg_last_xact_replay_timestamp(),
                    CASE WHEN pg_is_in_recovery() THEN (SELECT timeline_id FROM pg_control_checkpoint())
                         ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END,
                    CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text ELSE pg_current_wal_lsn()::text END""")[0]
                return Outcome("paused" if paused else "promoted", row[1], row[0], row[2], _stop_line(inst.logfile))
        finally:
            conn.close()
        time.sleep(0.2)


@dataclass
class PitrResult:
    plan: dict
    target_dir: str | None = None
    started: bool = False
    port: int | None = None           # where the started instance listens (socket in target_dir)
    outcome: dict | None = None
    warnings: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    base_site: str | None = None      # where the base came from (another site's copy on a bad checksum)


def run(policy, target: planner.Target, *, target_dir: str | None, from_site: str | None = None,
        port: int | None = None, start: bool = False, plan_only: bool = False, action: str = "promote",
        force: bool = False, backup_id: str | None = None) -> PitrResult:
    t0 = time.monotonic()
    g = gather(policy, from_site)
    if backup_id:
        g.bases = [b for b in g.bases if b.backup_id == backup_id]
        if not g.bases:
            from ..errors import UsageError

            raise UsageError(f"no base backup {backup_id} at any reachable site", "list backups with pgvault list")
    p = planner.plan(target, g.bases, g.archives, from_site=from_site)
    result = PitrResult(p.as_dict(), target_dir, warnings=g.warnings + p.notes)
    result.timings["plan"] = round(time.monotonic() - t0, 3)
    if plan_only:
        return result
    from ..errors import UsageError

    if not target_dir:
        raise UsageError("--target-dir is required to restore", "give an empty or new directory, or use --plan")
    dest = Path(target_dir).resolve()
    pg.ensure_empty_target(dest, force=force)
    wal_site = from_site or (p.wal_site if p.wal_site in policy.sites else p.base.site)
    fallback = restore_command(policy, wal_site)
    fetcher = None
    if start:
        # WAL is fetched while the base is laid down (both are I/O bound); the staging dir sits
        # beside the target because Barman's recover owns the target's contents.
        staging = dest.parent / f".{dest.name}.{prefetch.STAGING}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        fetcher = prefetch.Prefetcher(policy, p.wal_names, staging, from_site=wal_site).start()
    try:
        t1 = time.monotonic()
        result.base_site = fetch_base(policy, p.base, dest)
        result.timings["base"] = round(time.monotonic() - t1, 3)
        cmd = prefetch.restore_command(fetcher.staging, fallback) if fetcher else fallback
        prepare(dest, recovery_settings(p, cmd, action, port))
        if fetcher:
            t2 = time.monotonic()
            result.port = port or pg.free_port()
            out = start_and_wait(dest, result.port, action)
            result.timings["recovery"] = round(time.monotonic() - t2, 3)
            result.started = True
            result.outcome = {"state": out.state, "timeline": out.timeline, "replay_lsn": out.replay_lsn,
                              "last_replayed_transaction_time": out.last_replay_time.isoformat() if out.last_replay_time else None,
                              "postgres_says": out.stop_line, "prefetched_segments": fetcher.fetched}
    finally:
        if fetcher:
            fetcher.stop()
    result.timings["total"] = round(time.monotonic() - t0, 3)
    return result
