"""WAL commands: wal-push (archive_command), wal-fetch (restore_command), wal-ship (deliver a
spooled backlog now) and wal-status (per-site lag and gaps)."""
from __future__ import annotations

import click

from . import load


@click.command("wal-push")
@click.argument("path", metavar="%p")
@click.option("--batch", type=click.IntRange(1, 256), default=None,
              help="ship at most this many files in one call (default wal.batch; 1 = only %p)")
@click.pass_context
def wal_push(ctx, path, batch):
    """Archive one WAL file to every WAL site (archive_command = 'pgvault wal-push %p')."""
    import os

    if os.environ.get("PGVAULT_SANDBOX") == "1" and os.environ.get("PGVAULT_TEST_LOSE_WAL") == "1":
        # Test-only, and only inside the sandbox (both variables): report success without
        # storing anything, so `pgvault lab` can show its verdicts fail (docs/lab.md).
        return 0
    from ..wal.push import Archiver

    result = Archiver(load(ctx)).push(path, batch=batch)
    item = result.requested
    if item.error:
        raise item.error
    return 0


@click.command("wal-fetch")
@click.argument("name", metavar="%f")
@click.argument("dest", metavar="%p")
@click.option("--from-site", envvar="PGVAULT_FROM_SITE", default=None, metavar="SITE",
              help="try this site first (default $PGVAULT_FROM_SITE, then wal.sites order)")
@click.pass_context
def wal_fetch(ctx, name, dest, from_site):
    """Restore one WAL file (restore_command = 'pgvault wal-fetch %f %p'); exit 1 if no site has it."""
    from ..wal.fetch import WalMissing, fetch, take_prefetched

    if take_prefetched(name, dest):
        return 0
    try:
        fetch(load(ctx), name, dest, from_site=from_site)
    except WalMissing:
        return 1  # the normal end of the archive: PostgreSQL asks past it, no message wanted
    return 0


@click.command("wal-ship")
@click.option("--follow", is_flag=True,
              help="keep shipping as wal-push spools files, until nothing was owed for a while "
                   "(what wal-push starts in the background when wal.sync_sites is not 'all')")
@click.pass_context
def wal_ship(ctx, follow):
    """Deliver the spooled backlog to every site that is reachable now (for cron/tick)."""
    from ..wal.push import SHIP_WORKERS, Archiver

    arch = Archiver(load(ctx))
    if follow:
        import logging

        from ..wal.shipper import follow as follow_spool

        delivered = follow_spool(arch)
        arch.close()
        logging.getLogger("pgvault.wal").info(
            "shipper exits: %s", ", ".join(f"{s} {n}" for s, n in sorted(delivered.items())) or "nothing delivered")
        return 0
    delivered = arch.drain(workers=SHIP_WORKERS)
    arch.close()
    for site in arch.spool.sites_with_backlog():
        click.echo(f"{site}: {len(arch.spool.backlog(site))} file(s) still spooled"
                   + (f" ({arch._failed[site]})" if site in arch._failed else ""))
    for site, n in sorted(delivered.items()):
        click.echo(f"{site}: delivered {n} file(s)")
    return 1 if arch.spool.sites_with_backlog() else 0


@click.command("wal-status")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def wal_status(ctx, as_json):
    """Each WAL site's newest file, lag (segments and age), spooled backlog and gaps; exit 3
    when a site could not be read (within monitoring.site_timeout)."""
    from ..errors import EXIT_ENVIRONMENT
    from ..wal.status import archive_status, render, unreachable

    status = archive_status(load(ctx))
    if as_json:
        from .output import emit_json

        emit_json(status)
    else:
        click.echo(render(status))
    return EXIT_ENVIRONMENT if unreachable(status) else 0
