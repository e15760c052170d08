"""pgvault drill run / list: restore drills with evidence."""
from __future__ import annotations

import click

from . import load
from .output import emit_json, table, warn


@click.group()
def drill():
    """Restore drills: prove the backups restore, keep the evidence."""


@drill.command("run")
@click.argument("names", nargs=-1)
@click.option("--report-dir", type=click.Path(file_okay=False), help="write junit.xml, report.json and report.md here")
@click.option("--scratch-dir", type=click.Path(file_okay=False), envvar="PGVAULT_DRILL_DIR",
              help="where scratch instances are created (default <tmp>/pgvault-drills)")
@click.option("--no-evidence", is_flag=True, help="do not store the results at the sites")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
@click.pass_context
def run(ctx, names, report_dir, scratch_dir, no_evidence, as_json):
    """Run drills (default: every drill of the policy). Exit 1 when any fails or breaks its RTO budget."""
    from ..drills.reports import result_doc
    from ..drills.runner import run_drills

    policy = load(ctx)

    def show(r):
        if as_json:
            return
        rto = f"{r.rto_seconds:.1f}s" if r.rto_seconds is not None else "-"
        line = f"{'PASS' if r.ok else 'FAIL'}  {r.case_name}  {r.restored or '-'}  RTO {rto}"
        if r.rpo_seconds is not None:
            line += f"  RPO {r.rpo_seconds:.1f}s"
        click.echo(line)
        if r.failure:
            click.echo(f"      {r.failure}")

    results = run_drills(policy, list(names) or None, report_dir, scratch_root=scratch_dir,
                         store_evidence=not no_evidence, warn=warn, on_result=show)
    if as_json:
        emit_json([result_doc(r, policy.cluster.name) for r in results])
    elif not results:
        click.echo("no drills defined (see the policy's drills: globs)")
    if report_dir:
        _html_report(policy, report_dir)
    if report_dir and not as_json:
        click.echo(f"reports: {report_dir}/junit.xml, report.json, report.md, report.html")
    return 0 if all(r.ok for r in results) else 1


def _html_report(policy, report_dir) -> None:
    """report.html beside junit.xml: the status and windows page after the drills (pgvault report
    --html); a CI job publishes the directory. A site that cannot be read is on the page, not fatal."""
    from pathlib import Path

    from ..errors import PgvaultError
    from ..status import status as collect_status
    from ..status.prometheus import write_textfile
    from ..status.report import render

    try:
        write_textfile(Path(report_dir) / "report.html", render(collect_status(policy)))
    except (PgvaultError, OSError) as exc:
        warn(f"report.html not written: {getattr(exc, 'message', None) or exc}")


@drill.command("list")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def list_drills(ctx, as_json):
    """Show the drill definitions (validated against the policy)."""
    from ..drills.load import load_drills
    from ..drills.sources import sites_for, source_method

    policy = load(ctx)
    drills = load_drills(policy)
    docs = [{"name": d.name, "method": source_method(policy, d), "job": d.source.job, "sites": sites_for(policy, d),
             "target": d.target, "schedule": d.schedule,
             "rto": d.rto.total_seconds() if d.rto else None, "checks": len(d.checks)} for d in drills]
    if as_json:
        emit_json(docs)
    elif docs:
        click.echo(table([[d["name"], d["method"], ",".join(d["sites"]), d["target"], d["schedule"] or "-",
                           str(d["checks"])] for d in docs], ["DRILL", "METHOD", "SITES", "TARGET", "SCHEDULE", "CHECKS"]))
    else:
        click.echo("no drills defined")
    return 0
