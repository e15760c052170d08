"""pgvault check: policy, cluster, sites and tools, with Nagios-style exit codes
(0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN) and one summary line first."""
from __future__ import annotations

import click

from . import load
from .output import emit_json


@click.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--probes-only", is_flag=True, help="only probe the cluster, sites and tools (skip backups, WAL, drills)")
@click.option("--notify", "send", is_flag=True, help="notify items that became CRITICAL or recovered since the last --notify")
@click.pass_context
def check(ctx, as_json, probes_only, send):
    """Check the policy, the cluster, every site and the tools, then backups, WAL archiving and
    drills against the schedules and objectives; exit 0/1/2/3 like a Nagios plugin."""
    from .. import checks
    from ..sites.readonly import Deadline, site_timeout

    policy = load(ctx)  # an invalid policy raises PolicyError: every problem listed, exit 2
    # One deadline for every site read of this command: the write probes start first and run
    # beside status's reads, so a hanging site costs monitoring.site_timeout once, not per phase.
    deadline = Deadline(site_timeout(policy))
    probes = checks.site_probes(policy)
    doc = None
    if not probes_only:
        from ..status import status

        doc = status(policy, deadline=deadline)
        if send:
            from ..notify import notify_changes
            from ..status import all_items

            notify_changes(policy, all_items(doc))
    results = checks.run_checks(policy, status_doc=doc, probes=probes, deadline=deadline)
    state = checks.overall(results)
    rank = {checks.CRITICAL: 0, checks.WARNING: 1, checks.UNKNOWN: 2}
    bad = sorted((r for r in results if r.state != checks.OK), key=lambda r: rank[r.state])
    summary = f"PGVAULT {checks.STATE_NAMES[state]} - cluster {policy.cluster.name}: "
    summary += ("; ".join(r.message for r in bad[:3])) if bad else f"{len(results)} checks passed"
    if doc is not None:
        summary += perfdata(doc)
    if as_json:
        emit_json({"state": checks.STATE_NAMES[state], "summary": summary, "checks": [r.as_dict() for r in results]})
    else:
        click.echo(summary)
        for r in results:
            click.echo(f"{checks.STATE_NAMES[r.state]:8} {r.name}: {_detail(r)}")
            if r.hint and r.state != checks.OK:
                click.echo(f"         HINT: {r.hint}")
    return state


def perfdata(doc: dict) -> str:
    """Nagios performance data after a '|': backup ages and WAL lag per site, in seconds."""
    parts = []
    for j in doc["jobs"]:
        if j.get("age_seconds") is not None:
            parts.append(f"'age_{j['name']}_{j['site']}'={j['age_seconds']:.0f}s")
    for w in doc["wal"]:
        if w.get("lag_seconds") is not None:
            parts.append(f"'wal_lag_{w['site']}'={w['lag_seconds']:.0f}s")
            parts.append(f"'wal_lag_segments_{w['site']}'={w['lag_segments']}")
    return (" | " + " ".join(parts)) if parts else ""


def _detail(r) -> str:
    """The message without a leading subject that repeats the name ("job x at a: ...").

    >>> from pgvault.checks import CheckResult
    >>> _detail(CheckResult("wal a", 0, "wal at a: last 0000000100000000000000A3"))
    'last 0000000100000000000000A3'
    >>> _detail(CheckResult("objective rpo", 0, "objective RPO 5m: 3s now"))
    'objective RPO 5m: 3s now'
    """
    subject, sep, rest = r.message.partition(": ")
    same = sep and subject.replace(" at ", " ") == r.name.replace(" at ", " ")
    return rest if same else r.message
