"""pgvault standby create|show NAME: build the delayed standby of a `method: standby` job on this
host, or show what it says about itself (docs/standby.md)."""
from __future__ import annotations

import click

from . import load
from .output import emit_json, human_size


@click.group()
def standby():
    """Delayed standbys (`method: standby` jobs): the fastest undo of a TRUNCATE or DROP.

    \b
    pgvault standby create NAME     pg_basebackup into the job's pgdata, delay, slot, start
    pgvault standby show NAME       its delay, pause state and LSN lag now
    pgvault standby resume NAME     restart it with its own (delayed) configuration, unpaused
    Use one with: pgvault restore --before-truncate TABLE --via-standby NAME --copy-back-to CONNINFO
    """


@standby.command("create")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@click.pass_context
def create_cmd(ctx, name, as_json):
    """Build standby NAME with pg_basebackup and start it, delayed."""
    from ..methods.standby_build import create
    from ..restore.pitr import policy_file

    policy = load(ctx)
    b = create(policy, name, policy_file=policy_file(policy))
    if as_json:
        emit_json(b.__dict__)
        return 0
    src = f"slot {b.slot}" if b.slot else "the archive (pgvault wal-fetch)"
    click.echo(f"standby {name}: built in {b.pgdata}, port {b.port}, WAL from {src}, applied "
               f"{b.delay_seconds:.0f}s late; archive_mode off, never promoted by pgvault")
    click.echo("timings: " + ", ".join(f"{k} {v}s" for k, v in b.timings.items()))
    return 0


@standby.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="print as JSON")
@click.pass_context
def show_cmd(ctx, name, as_json):
    """What standby NAME says about itself now."""
    from .. import pg
    from ..methods.standby import get_standby, probe

    policy = load(ctx)
    job = get_standby(policy, name)
    primary = None
    try:
        with pg.connect(policy.cluster.conninfo) as conn:
            primary = pg.server_info(conn).current_lsn
    except Exception:  # noqa: BLE001 - the primary being down is shown as an unknown lag
        pass
    f = probe(job, primary)
    if as_json:
        emit_json(f)
        return 0 if f["reachable"] else 3
    if not f["reachable"]:
        click.echo(f"standby {name}: unreachable: {f['error']}")
        return 3
    d = f["delay_seconds"]
    click.echo(f"standby {name}: {'in recovery' if f['in_recovery'] else 'NOT in recovery'}, replay {f['pause_state']}, "
               f"delay {'-' if d is None else f'{d:.1f}s'} (configured {f['apply_delay_seconds']:.0f}s, promised "
               f"{job.delay.total_seconds():.0f}s), {human_size(f['lsn_lag_bytes'])} behind the primary, "
               f"replayed to {f['replay_lsn']}, received to {f['receive_lsn'] or '-'}")
    return 0


@standby.command("resume")
@click.argument("name")
@click.pass_context
def resume_cmd(ctx, name):
    """Restart standby NAME with its own delayed configuration and wait until it replays, unpaused
    (after an interrupted undo, or a pause by hand). Never promotes it."""
    from ..restore.standby import resume

    r = resume(load(ctx), name)
    if r.get("ok"):
        click.echo(f"standby {name}: replaying again, delayed {r['apply_delay_seconds']:.0f}s, {r['pause_state']}")
        return 0
    click.echo(f"standby {name}: NOT back to its configuration: {r}", err=True)
    return 1
