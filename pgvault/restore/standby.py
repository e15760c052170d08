"""``restore --before-truncate TABLE --via-standby NAME``: undo a TRUNCATE / DROP from the
delayed standby, without promoting it (docs/standby.md).

Phases, each timed:

1. **find** the damaging transaction in the WAL the standby has *received* (its own pg_wal:
   local, no download), else in the archive (pgvault.restore.finder);
2. **pause** replay, then compare: if the standby has already replayed past the damage, the
   undo cannot come from it — say so and hand back to the PITR route (``Replayed``);
3. **target**: the stop point is the *first* WAL record of the damaging transaction (for
   TRUNCATE / DROP TABLE its Standby LOCK record, which PostgreSQL logs as it takes the
   AccessExclusiveLock). Stopping before the commit is not enough on a standby that must stay
   in recovery: the startup process would hold that replayed lock for as long as it stays
   paused, and every read of the table would wait on it. Stopping before the lock leaves the
   table readable, with every row committed before the damage (no other transaction can have
   written the table between the damage's lock and its commit). PostgreSQL 15 reads recovery
   targets only at start-up, so the standby is restarted with the target on the command line
   (``recovery_target_lsn``, ``recovery_target_inclusive = off``, ``recovery_target_action =
   pause``, ``recovery_min_apply_delay = 0``), and polled until it is paused;
4. **copy** the table (or database) back with pg_dump / pg_restore (pgvault.restore.copyback);
5. **revert**, always (try/finally; SIGINT and SIGTERM become an exception so it runs, and are
   ignored while it runs): restart with no overrides — the settings were never written to a file,
   so the standby's own configuration (its delay) is back by construction — and check it
   replays again, unpaused and delayed. The standby is never promoted.

The RTO is from the command's start to the end of the copy; the revert is timed separately."""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import pg, proc, signals
from ..errors import DatabaseError, PgvaultError, UsageError
from ..lsn import format_lsn, parse_lsn
from ..methods.standby import get_standby, local_pgdata, probe
from ..methods.standby_build import instance, wait_replaying
from . import copyback

log = logging.getLogger("pgvault.standby")

_REC = re.compile(r"tx: +(\d+), lsn: ([0-9A-F]+/[0-9A-F]+),")


class Replayed(PgvaultError):
    """The damage has already been replayed on the standby: only the PITR route can undo it."""

    def __init__(self, message: str, facts: dict):
        super().__init__(message, "pgvault falls back to the PITR route (a base backup and archived WAL)")
        self.facts = facts


@dataclass
class UndoResult:
    standby: str
    table: str
    database: str
    kind: str
    xid: int
    commit_lsn: str
    stop_lsn: str
    replayed_lsn_before: str
    paused_at_lsn: str | None = None
    copied_back: bool = False
    copy_back: list[str] = field(default_factory=list)
    rto_seconds: float | None = None
    timings: dict = field(default_factory=dict)
    reverted: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def first_record_lsn(bindir: str, wal_dir: str, timeline: int, start_lsn: str, xid: int) -> str | None:
    """The LSN of the first WAL record of ``xid`` at or after ``start_lsn`` in ``wal_dir``."""
    argv = [str(Path(bindir) / "pg_waldump"), "--path", wal_dir, "--timeline", str(timeline), "--start", start_lsn,
            "--xid", str(xid), "--limit", "1"]
    cp = proc.run(argv, check=False)
    m = _REC.search(cp.stdout if isinstance(cp.stdout, str) else cp.stdout.decode(errors="replace"))
    return format_lsn(parse_lsn(m.group(2))) if m else None


def wal_dirs(policy, job) -> list[str]:
    """Where the damage's WAL may already be on this host: the standby's pg_wal (what it
    received), then the primary's (a standby reads the WAL it holds before it streams again,
    so after a restart it may not have received the newest WAL yet)."""
    dirs = [str(Path(job.pgdata) / "pg_wal")]
    if policy.cluster.pgdata and (Path(policy.cluster.pgdata) / "pg_wal").is_dir():
        dirs.append(str(Path(policy.cluster.pgdata) / "pg_wal"))
    return dirs


def _find(policy, job, table, database, around, window, from_site):
    """The damaging transaction, from WAL on this host first (no download), else the archive."""
    from . import finder

    for i, wal_dir in enumerate(wal_dirs(policy, job)):
        try:
            res = finder.find(policy, table, database=database, around=around, window=window, wal_dir=wal_dir,
                              record=i == 0)
            if res.best is not None:
                return res, f"{'standby' if i == 0 else 'primary'}'s pg_wal ({wal_dir})"
        except UsageError as exc:
            log.info("%s not scannable (%s)", wal_dir, exc.message)
    _, res = finder.resolve_before_truncate(policy, table, database, around, window, from_site=from_site)
    return res, res.source


def undo(policy, name: str, table: str, *, database: str | None = None, around=None, window=None,
         copy_back_to: str, from_site: str | None = None, timeout: float = 600, say=None) -> UndoResult:
    """Bring standby ``name`` to just before the damage to ``table``, copy it back to
    ``copy_back_to``, restore its delay. A destination is required: the standby is never left
    paused at a target for a copy by hand (its delay is the promise status watches)."""
    say = say or (lambda msg: None)
    if not copy_back_to:
        raise UsageError("--via-standby needs --copy-back-to CONNINFO", "the table is copied straight into that server")
    t0 = time.monotonic()
    job = get_standby(policy, name)
    local_pgdata(name, job)
    if job.patroni_member:
        raise UsageError(f"standby {name!r} is Patroni member {job.patroni_member!r}; pgvault does not restart "
                         "a member Patroni manages", "use the PITR route (drop --via-standby), or stop Patroni on it")
    f = probe(job)
    if not f["reachable"]:
        raise DatabaseError(f"standby {name!r} unreachable: {f['error']}", f["hint"] or "start it, or drop --via-standby")
    if not f["in_recovery"]:
        raise UsageError(f"standby {name!r} is not in recovery (promoted): it holds no delayed copy",
                         "rebuild it with pgvault standby create, and use the PITR route now")
    res, source = _find(policy, job, table, database, around, window, from_site)
    best = res.best
    say(f"damaging transaction: {best.kind} of {res.table} (database {res.database}) by xid {best.xid}, committed "
        f"{best.time.isoformat() if best.time else 'at an unknown time'} at {best.lsn} (found in {source})")
    damage = Damage(best.kind, res.table, res.database, best.xid, best.lsn, best.target_lsn, tuple(res.notes))
    return undo_damage(policy, name, damage, copy_back_to, t0=t0, timeout=timeout, say=say)


@dataclass(frozen=True)
class Damage:
    """The transaction to stop before: its kind (pgvault.restore.walscan), the table (or
    database) it hit, its xid and commit LSN; DROP DATABASE: the LSN of its DROP record."""

    kind: str
    table: str
    database: str
    xid: int
    commit_lsn: str
    target_lsn: str | None = None
    notes: tuple = ()


def undo_damage(policy, name: str, damage: Damage, copy_back_to, *, t0: float | None = None,
                timeout: float = 600, say=None, whole_table: bool = False) -> UndoResult:
    """The undo once the damage is known (the canary drill knows it: it did it). ``whole_table``:
    copy the table's definition too, whatever the damage (into an empty scratch instance).
    ``copy_back_to``: a conninfo, or a function returning one, called once the standby is at
    the target (a drill makes its scratch instance then, not while the delay runs out)."""
    say = say or (lambda msg: None)
    t0 = time.monotonic() if t0 is None else t0
    job = get_standby(policy, name)
    best = damage
    timings = {"find": round(time.monotonic() - t0, 3)}
    inst = instance(job)
    bindir = pg.bin_dir(None, policy.cluster.bin_dir)
    restarted = paused = False
    result = None
    with signals.raising():
        try:
            t1 = time.monotonic()
            with pg.connect(job.conninfo) as conn:
                pg.query(conn, "SELECT pg_wal_replay_pause()")
                paused = True
                # While the startup process waits out the delay of a commit the state stays
                # 'pause requested' (PostgreSQL 15 checks a pause only once the wait is over);
                # either way the record it waits on is not applied.
                proc.wait_until(lambda: pg.replay_pause_state(conn) != "not paused", 60, "replay to pause", interval=0.02)
                replayed, tli, redo = pg.query(conn, "SELECT pg_last_wal_replay_lsn()::text, timeline_id, redo_lsn::text "
                                                     "FROM pg_control_checkpoint()")[0]
            if parse_lsn(replayed) > parse_lsn(best.commit_lsn):
                raise Replayed(f"standby {name!r} has already replayed the damage: it is at {replayed}, the "
                               f"{best.kind} (xid {best.xid}) committed at {best.commit_lsn}", {"replayed": replayed})
            first = None
            for i, wal_dir in enumerate(wal_dirs(policy, job)):
                # The primary's pg_wal may no longer reach back to the standby's redo point; the
                # damage is not replayed there, so its first record lies after the replay point.
                first = first_record_lsn(bindir, wal_dir, tli, redo if i == 0 else replayed, best.xid)
                if first:
                    break
            timings["pause"] = round(time.monotonic() - t1, 3)
            t2 = time.monotonic()
            # Stopped at once: a shutdown restartpoint would flush pages changed after the
            # damage's lock and move the consistency point past it.
            restarted = True
            inst.stop("immediate")
            stop = _stop_point(pg.controldata(job.pgdata, policy.cluster.bin_dir), first, best)
            if stop is None:
                raise Replayed(f"standby {name!r} cannot stop before the {best.kind} (xid {best.xid}) without being "
                               f"promoted: its consistency point is past the transaction's first record "
                               f"{first or '(not in its pg_wal)'}, so the damaging transaction's replayed lock would "
                               "block every read of the table", {"replayed": replayed})
            result = UndoResult(name, best.table, best.database, best.kind, best.xid, best.commit_lsn, stop, replayed,
                                timings=timings, notes=list(best.notes))
            say(f"standby {name} paused at {replayed}, before the commit of the damage; bringing it to {stop} "
                f"(before the first record of xid {best.xid}), without promoting it")
            inst.start(overrides={"recovery_target_lsn": stop, "recovery_target_inclusive": "off",
                                  "recovery_target_action": "pause", "recovery_min_apply_delay": 0})
            result.paused_at_lsn = _wait_at_target(job, stop, timeout)
            timings["to_target"] = round(time.monotonic() - t2, 3)
            src = inst.conninfo().rsplit(" dbname=", 1)[0]
            kind = copyback.DROP_TABLE if whole_table and best.kind != copyback.DROP_DATABASE else best.kind
            dest = copy_back_to() if callable(copy_back_to) else copy_back_to
            cb = copyback.plan(kind, best.table, best.database, src, dest, bindir=bindir)
            result.copy_back = cb.shell()
            t3 = time.monotonic()
            copyback.run(cb)
            result.copied_back = True
            timings["copy_back"] = round(time.monotonic() - t3, 3)
            result.rto_seconds = round(time.monotonic() - t0, 3)
            return result
        finally:
            t4 = time.monotonic()
            with signals.deferred():
                reverted = revert(job, inst, restarted=restarted, paused=paused, timeout=timeout)
            if result is not None:
                result.reverted = reverted
                timings["revert"] = round(time.monotonic() - t4, 3)


def _stop_point(control: dict, first: str | None, best) -> str | None:
    """Where the restarted standby can stop, reading the table: before the damaging
    transaction's first record (DROP DATABASE: or before its DROP record, whose database
    lock is not logged), if its redo start and consistency point both lie at or before it.

    >>> from types import SimpleNamespace as N
    >>> c = {"Latest checkpoint's REDO location": "0/2000028", "Minimum recovery ending location": "0/3000100"}
    >>> _stop_point(c, "0/3000200", N(target_lsn=None)), _stop_point(c, "0/3000000", N(target_lsn=None))
    ('0/3000200', None)
    >>> _stop_point(c, "0/3000000", N(target_lsn="0/3000400"))
    '0/3000400'
    """
    redo = parse_lsn(control["Latest checkpoint's REDO location"])
    consistent = parse_lsn(control.get("Minimum recovery ending location") or "0/0")
    for lsn in (first, best.target_lsn):
        if lsn and redo <= parse_lsn(lsn) and consistent <= parse_lsn(lsn):
            return lsn
    return None


def _wait_at_target(job, stop: str, timeout: float) -> str:
    """Poll until the standby is paused at the recovery target; its replay LSN then."""
    def at_target():
        f = probe(job, timeout=5)
        if f["reachable"] and not f["in_recovery"]:
            raise DatabaseError(f"the standby left recovery at {stop} (this must never happen)",
                                "rebuild it with pgvault standby create")
        return f["replay_lsn"] if f["reachable"] and f["pause_state"] == "paused" else None

    try:
        lsn = proc.wait_until(at_target, timeout, f"the standby to pause at {stop}", interval=0.05)
    except TimeoutError as exc:
        raise DatabaseError(str(exc), f"see the standby's server log next to {job.pgdata}") from None
    if parse_lsn(lsn) > parse_lsn(stop):
        raise DatabaseError(f"the standby paused at {lsn}, past the target {stop}", "this is a bug; the copy was not made")
    return lsn


def revert(job, inst, *, restarted: bool, paused: bool, timeout: float = 600) -> dict:
    """Give the standby its own configuration back and let it replay (delayed) again."""
    out: dict = {"restarted": restarted, "resumed": paused}
    try:
        if restarted:
            inst.stop("fast")
            inst.start()  # no overrides: the delay of its configuration files applies again
            wait_replaying(job, timeout)
        elif paused:
            with pg.connect(job.conninfo) as conn:
                if pg.replay_pause_state(conn) not in (None, "not paused"):
                    pg.query(conn, "SELECT pg_wal_replay_resume()")
        f = probe(job, timeout=5)
        out.update(in_recovery=f.get("in_recovery"), pause_state=f.get("pause_state"),
                   apply_delay_seconds=f.get("apply_delay_seconds"), ok=bool(
                       f["reachable"] and f["in_recovery"] and not f["paused"]
                       and f["apply_delay_seconds"] >= job.delay.total_seconds()))
    except PgvaultError as exc:
        log.error("standby not reverted: %s", exc.message)
        out.update(ok=False, error=exc.message)
    return out



def resume(policy, name: str, timeout: float = 600) -> dict:
    """`pgvault standby resume NAME`: give the standby its own configuration back — what the
    undo's revert does — after an undo that could not (pgvault killed with SIGKILL, the host
    rebooted mid-undo) or a pause by hand: restart it without overrides and wait until it
    replays again, unpaused. Never promotes."""
    job = get_standby(policy, name)
    local_pgdata(name, job)
    if job.patroni_member:
        raise UsageError(f"standby {name!r} is Patroni member {job.patroni_member!r}", "restart it through Patroni")
    with signals.deferred():
        return revert(job, instance(job), restarted=True, paused=False, timeout=timeout)
