"""Snapshot drills (the ``snapshot`` drill route: zfs, btrfs): receive the snapshot chain from one site into a fresh
dataset/directory next to production's volumes, start it in the scratch area, and remove the
received copy at teardown (registered before anything is received)."""
from __future__ import annotations

import secrets
from pathlib import Path

from .. import pg
from ..errors import PgvaultError
from .scratch import SCRATCH_SETTINGS, Scratch, slug
from .sources import DrillRun, Restored, choose_backup, only_site


def receive_target(run: DrillRun, drv) -> str:
    """Where the copy lands: ``receive_into`` or next to the job's first volume; always new."""
    return drv.drill_target(run.drill.receive_into, f"pgvault-drill-{slug(run.drill.name)}-{secrets.token_hex(3)}")


def restore_snapshot(run: DrillRun, scratch: Scratch) -> Restored:
    if run.drill.target_kind in ("offset", "canary"):
        # A point in time: the snapshot is the base, archived WAL does the rest.
        from .source_pitr import restore_pitr

        return restore_pitr(run, scratch)
    from ..restore.snapshot import receive_from_site, snapshot_driver

    policy = only_site(run.policy, run.site)
    m = choose_backup(policy, run.drill, run.site, run.method)
    job = policy.jobs.get(m.job)
    if job is None:
        raise PgvaultError(f"backup {m.backup_id} was taken by job {m.job!r}, which the policy no longer has",
                           "name the job in the drill's source")
    drv = snapshot_driver(job.method, m.job, job)
    target = receive_target(run, drv)
    scratch.on_teardown(f"remove {target}", lambda: drv.remove_received(target))
    r = receive_from_site(policy, m.job, m.backup_id, target, from_site=run.site, port=scratch.port)
    inst = scratch.new_instance(Path(r.pgdata))
    conf = dict(SCRATCH_SETTINGS, wal_level="replica", max_wal_senders=0)
    inst.configure(**conf)
    pg.chown_to_run_user(inst.pgdata / "postgresql.auto.conf")
    inst.start()
    chain = f" (chain {' -> '.join(r.chain)})" if len(r.chain) > 1 else ""
    return Restored(inst, m.backup_id, m, target=f"{m.method} snapshot {m.backup_id}{chain} received into {target}")
