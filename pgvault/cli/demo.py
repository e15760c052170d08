"""pgvault demo: run pgvault end to end in a temporary sandbox and clean up."""
from __future__ import annotations

import click


@click.command()
@click.option("--keep", is_flag=True, help="keep the sandbox directory for inspection")
@click.option("--report-dir", type=click.Path(file_okay=False), help="keep the drill reports (junit.xml, report.json, report.md) here")
def demo(keep, report_dir):
    """Create a sandbox cluster and sites, run pgvault's main jobs on it, print what happened."""
    import os

    from ..sandbox.demo import run_demo
    from ..errors import UsageError

    if os.geteuid() != 0:
        raise UsageError("the demo runs PostgreSQL as the 'postgres' user and needs root",
                         "run it as root (bash scripts/demo.sh)")
    return run_demo(keep=keep, out=click.echo, report_dir=report_dir)
