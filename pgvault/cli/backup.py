"""pgvault backup JOB: run one job now and print the backup id."""
from __future__ import annotations

import click

from . import load
from .output import emit_json, human_size, warn
from .progress import Progress


@click.command()
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@click.pass_context
def backup(ctx, job, as_json):
    """Run backup JOB now; prints the new backup id."""
    from ..backup import run_backup

    policy = load(ctx)
    progress = Progress(f"backup {job}")
    try:
        result = run_backup(policy, job, progress=progress)
    finally:
        progress.close()
    for site, msg in result.failed_sites.items():
        warn(f"site {site!r} did not receive backup {result.backup_id}: {msg}")
    if as_json:
        emit_json({"backup_id": result.backup_id, "job": job, "sites": result.sites,
                   "failed_sites": result.failed_sites, "size": result.manifest.total_size})
    else:
        click.echo(result.backup_id)
        click.echo(f"job {job}: {result.manifest.method} backup {result.backup_id}, "
                   f"{human_size(result.manifest.total_size)} at {', '.join(result.sites)}", err=True)
    return 1 if result.partial else 0
