"""pgvault list / verify: read from the sites alone."""
from __future__ import annotations

import click

from . import load
from .output import emit_json, human_size, table, warn


def _sites(policy, site):
    from ..catalog.catalog import open_catalogs

    if site and site not in policy.sites:
        from ..errors import UsageError

        raise UsageError(f"no site {site!r} in the policy", f"sites: {', '.join(policy.sites)}")
    return open_catalogs(policy, [site] if site else list(policy.sites))


@click.command("list")
@click.option("--site", help="only this site")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--drills", is_flag=True, help="list the drill evidence kept at each site instead of backups")
@click.pass_context
def list_cmd(ctx, site, as_json, drills):
    """List the backups held at each site (read from the sites, not from local state); exit 3
    when a site could not be read (all are read at once, each within monitoring.site_timeout)."""
    from ..catalog.catalog import Catalog
    from ..sites.readonly import Deadline, Probes, open_readonly, site_timeout

    policy = load(ctx)
    if drills:
        return _list_drills(policy, site, as_json)
    names = list(_sites(policy, site))
    answers = Probes(names, lambda n: Catalog(open_readonly(policy, n), policy.cluster.name).manifests(),
                     what="list").wait(Deadline(site_timeout(policy)))
    docs, rows, failures = [], [], 0
    for name, answer in answers.items():
        if not answer.ok:
            warn(answer.message if answer.message.startswith(f"site {name!r}") else f"site {name!r}: {answer.message}")
            failures += 1
            continue
        for m in answer.value:
            docs.append({"site": name, "backup_id": m.backup_id, "job": m.job, "method": m.method,
                         "size": m.total_size, "started_at": m.started_at, "finished_at": m.finished_at,
                         "timeline": m.timeline, "start_lsn": m.start_lsn, "stop_lsn": m.stop_lsn,
                         "parent": m.parent, "pinned": bool(m.facts.get("pinned"))})
            rows.append([name, m.backup_id, m.job, m.method, human_size(m.total_size),
                         m.finished_at.strftime("%Y-%m-%d %H:%M:%SZ"), m.stop_lsn or "-"])
    if as_json:
        emit_json(docs)
    elif rows:
        click.echo(table(rows, ["SITE", "BACKUP", "JOB", "METHOD", "SIZE", "FINISHED", "STOP LSN"]))
    else:
        click.echo("no backups")
    return 3 if failures else 0


def _list_drills(policy, site, as_json) -> int:
    from ..drills.reports import list_evidence

    docs, failed = list_evidence(policy, list(_sites(policy, site)))
    for name, msg in failed.items():
        warn(f"site {name!r}: {msg}")
    if as_json:
        emit_json(docs)
    elif docs:
        secs = lambda v: "-" if v is None else f"{v:.1f}s"  # noqa: E731
        click.echo(table([[d["site"], d.get("drill_id", "?"), d.get("drill", "?"), d.get("target", "-"),
                           d.get("backup_id") or "-", d.get("outcome", "?").upper(), secs(d.get("rto_seconds")),
                           secs(d.get("rpo_seconds"))] for d in docs],
                         ["SITE", "DRILL ID", "DRILL", "TARGET", "BACKUP", "OUTCOME", "RTO", "RPO"]))
    else:
        click.echo("no drill evidence")
    return 3 if failed else 0


@click.command()
@click.argument("backup_id", required=False)
@click.option("--site", help="only this site")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def verify(ctx, backup_id, site, as_json):
    """Re-read and re-hash every artifact; report missing, corrupt and debris. Exit 1 on damage
    (missing or corrupt); debris alone is reported but is not damage (exit 0)."""
    from ..errors import PgvaultError
    from ..expire import DEBRIS_GRACE

    grace = f"{DEBRIS_GRACE.total_seconds() / 3600:g}h"

    policy = load(ctx)
    reports, bad = [], False
    for name, cat in _sites(policy, site).items():
        try:
            # A named backup is verified where it exists (or, with --site, reported missing there).
            if backup_id and not site and backup_id not in cat.backup_ids():
                continue
            r = cat.verify([backup_id] if backup_id else None)
        except PgvaultError as exc:
            warn(f"site {name!r}: {exc.message}")
            bad = True
            continue
        reports.append(r)
        bad |= not r.ok
    if backup_id and not reports and not bad:
        from ..errors import UsageError

        raise UsageError(f"no site holds backup {backup_id}", "list backups with pgvault list")
    if as_json:
        emit_json([{"site": r.site, "checked": r.checked, "bytes_read": r.bytes_read, "ok": r.ok,
                    "problems": [p.__dict__ for p in r.problems], "debris": r.debris} for r in reports])
    else:
        for r in reports:
            status = "DAMAGED" if not r.ok else f"ok, {len(r.debris)} debris (not damage)" if r.debris else "ok"
            click.echo(f"site {r.site}: {len(r.checked)} backup(s), {human_size(r.bytes_read)} re-hashed: {status}")
            for p in r.problems:
                click.echo(f"  {p.kind.upper():8} {p.backup_id}/{p.artifact}: {p.detail}")
            for d in r.debris:
                click.echo(f"  DEBRIS   {d} (no manifest: an interrupted backup, never listed or restored; "
                           f"`pgvault expire` removes it once it is {grace} old)")
    return 1 if bad else 0
