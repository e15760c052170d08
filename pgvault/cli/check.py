"""pgvault check: policy, cluster, sites and tools, with Nagios-style exit codes
(0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN) and one summary line first."""
from __future__ import annotations

import click

from . import load
from .output import emit_json


@click.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def check(ctx, as_json):
    """Check the policy, the cluster, every site and the tools; exit 0/1/2/3 like a Nagios plugin."""
    from .. import checks

    policy = load(ctx)  # an invalid policy raises PolicyError: every problem listed, exit 2
    results = checks.run_checks(policy)
    state = checks.overall(results)
    bad = [r for r in results if r.state != checks.OK]
    summary = f"PGVAULT {checks.STATE_NAMES[state]} - cluster {policy.cluster.name}: "
    summary += ("; ".join(r.message for r in bad[:3])) if bad else f"{len(results)} checks passed"
    if as_json:
        emit_json({"state": checks.STATE_NAMES[state], "summary": summary, "checks": [r.as_dict() for r in results]})
    else:
        click.echo(summary)
        for r in results:
            click.echo(f"{checks.STATE_NAMES[r.state]:8} {r.name}: {r.message}")
            if r.hint and r.state != checks.OK:
                click.echo(f"         HINT: {r.hint}")
    return state
