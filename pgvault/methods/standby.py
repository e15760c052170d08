"""``method: standby``: a delayed replica as a recovery method (docs/standby.md).

A standby that applies WAL ``delay`` late still holds a table that was truncated or dropped
less than ``delay`` ago: the fastest undo there is (no base to download, no WAL to replay from a
region). It is not a backup that is taken, so ``backup()`` refuses; it is built once
(pgvault.methods.standby_build, ``pgvault standby create``), watched (``probe`` here, judged by
pgvault.status.evaluate), and used (pgvault.restore.standby, ``restore --via-standby``).

What ``probe`` reads, over SQL on the standby, in one statement: whether it is still in
recovery (a promoted standby is no undo any more), the replay pause state, the last replayed
and received LSNs, the commit time of the last replayed transaction and ``now()`` (the actual
delay is their difference: a working delay applies a commit no earlier than ``delay`` after it
was committed, so ``now - last replayed commit >= delay`` always holds while it works), the
configured ``recovery_min_apply_delay``, ``archive_mode`` and the WAL receiver's status."""
from __future__ import annotations

from datetime import timezone

from .. import pg
from ..errors import PgvaultError, UsageError
from ..lsn import parse_lsn
from .base import BackupFacts, Method

TOOLS = ("pg_basebackup", "pg_ctl", "pg_waldump", "pg_dump", "pg_restore")


def standby_jobs(policy) -> dict:
    """name -> StandbyJob, in policy order."""
    return {n: j for n, j in policy.jobs.items() if j.method == "standby"}


def get_standby(policy, name: str):
    jobs = standby_jobs(policy)
    if name not in jobs:
        raise UsageError(f"no standby {name!r} in the policy",
                         f"standby jobs (method: standby): {', '.join(jobs) or 'none'}")
    return jobs[name]


def local_pgdata(name: str, job) -> str:
    """The standby's data directory on this host, or a UsageError saying why it is needed."""
    if not job.pgdata:
        raise UsageError(f"standby {name!r} has no pgdata in the policy",
                         "set jobs.<name>.pgdata: pgvault builds and restarts only a standby on this host")
    return job.pgdata


def check(ctx) -> list[str]:
    """Problems of the standby as a recovery method (no side effects)."""
    job = ctx.job
    facts = probe(job)
    if not facts["reachable"]:
        return [f"standby {ctx.job_name}: {facts['error']} (HINT: pgvault standby create {ctx.job_name})"]
    out = []
    if not facts["in_recovery"]:
        out.append(f"standby {ctx.job_name}: not in recovery (promoted?): it is no delayed copy any more")
    if facts["apply_delay_seconds"] < job.delay.total_seconds():
        out.append(f"standby {ctx.job_name}: recovery_min_apply_delay {facts['apply_delay_seconds']:.0f}s is below "
                   f"the promised {job.delay.total_seconds():.0f}s")
    return out


def backup(ctx, session) -> BackupFacts:
    """A standby is not taken: it is built once and keeps itself up to date."""
    raise UsageError(f"job {ctx.job_name!r} is a standby: there is no backup to take",
                     f"build it with `pgvault standby create {ctx.job_name}`; status and check watch it")


_PROBE = """
SELECT pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() END,
       pg_last_wal_replay_lsn()::text, pg_last_wal_receive_lsn()::text,
       pg_last_xact_replay_timestamp(), now(),
       (SELECT setting::bigint FROM pg_settings WHERE name = 'recovery_min_apply_delay'),
       current_setting('archive_mode'),
       (SELECT status FROM pg_stat_wal_receiver),
       (SELECT timeline_id FROM pg_control_checkpoint())
"""


def probe(job, primary_lsn: str | None = None, timeout: float = 10.0) -> dict:
    """What the standby says about itself now, as JSON-able facts (an unreachable standby is
    a fact too). ``primary_lsn``: the primary's current LSN, for the LSN lag."""
    import psycopg

    try:
        conn = pg.connect(job.conninfo, connect_timeout=max(1, int(timeout)),
                          options=f"-c statement_timeout={int(timeout * 1000)}")
    except PgvaultError as exc:
        return {"reachable": False, "error": exc.message, "hint": exc.hint}
    try:
        row = pg.query(conn, _PROBE)[0]
    except psycopg.Error as exc:
        return {"reachable": False, "error": str(exc).strip(), "hint": None}
    finally:
        conn.close()
    in_rec, pause, replay, receive, replay_ts, now, delay_ms, archive_mode, receiver, tli = row
    facts = {"reachable": True, "in_recovery": in_rec, "pause_state": pause, "paused": pause not in (None, "not paused"),
             "replay_lsn": replay, "receive_lsn": receive, "timeline": tli,
             "last_replayed_commit": replay_ts.astimezone(timezone.utc).isoformat() if replay_ts else None,
             "checked_at": now.astimezone(timezone.utc).isoformat(),
             "delay_seconds": (now - replay_ts).total_seconds() if replay_ts else None,
             "apply_delay_seconds": (delay_ms or 0) / 1000.0, "archive_mode": archive_mode,
             "receiver": receiver, "lsn_lag_bytes": None}
    if primary_lsn and replay:
        facts["lsn_lag_bytes"] = max(parse_lsn(primary_lsn) - parse_lsn(replay), 0)
    # The undo window: damage committed after the last replayed commit has not reached the
    # standby yet; it holds WAL up to what it received (or replayed, fetching from the archive).
    facts["window"] = {"from": facts["last_replayed_commit"], "to": facts["checked_at"],
                       "to_lsn": receive or replay}
    return facts


def probe_all(policy, primary_lsn: str | None, timeout: float) -> dict:
    """Every standby of the policy, probed one after another (each bounded by ``timeout``)."""
    out = {}
    for name, job in standby_jobs(policy).items():
        f = probe(job, primary_lsn, timeout)
        f.update(promised_seconds=job.delay.total_seconds(), wal_source=job.wal_source,
                 patroni_member=job.patroni_member)
        out[name] = f
    return out


METHOD = Method(
    name="standby", job_model="StandbyJob", tools=TOOLS, check=check, backup=backup,
    restore_route="standby", drill_route="standby",
    description="a delayed replica (recovery_min_apply_delay): undo a TRUNCATE/DROP by copying the table back from it")
