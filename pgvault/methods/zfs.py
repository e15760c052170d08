"""method: zfs — consistent snapshots of the job's datasets, sent to sites with ``zfs send``.

Metadata lives on each snapshot as user properties (``pgvault:backup_id``, ``pgvault:job``,
``pgvault:mode``, ``pgvault:fence_lsn``, ``pgvault:timeline``, ``pgvault:meta`` = the JSON
document) and in the manifest at every site. Streams are sent without ``-p``: a received copy
must never inherit a source ``mountpoint`` and mount over the production dataset."""
from __future__ import annotations

import json
import os
import time

from .. import proc
from ..errors import PgvaultError, RestoreRefused, UsageError
from ..proc import wait_until
from . import snapshot, snapshot_sites
from .base import BackupFacts, Method
from .snapshot import Snap, Volume

PROP = "pgvault:"


# -- argv builders (pure)
def snapshot_argv(dataset: str, backup_id: str) -> list[str]:
    """
    >>> snapshot_argv("tank/pg", "20261125T221530Z")
    ['zfs', 'snapshot', 'tank/pg@20261125T221530Z']
    """
    return ["zfs", "snapshot", f"{dataset}@{backup_id}"]


def set_argv(name: str, prop: str, value: str) -> list[str]:
    """
    >>> set_argv("tank/pg@1", "fence_lsn", "0/3000060")
    ['zfs', 'set', 'pgvault:fence_lsn=0/3000060', 'tank/pg@1']
    """
    return ["zfs", "set", f"{PROP}{prop}={value}", name]


def send_argv(snap: str, base: str | None = None) -> list[str]:
    """
    >>> send_argv("tank/pg@2", "tank/pg@1")
    ['zfs', 'send', '-i', 'tank/pg@1', 'tank/pg@2']
    >>> send_argv("tank/pg@1")
    ['zfs', 'send', 'tank/pg@1']
    """
    return ["zfs", "send", *(["-i", base] if base else []), snap]


def receive_argv(target: str, *, force: bool = False) -> list[str]:
    """
    >>> receive_argv("tank/restore/pg", force=True)
    ['zfs', 'receive', '-F', 'tank/restore/pg']
    """
    return ["zfs", "receive", *(["-F"] if force else []), target]


def clone_argv(snap: str, target: str) -> list[str]:
    """
    >>> clone_argv("tank/pg@1", "tank/clone/pg")
    ['zfs', 'clone', 'tank/pg@1', 'tank/clone/pg']
    """
    return ["zfs", "clone", snap, target]


def destroy_argv(name: str, *, recursive: bool = False, force: bool = False) -> list[str]:
    """
    >>> destroy_argv("tank/pg@1")
    ['zfs', 'destroy', 'tank/pg@1']
    >>> destroy_argv("tank/restore", recursive=True, force=True)
    ['zfs', 'destroy', '-r', '-f', 'tank/restore']
    """
    return ["zfs", "destroy", *(["-r"] if recursive else []), *(["-f"] if force else []), name]


def list_snapshots_argv(dataset: str) -> list[str]:
    """
    >>> list_snapshots_argv("tank/pg")
    ['zfs', 'list', '-H', '-t', 'snapshot', '-o', 'name,pgvault:job', '-s', 'name', '-r', 'tank/pg']
    """
    return ["zfs", "list", "-H", "-t", "snapshot", "-o", f"name,{PROP}job", "-s", "name", "-r", dataset]


def get_argv(names: list[str], props: str) -> list[str]:
    """
    >>> get_argv(["a@1"], "guid")
    ['zfs', 'get', '-H', '-p', '-o', 'name,property,value', 'guid', 'a@1']
    """
    return ["zfs", "get", "-H", "-p", "-o", "name,property,value", props, *names]


def parse_get(text: str) -> dict[str, dict[str, str]]:
    """
    >>> parse_get("a@1\\tguid\\t42\\na@1\\tpgvault:job\\tsnaps\\n")
    {'a@1': {'guid': '42', 'pgvault:job': 'snaps'}}
    """
    out: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        if line.strip():
            name, prop, value = line.split("\t", 2)
            out.setdefault(name, {})[prop] = value
    return out


def mountpoint(dataset: str) -> str:
    return proc.output(["zfs", "list", "-H", "-o", "mountpoint", dataset]).strip()


def exists(name: str) -> bool:
    return proc.run(["zfs", "list", "-H", "-o", "name", name], check=False).returncode == 0


class ZfsDriver:
    kind = "zfs"

    def __init__(self, job_name: str, job):
        self.job_name = job_name
        self.job = job

    def volumes(self) -> list[Volume]:
        out = []
        for ds in self.job.datasets:
            cp = proc.run(["zfs", "list", "-H", "-o", "name,mountpoint", ds], check=False)
            if cp.returncode != 0:
                raise UsageError(f"jobs.{self.job_name}.datasets: dataset {ds!r} does not exist",
                                 "create it or fix the name (zfs list shows the datasets); is the zfs daemon running?")
            mnt = cp.stdout.decode().strip().split("\t")[1]
            if not mnt.startswith("/") or not os.path.ismount(mnt):
                raise UsageError(f"dataset {ds!r} is not mounted (mountpoint {mnt})", f"zfs mount {ds}")
            out.append(Volume(ds, mnt, os.stat(mnt).st_dev))
        return out

    def snapshot(self, vol: Volume, backup_id: str) -> Snap:
        name = f"{vol.name}@{backup_id}"
        proc.run(snapshot_argv(vol.name, backup_id))
        guid = parse_get(proc.output(get_argv([name], "guid")))[name]["guid"]
        return Snap(vol.name, name, guid)

    def destroy(self, snap: Snap) -> None:
        proc.run(destroy_argv(snap.name))

    def write_meta(self, snaps: list[Snap], backup_id: str, meta: dict) -> None:
        doc = json.dumps(meta, separators=(",", ":"), default=str)
        for s in snaps:
            for prop, value in (("backup_id", backup_id), ("job", self.job_name), ("mode", meta["mode"]),
                                ("fence_lsn", meta["fence_lsn"]), ("timeline", str(meta["timeline"])),
                                ("meta", doc)):
                proc.run(set_argv(s.name, prop, value))

    def local_sets(self) -> dict[str, dict[str, Snap]]:
        """This job's snapshots here: backup id -> volume -> Snap."""
        names = []
        for ds in self.job.datasets:
            if not exists(ds):
                continue
            for line in proc.output(list_snapshots_argv(ds)).splitlines():
                name, job = line.split("\t")
                if name.split("@")[0] == ds and job == self.job_name:
                    names.append(name)
        if not names:
            return {}
        props = parse_get(proc.output(get_argv(names, "guid")))
        out: dict[str, dict[str, Snap]] = {}
        for name in names:
            ds, bid = name.split("@", 1)
            out.setdefault(bid, {})[ds] = Snap(ds, name, props.get(name, {}).get("guid", ""))
        return out

    def read_meta(self, snap: Snap) -> dict:
        value = proc.output(["zfs", "get", "-H", "-o", "value", f"{PROP}meta", snap.name]).strip()
        if value in ("", "-"):
            raise UsageError(f"snapshot {snap.name} carries no pgvault metadata", "it was not taken by pgvault")
        return json.loads(value)

    def send_argv(self, snap: Snap, base: Snap | None) -> list[str]:
        return send_argv(snap.name, base.name if base else None)

    def versions(self) -> dict[str, str]:
        import shutil

        return {"zfs": "zfs-fuse" if shutil.which("zfs-fuse", path=os.environ.get("PATH", "") + ":/usr/sbin") else "openzfs"}

    def restore_hint(self) -> str:
        return ("for each stream of the chain (full first, then each 'from-<parent>' in order): "
                "zstd -dc streams/<dataset>.<...>.zfs.zst | zfs receive -F <pool>/<new dataset>; "
                "backup-api mode: write backup_label (and tablespace_map) into PGDATA before starting")


    # -- the restore side (pgvault.restore.snapshot*, pgvault.drills.source_snapshot): a
    # target is a dataset name that does not exist yet (its parent must); each volume of a set
    # lands at TARGET/<short name>. ``created`` is unused: destroying TARGET -r removes all.
    def make_target(self, target: str) -> None:
        if exists(target):
            raise RestoreRefused(f"dataset {target} already exists", "choose a new dataset name; pgvault never restores over one")
        parent = target.rsplit("/", 1)[0]
        if "/" not in target or not exists(parent):
            raise UsageError(f"parent dataset of {target} does not exist", "give --to as <existing dataset>/<new name>")
        proc.run(["zfs", "create", target])

    def clone(self, snap: Snap, target: str, short: str, created: list[str]) -> str:
        proc.run(clone_argv(snap.name, f"{target}/{short}"))
        return mountpoint(f"{target}/{short}")

    def receive_argv(self, target: str, short: str, volume: str, backup_id: str, incremental: bool,
                     created: list[str]) -> list[str]:
        return receive_argv(f"{target}/{short}", force=incremental)

    def received(self, target: str, short: str, volume: str, backup_id: str, created: list[str]) -> str:
        return mountpoint(f"{target}/{short}")

    def cleanup(self, target: str, created: list[str]) -> None:
        # A receive that was just killed can keep the dataset busy for a moment.
        deadline = time.monotonic() + 120  # zfs-fuse under load is slow to let go
        while exists(target):
            cp = proc.run(destroy_argv(target, recursive=True, force=True), check=False)
            if cp.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise PgvaultError(f"could not remove {target}: {cp.stderr.decode(errors='replace').strip()}",
                                   f"remove it by hand: zfs destroy -r {target}")
            time.sleep(0.3)

    def scratch_target(self, volume: str, tag: str) -> str:
        """A temporary copy's place, on the volume's pool.

        >>> ZfsDriver("j", None).scratch_target("tank/db/pg", "ab")
        'tank/pgvault-scratch-ab'
        """
        return f"{volume.split('/')[0]}/pgvault-scratch-{tag}"

    def remove_scratch(self, scratch: str) -> None:
        self.cleanup(scratch, [])

    def drill_target(self, receive_into: str | None, name: str) -> str:
        """Where a drill receives a copy: ``receive_into`` or beside the job's first dataset.

        >>> ZfsDriver("j", type("J", (), {"datasets": ["tank/db/pg"]})).drill_target(None, "d")
        'tank/db/d'
        """
        return f"{receive_into or self.job.datasets[0].rsplit('/', 1)[0]}/{name}"

    def remove_received(self, target: str) -> None:
        """Remove a drill's received copy (its server is stopped)."""
        if not exists(target):
            return
        # zfs-fuse may report a just-stopped server's mount busy for a moment.
        wait_until(lambda: proc.run(destroy_argv(target, recursive=True), check=False).returncode == 0
                   or not exists(target), 30, f"zfs destroy -r {target}", interval=0.2)


def driver(ctx) -> ZfsDriver:
    return ZfsDriver(ctx.job_name, ctx.job)


def check(ctx) -> list[str]:
    problems = snapshot.check_server(ctx)
    try:
        proc.which("zfs")
        if proc.run(["zfs", "list", "-H", "-o", "name"], check=False).returncode != 0:
            problems.append("the zfs command cannot reach ZFS (HINT: start the zfs-fuse daemon or load the zfs module)")
            return problems
        snapshot.plan_layout(ctx, driver(ctx).volumes())
    except PgvaultError as exc:
        problems.append(exc.message + (f" (HINT: {exc.hint})" if exc.hint else ""))
    return problems


def backup(ctx, session) -> BackupFacts:
    return snapshot_sites.backup(ctx, session, driver(ctx))


METHOD = Method(
    name="zfs", job_model="ZfsJob", tools=("zfs",), check=check, backup=backup,
    restore_route="snapshot", drill_route="snapshot", pitr_base=True,
    snapshot_driver=ZfsDriver, description="ZFS snapshots of the job's datasets, sent with zfs send")
