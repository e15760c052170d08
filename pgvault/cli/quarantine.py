"""pgvault quarantine [list] | extract | resolve: WAL kept out of the archive (docs/ha.md)."""
from __future__ import annotations

from pathlib import Path

import click

from . import load
from .output import emit_json, table


def _sites(policy, site: str | None) -> dict:
    from ..errors import UsageError
    from ..sites import open_sites

    if site is not None and site not in policy.wal.sites:
        raise UsageError(f"no WAL site {site!r} in the policy", f"WAL sites: {', '.join(policy.wal.sites)}")
    return open_sites(policy, [site] if site else list(policy.wal.sites))


@click.group(invoke_without_command=True)
@click.option("--site", default=None, help="one WAL site (default: every WAL site)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--resolved", "show_resolved", is_flag=True, help="list the resolved ones instead")
@click.pass_context
def quarantine(ctx, site, as_json, show_resolved):
    """WAL kept out of the archive (a zombie primary's, an abandoned branch's, a conflict): list."""
    if ctx.invoked_subcommand is not None:
        return None
    from ..wal import quarantine as q
    from ..wal.divergence import sender_name

    policy = load(ctx)
    sites = _sites(policy, site)
    docs = q.resolved(policy, sites) if show_resolved else q.listing(policy, sites)
    if as_json:
        emit_json(docs)
        return 0
    rows = []
    for d in docs:
        who = d.get("sender") or {}
        rows.append([d["site"], f"{d['name']}-{(d.get('sha256') or '')[:8]}", d.get("reason") or "-",
                     str(d.get("timeline") or "-"), "-".join(d.get("lsn_range") or []) or "-",
                     sender_name(who), str(d.get("received_at") or "")[:19]]
                    + ([str(d.get("resolved_at") or "")[:19], d.get("note_resolved") or ""] if show_resolved else []))
    head = ["SITE", "FILE", "REASON", "TIMELINE", "LSN RANGE", "SENT BY", "RECEIVED"]
    click.echo(table(rows, head + (["RESOLVED", "NOTE"] if show_resolved else [])) if rows else
               f"no {'resolved ' if show_resolved else ''}quarantined WAL at {', '.join(sites)}")
    return 0


@quarantine.command()
@click.argument("name")
@click.option("--to", "dest", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="directory to write the WAL file into (created; an existing file is never overwritten)")
@click.option("--site", default=None, help="read from this WAL site only")
@click.pass_context
def extract(ctx, name, dest, site):
    """Write quarantined WAL file NAME (or NAME-SHA8) as PostgreSQL wrote it, for pg_waldump or a replay."""
    from ..wal import quarantine as q

    policy = load(ctx)
    path, sname = q.extract(policy, _sites(policy, site), name, dest)
    click.echo(f"{path} (from site {sname}; sha256 checked against its evidence)")
    return 0


@quarantine.command()
@click.argument("names", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="every unresolved quarantined file")
@click.option("--note", required=True, help="what was done (kept with the evidence)")
@click.option("--site", default=None, help="at this WAL site only (default: every WAL site)")
@click.pass_context
def resolve(ctx, names, everything, note, site):
    """Mark quarantined WAL as dealt with: moved with its evidence to quarantine/resolved/, kept."""
    from ..errors import UsageError
    from ..wal import quarantine as q

    if not names and not everything:
        raise UsageError("name the files to resolve, or --all", "list them with `pgvault quarantine`")
    policy = load(ctx)
    done = q.resolve(policy, _sites(policy, site), list(names), note=note, everything=everything)
    for sname, name in done:
        click.echo(f"site {sname}: {name} resolved (kept under quarantine/resolved/)")
    return 0
