"""``pgvault standby create NAME``: build the delayed standby of a ``method: standby`` job on
this host with pg_basebackup, configure it, start it, and wait until it replays.

Its configuration (appended to postgresql.auto.conf, later lines win over what the copy
brought from the primary):

- ``recovery_min_apply_delay`` = the promised delay;
- WAL from its own physical replication slot on the primary (``wal_source: slot``, the slot
  made by pg_basebackup ``--create-slot``), or from the archive through ``pgvault wal-fetch``
  (``wal_source: archive``: restore_command, no primary_conninfo);
- ``archive_mode = off`` and an empty ``archive_command``: the copy inherits production's
  archive settings, and a standby that archived (archive_mode = always) would write into
  production's archive;
- ``hot_standby = on`` (``restore --via-standby`` reads the table from it, and a recovery target
  with ``recovery_target_action = pause`` needs it), and no promote trigger file: nothing but an
  explicit ``pg_ctl promote`` ends its recovery, and pgvault never runs one on it;
- its port, socket directory and listen address, from the job's conninfo, so a plain
  ``pg_ctl start -D PGDATA`` (systemd, an operator) brings it back exactly as pgvault does."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import pg, proc
from ..errors import DatabaseError, UsageError
from .standby import get_standby, local_pgdata

log = logging.getLogger("pgvault.standby")


@dataclass
class Built:
    name: str
    pgdata: str
    port: int
    slot: str | None
    delay_seconds: float
    settings: dict
    timings: dict = field(default_factory=dict)


def endpoint(conninfo: str) -> tuple[str, int]:
    """(host, port) of the standby's conninfo: a socket directory or 127.0.0.1.

    >>> endpoint("host=/tmp/sb port=5499 user=postgres")
    ('/tmp/sb', 5499)
    >>> endpoint("host=127.0.0.1 port=6000")
    ('127.0.0.1', 6000)
    """
    from psycopg.conninfo import conninfo_to_dict

    d = conninfo_to_dict(conninfo)
    host, port = d.get("host"), d.get("port")
    if not host or not port:
        raise UsageError(f"the standby's conninfo must name its host (socket directory or 127.0.0.1) and port: "
                         f"{pg.redact_conninfo(conninfo)}", "e.g. conninfo: 'host=/var/run/postgresql port=5433 user=postgres'")
    return str(host), int(port)


def settings(name: str, job, policy_file: str, primary_conninfo: str, pgvault_cmd: str) -> dict:
    """The standby's own settings (pure).

    >>> from pgvault.policy.model import StandbyJob
    >>> j = StandbyJob(method="standby", conninfo="host=/s port=5499 user=postgres", delay="1h")
    >>> s = settings("undo", j, "/p.yaml", "host=/p port=5432 user=postgres", "pgvault")
    >>> s["recovery_min_apply_delay"], s["archive_mode"], s["primary_slot_name"], s["restore_command"]
    ('3600000ms', False, 'pgvault_undo', '')
    >>> s["primary_conninfo"]
    'host=/p port=5432 user=postgres application_name=undo'
    >>> a = settings("undo", j.model_copy(update={"wal_source": "archive"}), "/p.yaml", "x", "pgvault")
    >>> a["primary_conninfo"], a["restore_command"]
    ('', 'pgvault --policy /p.yaml wal-fetch %f %p')
    """
    host, port = endpoint(job.conninfo)
    s = {"recovery_min_apply_delay": f"{int(job.delay.total_seconds() * 1000)}ms",
         "hot_standby": True, "archive_mode": False, "archive_command": "", "promote_trigger_file": "",
         "port": port}
    if host.startswith("/"):
        s.update(unix_socket_directories=host, listen_addresses="")
    else:
        s.update(listen_addresses=host)
    if job.wal_source == "slot":
        s.update(primary_conninfo=f"{primary_conninfo} application_name={name}", primary_slot_name=job.slot_name(name),
                 restore_command="")
    else:
        s.update(primary_conninfo="", primary_slot_name="",
                 restore_command=f"{pgvault_cmd} {proc.quote(['--policy', policy_file])} wal-fetch %f %p")
    return s


def basebackup_argv(bindir: str, pgdata: str, primary_conninfo: str, slot: str | None, create_slot: bool) -> list[str]:
    """
    >>> basebackup_argv("/b", "/d", "port=1", "s", True)[1:]
    ['--pgdata', '/d', '--dbname', 'port=1', '--wal-method', 'stream', '--checkpoint', 'fast', '--no-sync', '--slot', 's', '--create-slot']
    """
    argv = [str(Path(bindir) / "pg_basebackup"), "--pgdata", pgdata, "--dbname", primary_conninfo,
            "--wal-method", "stream", "--checkpoint", "fast", "--no-sync"]
    if slot:
        argv += ["--slot", slot] + (["--create-slot"] if create_slot else [])
    return argv


def instance(job) -> pg.Instance:
    """The standby as a local instance (its socket directory and port from the conninfo)."""
    host, port = endpoint(job.conninfo)
    if host.startswith("/"):
        return pg.Instance(job.pgdata, port, socket_dir=host)
    return pg.Instance(job.pgdata, port, socket_dir=Path(job.pgdata).parent, listen_addresses=host)


def create(policy, name: str, *, policy_file: str, timeout: float = 600) -> Built:
    job = get_standby(policy, name)
    pgdata = local_pgdata(name, job)
    if job.patroni_member:
        raise UsageError(f"standby {name!r} is Patroni member {job.patroni_member!r}: Patroni builds its members",
                         "set recovery_min_apply_delay in the member's Patroni configuration (docs/standby.md)")
    t0 = time.monotonic()
    pg.ensure_empty_target(pgdata)
    pg.chown_to_run_user(pgdata)
    with pg.connect(policy.cluster.conninfo) as conn:
        info = pg.server_info(conn)
        if info.in_recovery:
            raise UsageError("the policy's cluster is itself in recovery", "point cluster.conninfo at the primary")
        slot = job.slot_name(name) if job.wal_source == "slot" else None
        exists = bool(slot and pg.scalar(conn, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)))
    bindir = pg.bin_dir(info.major, policy.cluster.bin_dir)
    proc.run(basebackup_argv(bindir, pgdata, policy.cluster.conninfo, slot, not exists), user=pg.run_user(),
             hint="pg_basebackup needs a replication connection to the primary (pg_hba.conf: replication)")
    t1 = time.monotonic()
    s = settings(name, job, policy_file, policy.cluster.conninfo, proc.pgvault_command())
    inst = instance(job)
    inst.configure(**s)
    (Path(pgdata) / "standby.signal").touch()
    pg.chown_to_run_user(Path(pgdata) / "standby.signal")
    inst.start(timeout=int(timeout))
    wait_replaying(job, timeout)
    return Built(name, pgdata, inst.port, slot, job.delay.total_seconds(), s,
                 {"basebackup": round(t1 - t0, 3), "start": round(time.monotonic() - t1, 3)})


def wait_replaying(job, timeout: float) -> None:
    """Until the standby accepts connections in recovery and is not paused."""
    from .standby import probe

    def ready():
        f = probe(job, timeout=5)
        return f["reachable"] and f["in_recovery"] and not f["paused"]

    try:
        proc.wait_until(ready, timeout, "the standby to accept read-only connections", interval=0.2)
    except TimeoutError as exc:
        raise DatabaseError(f"standby at {pg.redact_conninfo(job.conninfo)}: {exc}",
                            f"see its server log next to {job.pgdata}") from None
