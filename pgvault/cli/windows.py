"""pgvault windows [--site S] [--json] [--at T]: which points can be restored to, from where.

Per site and timeline: the recoverable intervals (from a base's consistency point to the end
of the archived WAL), the holes between them and why, and which base each restores from
(docs/windows.md). With --at T: per site, is T restorable, from which base, how much WAL."""
from __future__ import annotations

import click

from . import load
from .output import emit_json, human_size, table, warn


def _t(iso: str | None) -> str:
    return iso[:19].replace("T", " ") + "Z" if iso else "-"


def _dur(seconds: float) -> str:
    from ..policy.durations import format_duration

    return format_duration(int(seconds))


def answer_lines(answers) -> list[str]:
    """The per-site answer to "restorable at T?" as `windows --at` and `restore --plan` print it."""
    lines = []
    for a in answers:
        if a.restorable:
            b = a.base
            proved = [d for d in a.interval.drills if d.passed]
            lines.append(f"  {a.site}: restorable from {b.method} base {b.backup_id} (timeline {a.interval.timeline}), "
                         f"replaying {a.segments} WAL segment(s) ({human_size(a.bytes)}); {a.reason}"
                         + (f"; proved by drill(s) {', '.join(sorted({d.drill for d in proved}))}" if proved else ""))
        else:
            lines.append(f"  {a.site}: NOT restorable: {a.reason}")
    return lines


def _drill_mark(d) -> str:
    return f"{d.drill} {'passed' if d.passed else 'FAILED'} at {_t(d.at and d.at.isoformat())}"


@click.command("windows")
@click.option("--site", "site", metavar="SITE", help="only this site (default: every WAL site of the policy)")
@click.option("--at", "at", metavar="TIME", help="answer per site: is TIME restorable, from which base, how much WAL")
@click.option("--all-clusters", "all_clusters", is_flag=True,
              help="with --site: every cluster stored at that site, each with its window (read from the site alone)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def windows_cmd(ctx, site, at, all_clusters, as_json):
    """Recoverable intervals per site and timeline, and the holes between them."""
    from ..restore.plan import parse_time
    from ..restore.windows_read import read

    policy = load(ctx)
    target = parse_time(at) if at else None          # bad input fails before any site is read
    if all_clusters:
        return _fleet(policy, site, target, as_json)
    standbys = _standbys(policy) if not site else {}
    if target is not None:
        from ..restore.windows_read import at as at_sites

        t, how = target
        found = at_sites(policy, t, site)
        undo = {n: _undoes(f, t) for n, f in standbys.items()}
        if as_json:
            emit_json({"at": t.isoformat(), "read_as": how, "sites": found.as_dict(), "standbys": undo,
                       "warnings": found.warnings})
        else:
            for msg in found.warnings:
                warn(msg)
            click.echo(f"at {how}")
            for line in answer_lines(found.answers):
                click.echo(line)
            for n, u in undo.items():
                click.echo(f"  standby {n}: " + ("damage at that instant can be undone from it (not applied yet)"
                                                 if u["undoable"] else f"NOT undoable from it: {u['reason']}"))
        # 0 when some site (or standby) can restore the point, 1 when none can (the answer is no).
        return 0 if any(a.restorable for a in found.answers) or any(u["undoable"] for u in undo.values()) else 1
    r = read(policy, site)
    # Like wal-status and list: a site that could not be read is exit 3 (something outside
    # pgvault is unreachable), after what the other sites said has been printed.
    unreadable = 3 if r.unreachable else 0
    if as_json:
        emit_json({"sites": [w.as_dict() for w in r.windows], "standbys": standbys, "warnings": r.warnings,
                   "unreachable": r.unreachable})
        return unreadable
    for msg in r.warnings:
        warn(msg)
    if not r.windows:
        click.echo("no WAL site could be read")
    for w in r.windows:
        u = w.unbroken()
        click.echo(f"site {w.site}: " + (f"unbroken window {_dur(u.seconds())} ({_t(u.start_time and u.start_time.isoformat())} "
                                         f".. {_t(u.end_time and u.end_time.isoformat())}, timeline {u.timeline}), "
                                         f"{len(w.holes)} hole(s)" if u else "nothing restorable"))
        rows = []
        for tw in w.timelines:
            for iv in tw.intervals:
                d = iv.as_dict(w.segment_size)
                rows.append([str(tw.timeline), "restorable", _t(d["start_time"]), _t(d["end_time"])
                             + (" (archived)" if iv.end_time_kind == "archived" else ""),
                             f"{d['start_lsn']}..{d['end_lsn']}", f"{iv.base.method} {iv.base.backup_id}"
                             + (f" (+{len(iv.bases) - 1} newer)" if len(iv.bases) > 1 else "")])
            for h in tw.holes:
                d = h.as_dict()
                rows.append([str(tw.timeline), "HOLE", _t(d["start_time"]), _t(d["end_time"]),
                             f"{d['start_lsn']}..{d['end_lsn']}", h.detail])
            for child, at_lsn in tw.forks:
                from ..lsn import format_lsn

                rows.append([str(tw.timeline), "fork", "", "", format_lsn(at_lsn), f"timeline {child} branches here"])
        if rows:
            click.echo(table(rows, ["TLI", "KIND", "FROM", "TO", "LSN", "BASE / CAUSE"]))
        for iv in w.intervals():
            for d in iv.drills:
                click.echo(f"  drill {_drill_mark(d)} (timeline {iv.timeline}, interval from "
                           f"{_t(iv.start_time and iv.start_time.isoformat())})")
        for d in w.unplaced_drills:
            click.echo(f"  drill {_drill_mark(d)}: outside every interval today")
        for x in w.unusable:
            click.echo(f"  unusable base {x.base.method} {x.base.backup_id}: {x.reason}")
    for n, f in standbys.items():
        if f.get("error"):
            click.echo(f"standby {n}: cannot be read: {f['error']}")
        else:
            click.echo(f"standby {n}: undoes damage committed after {_t(f['from'])} (its last applied commit; "
                       f"promised {_dur(f['promised_seconds'])} behind) up to {_t(f['to'])}, WAL to {f['to_lsn'] or '-'}"
                       + ("; replay PAUSED" if f.get("paused") else ""))
    return unreadable


def _standbys(policy) -> dict:
    """The undo window of each delayed standby (pgvault.methods.standby.probe): damage committed
    after its last applied commit has not reached it and can be undone from it."""
    from ..methods.standby import probe, standby_jobs
    from ..sites.readonly import site_timeout

    out = {}
    for n, job in standby_jobs(policy).items():
        f = probe(job, timeout=site_timeout(policy))
        if not f["reachable"]:
            out[n] = {"error": f["error"], "promised_seconds": job.delay.total_seconds()}
            continue
        out[n] = {**f["window"], "paused": f["paused"], "in_recovery": f["in_recovery"],
                  "promised_seconds": job.delay.total_seconds()}
    return out


def _undoes(f: dict, t) -> dict:
    """Whether damage committed at ``t`` can still be undone from a standby with window ``f``."""
    from datetime import datetime

    if f.get("error"):
        return {"undoable": False, "reason": f"unreadable: {f['error']}"}
    if not f.get("in_recovery"):
        return {"undoable": False, "reason": "it is not in recovery"}
    start = datetime.fromisoformat(f["from"]) if f.get("from") else None
    if start is not None and t <= start:
        return {"undoable": False, "reason": f"it has applied commits up to {f['from']}"}
    if t > datetime.fromisoformat(f["to"]):
        return {"undoable": False, "reason": "that is in the future"}
    return {"undoable": True, "reason": "not applied yet"}


def _fleet(policy, site, target, as_json) -> int:
    """pgvault windows --site S --all-clusters: one line (or JSON entry) per cluster at the site."""
    from ..errors import UsageError
    from ..restore.windows_read import all_clusters

    if not site:
        raise UsageError("--all-clusters reads one site", "add --site SITE")
    if target is not None:
        raise UsageError("--at and --all-clusters do not go together yet", "ask --at per cluster's policy")
    found = all_clusters(policy, site)
    if as_json:
        emit_json({"site": site, "clusters": [{"cluster": c, **w.as_dict()} for c, w in found]})
        return 0
    rows = []
    for c, w in found:
        u = w.unbroken()
        rows.append([c, _dur(u.seconds()) if u else "-", _t(u.start_time.isoformat()) if u and u.start_time else "-",
                     _t(u.end_time.isoformat()) if u and u.end_time else "-", str(len(w.holes)),
                     str(len(w.unusable))])
    click.echo(f"site {site}: {len(found)} cluster(s)")
    if rows:
        click.echo(table(rows, ["CLUSTER", "UNBROKEN", "FROM", "TO", "HOLES", "UNUSABLE BASES"]))
    return 0
