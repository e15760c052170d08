"""pgvault restore: a logical backup (a database, or the whole cluster), or a cluster to a
point in time (delegated to pgvault.cli.restore_pitr)."""
from __future__ import annotations

import click

from . import load
from .output import emit_json, warn

PITR_OPTIONS = ("to_time", "to_lsn", "to_xid", "latest", "before_truncate")


@click.command()
@click.argument("backup_id", required=False)
@click.option("--from-site", help="read from this site first (others are the fallback)")
# logical
@click.option("--database", "-d", "databases", multiple=True, help="database of a logical backup to restore (repeatable)")
@click.option("--as", "new_name", help="restore the (single) database under this name")
@click.option("--all", "whole", is_flag=True, help="restore the whole cluster from a logical backup: globals, then every database")
@click.option("--target", "target_conninfo", help="conninfo of the server to restore a logical backup into (default: the policy's cluster)")
@click.option("--no-owner", is_flag=True, help="logical: do not restore ownership and privileges")
@click.option("--force", is_flag=True, help="restore into a non-empty database / directory")
# point in time
@click.option("--to-time", help="PITR target time (ISO 8601; UTC unless an offset is given)")
@click.option("--to-lsn", help="PITR target LSN, e.g. 0/3000060")
@click.option("--to-xid", help="PITR target transaction id")
@click.option("--latest", is_flag=True, help="PITR to the end of the archived WAL")
@click.option("--before-truncate", metavar="SCHEMA.TABLE", help="find the transaction that truncated/dropped the table and stop just before it")
@click.option("--around", help="with --before-truncate: roughly when it happened")
@click.option("--window", help="with --before-truncate: how far around --around to search (default 1h)")
@click.option("--database-name", "find_database", help="with --before-truncate: the database of the table")
@click.option("--target-dir", type=click.Path(), help="PITR: data directory to restore into (must be empty)")
@click.option("--port", type=int, help="PITR: port for the restored instance")
@click.option("--start", is_flag=True, help="PITR: start the restored instance and wait for the target")
@click.option("--action", type=click.Choice(["pause", "promote", "shutdown"]), default=None,
              help="PITR: recovery_target_action (default promote; pause with --before-truncate)")
@click.option("--plan", is_flag=True, help="print the plan and change nothing")
@click.option("--copy-back-to", help="with --before-truncate: copy the table back into this conninfo")
@click.option("--via-standby", metavar="NAME", help="with --before-truncate: undo from this delayed standby (a `method: standby` "
                                                   "job) instead of a base backup; falls back to the PITR route when it has "
                                                   "already replayed the damage (docs/standby.md)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@click.pass_context
def restore(ctx, backup_id, from_site, databases, new_name, whole, target_conninfo, no_owner, force, as_json, **pitr):
    """Restore a logical backup, or a cluster to a point in time.

    \b
    Logical:  pgvault restore BACKUP --database app --as app_restored [--target CONNINFO]
              pgvault restore BACKUP --all --target CONNINFO
    PITR:     pgvault restore --to-time '2026-11-25 14:20:00+01' --target-dir DIR [--start]
    """
    policy = load(ctx)
    if pitr.get("via_standby"):
        from .restore_standby import run_via_standby

        return run_via_standby(ctx, policy, from_site=from_site, force=force, as_json=as_json, **pitr)
    if any(pitr.get(k) for k in PITR_OPTIONS):
        from .restore_pitr import run_pitr

        return run_pitr(ctx, policy, backup_id=backup_id, from_site=from_site, force=force, as_json=as_json, **pitr)
    from ..errors import UsageError
    from ..restore import logical

    if not backup_id:
        raise UsageError("nothing to restore", "give a BACKUP id (see pgvault list) or a PITR target such as --to-time")
    target = target_conninfo or policy.cluster.conninfo
    if whole:
        result = logical.restore_cluster(policy, backup_id, target, from_site=from_site, force=force, warn=warn)
    else:
        if not databases:
            raise UsageError("which database?", "pass --database NAME (repeatable) or --all for the whole cluster")
        if new_name and len(databases) > 1:
            raise UsageError("--as renames one database; several were given")
        result = None
        for db in databases:
            r = logical.restore_database(policy, backup_id, db, target, new_name=new_name, from_site=from_site,
                                         no_owner=no_owner, force=force, warn=warn)
            if result is None:
                result = r
            else:
                result.databases.update(r.databases)
    if as_json:
        emit_json(result.__dict__)
    else:
        for src, dst in result.databases.items():
            click.echo(f"restored database {src!r} as {dst!r} from backup {backup_id} at site {result.site!r}")
        if result.globals_restored:
            click.echo("restored globals (roles, tablespaces)")
    return 0
