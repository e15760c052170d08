"""pgvault report --html FILE: the status and recoverability windows as one self-contained page
(pgvault.status.report; docs/windows.md). Written atomically; exits like status (0/1/2/3)."""
from __future__ import annotations

import click

from . import load


@click.command("report")
@click.option("--html", "html_file", metavar="FILE", required=True, type=click.Path(dir_okay=False),
              help="write the HTML report to FILE")
@click.pass_context
def report(ctx, html_file):
    """Write an HTML report: a timeline of each site's recoverability window, jobs, sites, drills."""
    from ..status import status as collect_status
    from ..status.prometheus import write_textfile
    from ..status.report import render

    policy = load(ctx)
    doc = collect_status(policy)
    write_textfile(html_file, render(doc))
    click.echo(f"{doc['summary']}\nreport written to {html_file}")
    return doc["code"]
