"""pgvault restore --to-time/--to-lsn/--to-xid/--latest: plan, then (unless --plan) restore a
base backup into --target-dir with recovery settings, and with --start recover to the target."""
from __future__ import annotations

import click

from .. import pg
from ..errors import NotSupported, RestoreRefused  # noqa: F401
from .output import emit_json, warn


def _print_plan(plan: dict) -> None:
    b, w = plan["base"], plan["wal"]
    click.echo(f"target:  {plan['target']}")
    click.echo(f"         ({plan['target_read_as']})")
    click.echo(f"base:    {b['backup_id']} ({b['method']}"
               + (f", {b['route']} {b['backup_id_at_site']}" if b.get("route") else "")
               + f") at site {b['site']!r}, timeline {b['timeline']}, LSN {b['start_lsn']}..{b['stop_lsn']}, "
               f"consistent from {b['stop_time']}")
    click.echo(f"wal:     {w['first']} .. {w['last_archived']} ({w['segments']} segments archived at {w['site']}), "
               f"ends on timeline {w['timeline']} at LSN {w['end_lsn']}"
               + (f", archived by {w['end_time_at_most']}" if w.get("end_time_at_most") else ""))
    for note in plan.get("notes", []):
        click.echo(f"note:    {note}")


def _per_site(policy, target):
    """For a time target: each WAL site's own answer (pgvault.restore.windows_read.at, the one
    `pgvault windows --at` prints). Read before the plan, so a refused plan still shows it."""
    if target.kind != "time":
        return None
    from ..restore.windows_read import at

    return at(policy, target.time)


def _print_per_site(found) -> None:
    from .windows import answer_lines

    for msg in found.warnings:
        warn(msg)
    click.echo("per site (restorable from here?):")
    for line in answer_lines(found.answers):
        click.echo(line)


def run_pitr(ctx, policy, backup_id=None, from_site=None, force=False, as_json=False, *, to_time=None, to_lsn=None,
             to_xid=None, latest=False, before_truncate=None, target_dir=None, port=None, start=False, action=None,
             plan=False, **unused) -> int:
    from ..restore import pitr
    from ..restore.plan import make_target

    found = None
    if before_truncate:
        # pgvault find picks the transaction; the target stops just before it (see docs/find.md).
        from .find import before_truncate_target

        if any((to_time, to_lsn, to_xid, latest)):
            from ..errors import UsageError

            raise UsageError("--before-truncate is a recovery target of its own", "drop --to-time/--to-lsn/--to-xid/--latest")
        action = action or "pause"
        port = port or (pg.free_port() if start else None)
        target, found = before_truncate_target(policy, before_truncate, from_site=from_site, as_json=as_json, **unused)
    else:
        target = make_target(to_time, to_lsn, to_xid, latest)
    per_site = _per_site(policy, target) if plan else None
    try:
        result = pitr.run(policy, target, target_dir=target_dir, from_site=from_site, port=port, start=start,
                          plan_only=plan, action=action or "promote", force=force, backup_id=backup_id)
    except RestoreRefused as exc:
        # The refusal says why the plan failed overall; each site's own answer says where the
        # point could still be restored from (or why not), as `pgvault windows --at` does.
        if per_site is not None:
            if as_json:
                emit_json({"refused": exc.message, "sites": per_site.as_dict()})
            else:
                _print_per_site(per_site)
        raise
    if found is not None:
        from .find import hand_back

        hand_back(result, found, port, as_json=as_json, copy_back_to=unused.get("copy_back_to"))
    if as_json:
        emit_json({**result.__dict__, **({"sites": per_site.as_dict()} if per_site is not None else {})})
        return 0
    for w in result.warnings:
        warn(w)
    _print_plan(result.plan)
    if per_site is not None:
        _print_per_site(per_site)
    if plan:
        click.echo("plan only: nothing was changed")
        return 0
    if result.base_site and result.base_site != result.plan.get("base", {}).get("site"):
        warn(f"the base's copy at site {result.plan['base']['site']!r} failed its checksum; "
             f"laid down from site {result.base_site!r} instead (pgvault verify shows the damage)")
    click.echo(f"restored base from site {result.base_site!r} into {result.target_dir} "
               "(recovery settings written; archive_mode off)")
    if result.outcome:
        o = result.outcome
        click.echo(f"recovery {o['state']}: timeline {o['timeline']}, LSN {o['replay_lsn']}, "
                   f"last replayed transaction at {o['last_replayed_transaction_time'] or 'none'}")
        if o.get("postgres_says"):
            click.echo(f"postgres: {o['postgres_says']}")
        if result.port and o["state"] != "shut down":
            # It listens only on a socket in the target dir (no TCP, no clash with the host's cluster).
            click.echo(f"connect with: psql -h {result.target_dir} -p {result.port} -U postgres")
    else:
        click.echo(f"start it with: pg_ctl -D {result.target_dir} start   (as the postgres user)")
    click.echo("timings: " + ", ".join(f"{k} {v}s" for k, v in result.timings.items()))
    return 0
