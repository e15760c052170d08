"""Benchmark: pgvault snapshot + send of a pgbench cluster to a local site, versus the bare
tools (`zfs snapshot` + `zfs send | cat > file`, `btrfs subvolume snapshot -r` +
`btrfs send | cat > file`) in the same run, on the same data.

    PYTHONPATH=$PWD /opt/pgvault/venv/bin/python bench/snapshot_send.py [--scale 50] [--fs zfs,btrfs]

pgvault's run includes everything `pgvault backup JOB` does: connect, bind the site, the LSN
fence, metadata on the snapshot, zstd (level 1, 2 threads) + sha256 of the stream, the
manifest. Both sides send a full stream. `sync` runs before each timed step.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pgvault import sandbox  # noqa: E402
from pgvault.sandbox.fs import BtrfsImage, ZfsDaemon, ZfsPool, instance_on  # noqa: E402
from tests.conftest import World  # noqa: E402

PG_BIN = "/usr/lib/postgresql/15/bin"


def timed(fn) -> float:
    subprocess.run(["sync"], check=True)
    t = time.monotonic()
    fn()
    return time.monotonic() - t


def bare_send(snapshot_argv: list[str], send_argv: list[str], out: Path) -> None:
    subprocess.run(snapshot_argv, check=True, capture_output=True)
    with open(out, "wb") as fh:
        send = subprocess.Popen(send_argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        cat = subprocess.run(["cat"], stdin=send.stdout, stdout=fh, check=True)
        send.stdout.close()
        assert send.wait() == 0 and cat.returncode == 0


def pgvault_backup(world: World) -> None:
    world.cli("backup", "snaps")


def load(inst, scale: int) -> None:
    subprocess.run([f"{PG_BIN}/pgbench", "-i", "-q", "-s", str(scale), inst.conninfo()], check=True,
                   capture_output=True)
    inst.psql("CHECKPOINT")


def run_zfs(base: Path, scale: int) -> tuple[float, float, int]:
    daemon = ZfsDaemon().start()
    pool = ZfsPool(base, size=f"{max(1024, scale * 40)}M").create()
    inst = None
    try:
        ds, mnt = pool.dataset("pg", owner_postgres=True)
        inst = instance_on(mnt / "data", base / "sock")
        load(inst, scale)
        world = World(base, inst)
        site = world.local_site("bench")
        world.jobs["snaps"] = {"method": "zfs", "datasets": [ds], "sites": ["bench"]}
        world.policy()
        out = base / "bare.zfs"
        bare = timed(lambda: bare_send(["zfs", "snapshot", f"{ds}@bare"], ["zfs", "send", f"{ds}@bare"], out))
        size = out.stat().st_size
        out.unlink()
        ours = timed(lambda: pgvault_backup(world))
        stored = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
        print(f"zfs:   bare {bare:6.1f}s ({size / 2**20:.0f} MiB raw)   pgvault {ours:6.1f}s "
              f"({stored / 2**20:.0f} MiB stored)   ratio {ours / bare:.2f}x")
        return bare, ours, size
    finally:
        if inst:
            inst.stop("immediate")
        pool.destroy()
        daemon.stop()


def run_btrfs(base: Path, scale: int) -> tuple[float, float, int]:
    fs = BtrfsImage(base).create(size=f"{max(1024, scale * 60)}M")
    inst = None
    try:
        sv = fs.subvolume("pg", owner_postgres=True)
        inst = instance_on(sv / "data", base / "sock")
        load(inst, scale)
        world = World(base, inst)
        site = world.local_site("bench")
        world.jobs["snaps"] = {"method": "btrfs", "subvolumes": [str(sv)], "sites": ["bench"]}
        world.policy()
        snap = fs.mountpoint / "bare-snap"
        out = base / "bare.btrfs"
        bare = timed(lambda: bare_send(["btrfs", "subvolume", "snapshot", "-r", str(sv), str(snap)],
                                       ["btrfs", "send", str(snap)], out))
        size = out.stat().st_size
        out.unlink()
        ours = timed(lambda: pgvault_backup(world))
        stored = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
        print(f"btrfs: bare {bare:6.1f}s ({size / 2**20:.0f} MiB raw)   pgvault {ours:6.1f}s "
              f"({stored / 2**20:.0f} MiB stored)   ratio {ours / bare:.2f}x")
        return bare, ours, size
    finally:
        if inst:
            inst.stop("immediate")
        fs.destroy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=50)
    ap.add_argument("--fs", default="zfs,btrfs")
    args = ap.parse_args()
    base = sandbox.workdir("pgvault-bench-snap-")
    try:
        for fs in args.fs.split(","):
            sub = base / fs
            sub.mkdir()
            os.chmod(sub, 0o755)
            {"zfs": run_zfs, "btrfs": run_btrfs}[fs](sub, args.scale)
    finally:
        subprocess.run(["rm", "-rf", str(base)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
