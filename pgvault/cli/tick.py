"""pgvault tick: run whatever is due (cron or a systemd timer calls this every minute).

Kept lean: when the last full tick proved nothing is due yet for this exact policy file, tick
stops before loading pydantic, croniter or any site driver (see docs/scheduling.md)."""
from __future__ import annotations

import os

import click


@click.command()
@click.option("--dry-run", is_flag=True, help="say what would run and why; run nothing")
@click.option("--no-wait", is_flag=True,
              help="start due jobs detached and return at once (systemd; outcomes go to the job state and logs)")
@click.option("--now", "now_text", hidden=True, help="pretend it is this time (tests); same as $PGVAULT_NOW")
@click.pass_context
def tick(ctx, dry_run, no_wait, now_text):
    """Run every job that is due since its last run (a missed window runs once)."""
    if now_text:
        os.environ["PGVAULT_NOW"] = now_text  # children and the state see the same clock
    from ..clock import Clock
    from ..tick.note import idle_until

    clock = Clock.from_env()
    root = ctx.find_root()
    verbose = root.params.get("verbose", 0)
    if not dry_run:
        until = idle_until(root.obj["policy_file"], clock.now())
        if until:
            if verbose:
                click.echo("nothing due" + ("" if until is True else f" before {until:%Y-%m-%d %H:%MZ}"), err=True)
            return 0
    return _full(ctx, clock, dry_run, no_wait, verbose)


def _full(ctx, clock, dry_run, no_wait, verbose):
    from ..tick.engine import tick as run_tick
    from . import load

    policy = load(ctx)
    report = run_tick(policy, clock, dry_run=dry_run, wait=not no_wait)
    for x in report.lines:
        if x.action == "idle" and not (dry_run or verbose):
            continue
        word = {"run": "would run", "ran": "ran"}.get(x.action, x.action)
        bid = f" -> {x.backup_id}" if x.backup_id else ""
        click.echo(f"{x.name}: {word}{bid}: {x.reason}")
        for e in x.expiry:
            click.echo(f"  expire {e}")
    if dry_run and not report.lines:
        click.echo("no scheduled jobs")
    return 1 if report.failed else 0
