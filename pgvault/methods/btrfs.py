"""method: btrfs — consistent read-only snapshots of the job's subvolumes, sent with ``btrfs send``.

Snapshots go to ``<snapshot_dir>/<backup id>/<subvolume name>`` (default snapshot_dir:
``<subvolume>/../.pgvault-snapshots``) with a sidecar ``pgvault.json`` in the same directory
holding the metadata (btrfs has no user properties on snapshots). btrfs snapshots never
descend into nested subvolumes and are never atomic across subvolumes: see methods/snapshot.py
for how pgvault stays consistent anyway."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .. import proc
from ..errors import PgvaultError, RestoreRefused, UsageError
from ..fsutil import write_atomic
from . import snapshot, snapshot_sites
from .base import BackupFacts, Method
from .snapshot import Snap, Volume

SIDECAR = "pgvault.json"


# -- argv builders (pure)
def snapshot_argv(subvolume: str, dest: str, *, readonly: bool = True) -> list[str]:
    """
    >>> snapshot_argv("/srv/pg", "/srv/.pgvault-snapshots/1/pg")
    ['btrfs', 'subvolume', 'snapshot', '-r', '/srv/pg', '/srv/.pgvault-snapshots/1/pg']
    >>> snapshot_argv("/a", "/b", readonly=False)
    ['btrfs', 'subvolume', 'snapshot', '/a', '/b']
    """
    return ["btrfs", "subvolume", "snapshot", *(["-r"] if readonly else []), subvolume, dest]


def send_argv(snap: str, base: str | None = None) -> list[str]:
    """
    >>> send_argv("/s/2/pg", "/s/1/pg")
    ['btrfs', 'send', '-p', '/s/1/pg', '/s/2/pg']
    """
    return ["btrfs", "send", *(["-p", base] if base else []), snap]


def receive_argv(directory: str) -> list[str]:
    """
    >>> receive_argv("/srv/restore/.received/1")
    ['btrfs', 'receive', '/srv/restore/.received/1']
    """
    return ["btrfs", "receive", directory]


def delete_argv(path: str) -> list[str]:
    """
    >>> delete_argv("/s/1/pg")
    ['btrfs', 'subvolume', 'delete', '/s/1/pg']
    """
    return ["btrfs", "subvolume", "delete", path]


def show_argv(path: str) -> list[str]:
    return ["btrfs", "subvolume", "show", path]


def parse_uuid(show: str) -> str:
    """
    >>> parse_uuid("data\\n\\tName: \\t\\tdata\\n\\tUUID: \\t\\t55f5-e8\\n\\tParent UUID: \\t\\t-\\n")
    '55f5-e8'
    """
    for line in show.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "UUID":
            return value.strip()
    return ""


def is_subvolume(path: str) -> bool:
    return proc.run(show_argv(path), check=False).returncode == 0


def uuid_of(path: str) -> str:
    return parse_uuid(proc.output(show_argv(path)))


def leaf(volume: str) -> str:
    """
    >>> leaf("/srv/pg/")
    'pg'
    """
    return Path(volume.rstrip("/")).name


class BtrfsDriver:
    kind = "btrfs"

    def __init__(self, job_name: str, job):
        self.job_name = job_name
        self.job = job

    def snapdir(self, volume: str) -> Path:
        if self.job.snapshot_dir:
            return Path(self.job.snapshot_dir)
        return Path(volume).parent / ".pgvault-snapshots"

    def volumes(self) -> list[Volume]:
        out, seen = [], {}
        for sv in self.job.subvolumes:
            path = os.path.realpath(sv)
            if not os.path.isdir(path) or not is_subvolume(path):
                raise UsageError(f"jobs.{self.job_name}.subvolumes: {sv!r} is not a btrfs subvolume",
                                 "create it with btrfs subvolume create, or fix the path")
            key = (self.snapdir(path), leaf(path))
            if key in seen:
                raise UsageError(f"subvolumes {seen[key]!r} and {sv!r} would share snapshot path {key[0]}/<id>/{key[1]}",
                                 "give the job a snapshot_dir per file system, or rename one subvolume")
            seen[key] = sv
            out.append(Volume(path, path, os.stat(path).st_dev))
        return out

    def _path(self, volume: str, backup_id: str) -> Path:
        return self.snapdir(volume) / backup_id / leaf(volume)

    def snapshot(self, vol: Volume, backup_id: str) -> Snap:
        dest = self._path(vol.name, backup_id)
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(dest.parent.parent, 0o700)
        proc.run(snapshot_argv(vol.name, str(dest)))
        return Snap(vol.name, str(dest), uuid_of(str(dest)))

    def destroy(self, snap: Snap) -> None:
        proc.run(delete_argv(snap.name))
        d = Path(snap.name).parent
        if not any(p.is_dir() for p in d.iterdir()):
            (d / SIDECAR).unlink(missing_ok=True)
            d.rmdir()

    def write_meta(self, snaps: list[Snap], backup_id: str, meta: dict) -> None:
        for d in {Path(s.name).parent for s in snaps}:
            write_atomic(d / SIDECAR, (json.dumps(meta, indent=2, default=str) + "\n").encode())

    def local_sets(self) -> dict[str, dict[str, Snap]]:
        out: dict[str, dict[str, Snap]] = {}
        for sv in self.job.subvolumes:
            vol = os.path.realpath(sv)
            for side in sorted(self.snapdir(vol).glob(f"*/{SIDECAR}")):
                try:
                    meta = json.loads(side.read_text())
                except (OSError, ValueError):
                    continue
                path = side.parent / leaf(vol)
                if meta.get("job") == self.job_name and path.is_dir():
                    out.setdefault(side.parent.name, {})[vol] = Snap(vol, str(path), uuid_of(str(path)))
        return out

    def read_meta(self, snap: Snap) -> dict:
        try:
            return json.loads((Path(snap.name).parent / SIDECAR).read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"snapshot {snap.name}: unreadable sidecar {SIDECAR}: {exc}",
                             "it was not taken by pgvault, or the sidecar was removed") from None

    def send_argv(self, snap: Snap, base: Snap | None) -> list[str]:
        return send_argv(snap.name, base.name if base else None)

    def versions(self) -> dict[str, str]:
        return {"btrfs": proc.output(["btrfs", "--version"]).strip()}

    def restore_hint(self) -> str:
        return ("mkdir -p DIR/<id> for each manifest of the chain (full first); "
                "zstd -dc streams/<subvolume>.<...>.btrfs.zst | btrfs receive DIR/<id>; then "
                "btrfs subvolume snapshot DIR/<newest id>/<name> DIR/<name> for a writable copy; "
                "backup-api mode: write backup_label (and tablespace_map) into PGDATA before starting")


    # -- the restore side (pgvault.restore.snapshot*, pgvault.drills.source_snapshot): a
    # target is a directory that does not exist or is empty, on a btrfs file system; each volume
    # lands at TARGET/<short name>. Received streams land in TARGET/.received/<backup id>/
    # (btrfs receive makes read-only subvolumes) and the newest is snapshotted writable.
    # ``created`` collects the subvolumes made, for cleanup.
    def make_target(self, target: str) -> None:
        p = Path(target)
        if p.exists() and any(p.iterdir()):
            raise RestoreRefused(f"target directory {target} is not empty", "choose a new or empty directory")
        p.mkdir(parents=True, exist_ok=True)
        os.chmod(p, 0o755)

    def clone(self, snap: Snap, target: str, short: str, created: list[str]) -> str:
        dest = os.path.join(target, short)
        proc.run(snapshot_argv(snap.name, dest, readonly=False))
        created.append(dest)
        return dest

    def receive_argv(self, target: str, short: str, volume: str, backup_id: str, incremental: bool,
                     created: list[str]) -> list[str]:
        inbox = Path(target) / ".received" / backup_id
        inbox.mkdir(parents=True, mode=0o700, exist_ok=True)
        created.append(str(inbox / leaf(volume)))
        return receive_argv(str(inbox))

    def received(self, target: str, short: str, volume: str, backup_id: str, created: list[str]) -> str:
        dest = os.path.join(target, short)
        proc.run(snapshot_argv(str(Path(target) / ".received" / backup_id / leaf(volume)), dest, readonly=False))
        created.append(dest)
        return dest

    def cleanup(self, target: str, created: list[str]) -> None:
        for sv in reversed(created):
            proc.run(delete_argv(sv), check=False)

    def scratch_target(self, volume: str, tag: str) -> str:
        """A temporary copy's place, beside the volume (the same file system).

        >>> BtrfsDriver("j", None).scratch_target("/srv/pg", "ab")
        '/srv/.pgvault-scratch-ab'
        """
        return str(Path(volume).parent / f".pgvault-scratch-{tag}")

    def remove_scratch(self, scratch: str) -> None:
        root = Path(scratch)
        if not root.is_dir():
            return
        received = root / ".received"
        for inbox in sorted(received.iterdir()) if received.is_dir() else []:
            for sv in inbox.iterdir():
                proc.run(delete_argv(str(sv)), check=False)
            inbox.rmdir()
        if received.is_dir():
            received.rmdir()
        for sv in root.iterdir():
            proc.run(delete_argv(str(sv)), check=False)
        root.rmdir()

    def drill_target(self, receive_into: str | None, name: str) -> str:
        """Where a drill receives a copy: ``receive_into`` or beside the job's first subvolume.

        >>> BtrfsDriver("j", type("J", (), {"subvolumes": ["/srv/pg"]})).drill_target(None, "d")
        '/srv/.pgvault-drills/d'
        """
        return str(Path(receive_into or str(Path(self.job.subvolumes[0]).parent / ".pgvault-drills")) / name)

    def remove_received(self, target: str) -> None:
        """Remove a drill's received copy (its server is stopped)."""
        root = Path(target)
        if not root.exists():
            return
        # Deepest first: a subvolume cannot be deleted while it holds another.
        dirs = sorted((Path(d) for d, _, _ in os.walk(root)), key=lambda p: len(p.parts), reverse=True)
        for d in dirs:
            if d.is_dir() and not d.is_symlink() and os.stat(d).st_ino == 256 and is_subvolume(str(d)):
                proc.run(delete_argv(str(d)), check=False)
        shutil.rmtree(root, ignore_errors=True)
        if root.exists():
            raise PgvaultError(f"{target} could not be removed")


def driver(ctx) -> BtrfsDriver:
    return BtrfsDriver(ctx.job_name, ctx.job)


def check(ctx) -> list[str]:
    problems = snapshot.check_server(ctx)
    try:
        proc.which("btrfs")
        snapshot.plan_layout(ctx, driver(ctx).volumes())
    except PgvaultError as exc:
        problems.append(exc.message + (f" (HINT: {exc.hint})" if exc.hint else ""))
    return problems


def backup(ctx, session) -> BackupFacts:
    return snapshot_sites.backup(ctx, session, driver(ctx))


METHOD = Method(
    name="btrfs", job_model="BtrfsJob", tools=("btrfs",), check=check, backup=backup,
    restore_route="snapshot", drill_route="snapshot", pitr_base=True,
    snapshot_driver=BtrfsDriver, description="btrfs read-only snapshots of the job's subvolumes, sent with btrfs send")
