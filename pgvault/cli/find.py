"""pgvault find: the transactions that truncated, dropped or emptied a table, from archived WAL;
pgvault relations: take a relation-history record now."""
from __future__ import annotations

import click

from . import load
from .output import emit_json, human_size, table as fmt_table, warn


def _duration(text):
    if text is None:
        return None
    from ..errors import UsageError
    from ..policy.durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"bad --window {text!r}: {exc}", "use a duration such as 30m, 2h, 1d") from None


@click.command("find")
@click.option("--table", "table_name", required=True, metavar="SCHEMA.TABLE", help="the damaged table")
@click.option("--database", "-d", help="its database (needed when the name exists in several)")
@click.option("--around", help="roughly when it happened (ISO 8601, UTC unless an offset is given)")
@click.option("--window", help="how far around --around to look (default 1h)")
@click.option("--wal-dir", type=click.Path(), help="scan this directory of WAL segments instead of a site's archive")
@click.option("--from-site", help="read the WAL archive and relation history from this site")
@click.option("--timeline", type=int, help="timeline to scan (default: the newest present)")
@click.option("--no-record", is_flag=True, help="do not refresh the relation history from the cluster first")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def find(ctx, table_name, database, around, window, wal_dir, from_site, timeline, no_record, as_json):
    """List the transactions that truncated, dropped, rewrote or mass-deleted a table.

    \b
    pgvault find --table public.orders --around '2026-11-25 14:20' --window 30m
    The first damaging candidate is what `pgvault restore --before-truncate` stops before.
    """
    from ..restore.finder import find as run_find

    policy = load(ctx)
    if window and not around:
        from ..errors import UsageError

        raise UsageError("--window needs --around", "give --around TIME, or drop --window to scan all archived WAL")
    res = run_find(policy, table_name, database=database, around=around, window=_duration(window), wal_dir=wal_dir,
                   from_site=from_site, record=not no_record, timeline=timeline)
    for n in res.notes:
        warn(n)
    if as_json:
        emit_json(res.to_dict())
        return 0
    s = res.stats
    click.echo(f"table {res.table} in database {res.database}: scanned {s.segments} segments "
               f"({human_size(s.bytes)}) from {res.source} in {s.seconds:.1f}s")
    if not res.candidates:
        click.echo("no transaction truncated, dropped, rewrote or mass-deleted it in the scanned WAL")
        return 0
    rows = [[c.xid, c.lsn, c.time.strftime("%Y-%m-%d %H:%M:%S.%f UTC") if c.time else "-", c.kind,
             c.confidence, "yes" if c.damaging else "no", c.detail] for c in res.candidates]
    click.echo(fmt_table(rows, ["XID", "COMMIT LSN", "COMMIT TIME", "KIND", "CONFIDENCE", "DAMAGE", "DETAIL"]))
    best = res.best
    if best:
        target = " ".join(f"{k}={v}" for k, v in best.recovery_target().items())
        click.echo(f"\nrecover to just before it: {target}\n"
                   f"  pgvault restore --before-truncate {res.table} --database-name {res.database}"
                   + (f" --around '{around}'" if around else "") + " --target-dir DIR --start")
    return 0


@click.command("relations")
@click.option("--force", is_flag=True, help="store a record even when nothing changed")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def relations_cmd(ctx, force, as_json):
    """Record which file each table lives in now (the relation history used by find)."""
    from ..catalog.relations import record_relations

    r = record_relations(load(ctx), force=force)
    if as_json:
        emit_json(r.__dict__)
    elif r.key:
        click.echo(f"recorded {r.tables} tables in {r.databases} databases at {', '.join(r.stored_at)}: {r.key}")
    else:
        click.echo("unchanged since the newest record; nothing stored")
    for site, msg in r.failed.items():
        warn(f"site {site!r}: {msg}")
    return 0


# -- restore --before-truncate (called from pgvault.cli.restore_pitr.run_pitr)

def before_truncate_target(policy, table_name, *, from_site=None, as_json=False, around=None, window=None,
                           find_database=None, **_):
    """Find the damaging transaction, say which one was chosen, and return the PITR target
    that stops just before it (inclusive off) with what was found."""
    from ..restore.finder import resolve_before_truncate
    from ..restore.plan import Target
    from ..lsn import parse_lsn

    if window and not around:
        from ..errors import UsageError

        raise UsageError("--window needs --around", "give --around TIME, or drop --window")
    rt, res = resolve_before_truncate(policy, table_name, find_database, around, _duration(window), from_site=from_site)
    c = rt.candidate
    for n in res.notes:
        warn(n)
    when = c.time.isoformat() if c.time else "unknown time"
    if not as_json:
        click.echo(f"damaging transaction: {c.kind} of {res.table} (database {res.database}) by xid {c.xid}, "
                   f"committed {when} at {c.lsn} [{c.confidence}]: {c.detail}", err=True)
    if rt.lsn:
        target = Target("lsn", lsn=parse_lsn(rt.lsn), inclusive=False,
                        how=f"just before the DROP DATABASE record at {rt.lsn} (inclusive off)")
    else:
        target = Target("xid", xid=rt.xid, inclusive=False,
                        how=f"just before transaction {rt.xid} (recovery_target_inclusive = off)")
    return target, res


def hand_back(result, found, port, *, as_json=False, copy_back_to=None):
    """Print (or run, with --copy-back-to) the commands that copy the table back from the
    restored instance; record them in the result."""
    from .. import proc
    from ..restore import copyback

    best = found.best
    src = f"host={result.target_dir} port={port or 'PORT'} user=postgres"
    cb = copyback.plan(best.kind, found.table, found.database, src, copy_back_to or "CONNINFO")
    result.plan["before_truncate"] = {**best.to_dict(), "table": found.table, "database": found.database,
                                      "copy_back": cb.shell()}
    paused = bool(result.outcome and result.outcome.get("state") == "paused")
    if copy_back_to:
        from ..errors import UsageError

        if not paused:
            raise UsageError("--copy-back-to needs the restored instance running and paused",
                             "add --start (and keep --action pause)")
        if best.kind != "MASS DELETE":
            copyback.end_recovery(src)
            result.plan["before_truncate"]["side_instance"] = "promoted after pausing, to read the table"
            if best.kind == copyback.DROP_DATABASE and copyback.revalidate_database(src, found.database):
                result.plan["before_truncate"]["side_instance"] += "; the database DROP DATABASE had marked invalid was made connectable there"
        copyback.run(cb)
        result.plan["before_truncate"]["copied_back_to"] = True
        if not as_json:
            click.echo(f"copied {found.table} back into the target database", err=True)
    elif not as_json:
        steps = cb.shell()
        if best.kind != "MASS DELETE":
            # While paused, the replayed lock of the damaging transaction still blocks the table.
            steps.insert(0, proc.quote(["psql", f"{src} dbname=postgres", "-c", "SELECT pg_wal_replay_resume()"])
                         + "   # end recovery on the side instance: releases the damaging transaction's lock")
        click.echo("hand the table back with:\n  " + "\n  ".join(steps), err=True)
