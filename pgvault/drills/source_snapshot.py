"""Snapshot drills (zfs, btrfs): receive the snapshot chain from one site into a fresh
dataset/directory next to production's volumes, start it in the scratch area, and remove the
received copy at teardown (registered before anything is received)."""
from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from .. import pg, proc
from ..errors import PgvaultError
from .scratch import SCRATCH_SETTINGS, Scratch, slug
from .sources import DrillRun, Restored, choose_backup, only_site


def receive_target(run: DrillRun, job) -> str:
    """Where the copy lands: ``receive_into`` or next to the job's first volume; always new."""
    name = f"pgvault-drill-{slug(run.drill.name)}-{secrets.token_hex(3)}"
    if job.method == "zfs":
        parent = run.drill.receive_into or job.datasets[0].rsplit("/", 1)[0]
        return f"{parent}/{name}"
    base = run.drill.receive_into or str(Path(job.subvolumes[0]).parent / ".pgvault-drills")
    return str(Path(base) / name)


def _remove_zfs(target: str) -> None:
    from ..methods import zfs
    from ..proc import wait_until

    if not zfs.exists(target):
        return
    # zfs-fuse may report a just-stopped server's mount busy for a moment.
    wait_until(lambda: proc.run(zfs.destroy_argv(target, recursive=True), check=False).returncode == 0
               or not zfs.exists(target), 30, f"zfs destroy -r {target}", interval=0.2)


def _remove_btrfs(target: str) -> None:
    from ..methods import btrfs

    root = Path(target)
    if not root.exists():
        return
    # Deepest first: a subvolume cannot be deleted while it holds another.
    dirs = sorted((Path(d) for d, _, _ in os.walk(root)), key=lambda p: len(p.parts), reverse=True)
    for d in dirs:
        if d.is_dir() and not d.is_symlink() and os.stat(d).st_ino == 256 and btrfs.is_subvolume(str(d)):
            proc.run(btrfs.delete_argv(str(d)), check=False)
    shutil.rmtree(root, ignore_errors=True)
    if root.exists():
        raise PgvaultError(f"{target} could not be removed")


def restore_snapshot(run: DrillRun, scratch: Scratch) -> Restored:
    if run.drill.target_kind in ("offset", "canary"):
        # A point in time: the snapshot is the base, archived WAL does the rest.
        from .source_pitr import restore_pitr

        return restore_pitr(run, scratch)
    from ..restore.snapshot import receive_from_site

    policy = only_site(run.policy, run.site)
    m = choose_backup(policy, run.drill, run.site, run.method)
    job = policy.jobs.get(m.job)
    if job is None:
        raise PgvaultError(f"backup {m.backup_id} was taken by job {m.job!r}, which the policy no longer has",
                           "name the job in the drill's source")
    target = receive_target(run, job)
    scratch.on_teardown(f"remove {target}", lambda: (_remove_zfs if job.method == "zfs" else _remove_btrfs)(target))
    r = receive_from_site(policy, m.job, m.backup_id, target, from_site=run.site, port=scratch.port)
    inst = scratch.new_instance(Path(r.pgdata))
    conf = dict(SCRATCH_SETTINGS, wal_level="replica", max_wal_senders=0)
    inst.configure(**conf)
    pg.chown_to_run_user(inst.pgdata / "postgresql.auto.conf")
    inst.start()
    chain = f" (chain {' -> '.join(r.chain)})" if len(r.chain) > 1 else ""
    return Restored(inst, m.backup_id, m, target=f"{m.method} snapshot {m.backup_id}{chain} received into {target}")
