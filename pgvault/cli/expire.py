"""pgvault expire / pin / unpin: retention at every site, with the reason for each decision."""
from __future__ import annotations

import click

from . import load
from .output import emit_json, table


@click.command()
@click.option("--dry-run", is_flag=True, help="show KEEP/EXPIRE and the reasons; delete nothing")
@click.option("--site", help="only this site")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--debris-grace", default="6h", show_default=True,
              help="remove debris (backup files without a manifest) only when older than this; never while a "
                   "backup is in progress at the site on any node")
@click.pass_context
def expire(ctx, dry_run, site, as_json, debris_grace):
    """Apply retention: list every backup at every site with KEEP or EXPIRE and why, then delete
    the expired ones (manifest first), the WAL no kept base needs, and old debris."""
    from ..tick.engine import Clock, busy_jobs, open_store
    from ..errors import UsageError
    from ..expire import expire_sites

    from ..policy.durations import parse_duration

    try:
        grace = parse_duration(debris_grace)
    except ValueError as exc:
        raise UsageError(f"--debris-grace: {exc}", "a duration such as 0s, 30m, 6h") from None
    policy = load(ctx)
    if site and site not in policy.sites:
        raise UsageError(f"no site {site!r} in the policy", f"sites: {', '.join(policy.sites)}")
    clock = Clock.from_env()
    store = open_store(policy)
    lock = store.lock(".expire")
    if not dry_run and not lock.acquire(clock.now(), wait=60):
        from ..errors import PgvaultError

        raise PgvaultError("another pgvault has been expiring backups for over a minute",
                           "try again when it has finished (its job's log says which)")
    try:
        results = expire_sites(policy, [site] if site else None, now=clock.now(), dry_run=dry_run,
                               busy=busy_jobs(store), grace=grace)
    finally:
        lock.release()
    if as_json:
        emit_json([r.to_doc() for r in results])
    else:
        for r in results:
            click.echo(f"site {r.site}:")
            rows = [[d.backup_id, d.job, d.action, ", ".join(d.reasons)] for d in r.decisions]
            if rows:
                click.echo("  " + table(rows, ["BACKUP", "JOB", "ACTION", "REASON"]).replace("\n", "\n  "))
            if r.wal_total:
                cut = f"before {r.wal_cutoff} (oldest kept base)" if r.wal_cutoff else "none: no PITR base kept here"
                click.echo(f"  WAL: {r.wal_total} file(s); expire {len(r.wal)}, {cut}")
            if r.debris:
                click.echo(f"  debris: {len(r.debris)} object(s) to remove")
            for m in r.in_progress:
                click.echo(f"  in progress (its files are left alone): {m}")
            for e in r.errors:
                click.echo(f"  ERROR {e}")
            if not dry_run:
                click.echo(f"  {r.summary()}")
    return 1 if any(r.errors for r in results) else 0


@click.command()
@click.argument("backup_id")
@click.option("--site", help="pin only at this site (default: every site holding the backup)")
@click.option("--note", default="", help="why it is pinned (stored with the pin)")
@click.pass_context
def pin(ctx, backup_id, site, note):
    """Keep BACKUP forever (until unpinned): the pin is stored at the site, beside the backup."""
    from ..expire import pin as do_pin

    for s in do_pin(load(ctx), backup_id, site, note=note):
        click.echo(f"pinned {backup_id} at {s}")
    return 0


@click.command()
@click.argument("backup_id")
@click.option("--site", help="unpin only at this site")
@click.pass_context
def unpin(ctx, backup_id, site):
    """Remove the pin of BACKUP; retention then applies to it again."""
    from ..expire import pin as do_pin

    for s in do_pin(load(ctx), backup_id, site, remove=True):
        click.echo(f"unpinned {backup_id} at {s}")
    return 0
