"""pgvault snapshot list|clone|restore: local snapshot sets of a zfs/btrfs job, a writable clone
of one, or a copy received from a site. Taking snapshots is `pgvault backup JOB`."""
from __future__ import annotations

import click

from . import load
from .output import emit_json, table


@click.group()
def snapshot():
    """ZFS / btrfs snapshots of the cluster (take them with `pgvault backup JOB`).

    \b
    pgvault snapshot list JOB
    pgvault snapshot clone JOB [ID] --to TARGET [--port N] [--start]
    pgvault snapshot restore JOB [ID] --to TARGET [--from-site S] [--port N] [--start]

    TARGET is a new dataset (zfs: pool/restore, its parent must exist) or a new or empty
    directory on the btrfs file system (btrfs). Each volume of the set lands below it.
    """


@snapshot.command("list")
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help="print as JSON")
@click.pass_context
def list_cmd(ctx, job, as_json):
    """Local snapshot sets of JOB with their LSN fence and mode."""
    from ..restore.snapshot import driver_for

    drv = driver_for(load(ctx), job)
    rows = []
    for bid, snaps in sorted(drv.local_sets().items()):
        meta = drv.read_meta(next(iter(snaps.values())))
        rows.append({"backup_id": bid, "mode": meta.get("mode"), "fence_lsn": meta.get("fence_lsn"),
                     "timeline": meta.get("timeline"), "snapshots": [s.name for s in snaps.values()]})
    if as_json:
        emit_json(rows)
    else:
        click.echo(table([[r["backup_id"], r["mode"], r["fence_lsn"], str(r["timeline"]), " ".join(r["snapshots"])]
                          for r in rows], ["ID", "MODE", "FENCE LSN", "TL", "SNAPSHOTS"]))
    return 0


def _report(result, as_json: bool) -> None:
    doc = {"backup_id": result.backup_id, "pgdata": result.pgdata, "port": result.port,
           "volumes": result.paths, "started": result.started, "site": result.site, "chain": result.chain}
    if result.started:
        doc["socket_dir"] = result.socket_dir
        doc["conninfo"] = result.conninfo
    if as_json:
        emit_json(doc)
        return
    src = f" from site {result.site!r} (chain {' -> '.join(result.chain)})" if result.site else ""
    click.echo(f"snapshot {result.backup_id}{src} is at {result.pgdata} (port {result.port})")
    if result.started:
        click.echo(f"started: psql '{result.conninfo}'")
    else:
        click.echo(f"start it with: pg_ctl start -D {result.pgdata}  (as the postgres user)")


@snapshot.command()
@click.argument("job")
@click.argument("backup_id", required=False)
@click.option("--to", "target", required=True, help="new dataset (zfs) or new/empty directory (btrfs)")
@click.option("--port", type=int, help="port of the clone (default: a free one)")
@click.option("--start", is_flag=True, help="start PostgreSQL on the clone")
@click.option("--socket-dir", help="Unix socket directory of the started clone (default: a new temp dir)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@click.pass_context
def clone(ctx, job, backup_id, target, port, start, socket_dir, as_json):
    """Clone a local snapshot set (default: the newest) into TARGET; archiving off, slots dropped."""
    from ..restore.snapshot import clone_local

    result = clone_local(load(ctx), job, backup_id, target, port=port, start=start, socket_dir=socket_dir)
    _report(result, as_json)
    return 0


@snapshot.command()
@click.argument("job")
@click.argument("backup_id", required=False)
@click.option("--to", "target", required=True, help="new dataset (zfs) or new/empty directory (btrfs)")
@click.option("--from-site", help="site to read from (default: the job's sites in order)")
@click.option("--port", type=int, help="port of the restored copy (default: a free one)")
@click.option("--start", is_flag=True, help="start PostgreSQL on the restored copy")
@click.option("--socket-dir", help="Unix socket directory of the started copy (default: a new temp dir)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@click.pass_context
def restore(ctx, job, backup_id, target, from_site, port, start, socket_dir, as_json):
    """Receive a snapshot (default: the newest) from a site: full stream, then incrementals."""
    from ..restore.snapshot import receive_from_site

    from .output import warn

    result = receive_from_site(load(ctx), job, backup_id, target, from_site=from_site, port=port, start=start,
                               socket_dir=socket_dir, warn=warn)
    _report(result, as_json)
    return 0
