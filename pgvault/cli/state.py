"""pgvault state show | rebuild: the local job state (a cache of what the sites say)."""
from __future__ import annotations

import click

from . import load
from .output import emit_json, table


@click.group()
def state():
    """Show or rebuild the local job state (last runs, outcomes)."""


@state.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def show(ctx, as_json):
    """Each job's last run, outcome and backup id, as recorded on this host."""
    from ..tick.engine import open_store

    policy = load(ctx)
    store = open_store(policy)
    docs, rows = [], []
    for name in policy.jobs:
        st = store.load(name)
        if st is None:
            rows.append([name, "-", "-", "-", "never seen by tick"])
            docs.append({"job": name})
            continue
        doc = st.to_doc()
        docs.append(doc)
        last = st.last
        note = ""
        # Only the job's lock says whether a run is alive: held = running; free, but its file
        # still names a holder (a clean release empties it) or "running" was recorded = it died.
        lock = store.lock(name)
        holder = lock.held()
        if holder is not None:
            note = f"RUNNING pid {holder.get('pid', '?')}; "
        else:
            dead = lock.holder() or st.running
            if dead:
                note = (f"INTERRUPTED: the run started {dead.get('started_at', '?')} (pid {dead.get('pid', '?')}) "
                        "died; the next tick runs its slot again; ")
        tail = ""
        if st.interrupted:
            tail = f" (last interrupted run: started {st.interrupted.started_at:%Y-%m-%d %H:%M:%SZ})"
        rows.append([name, last.started_at.strftime("%Y-%m-%d %H:%M:%SZ") if last else "-",
                     last.outcome if last else "-", (last.backup_id or "-") if last else "-",
                     note + (last.message if last else "") + tail])
    if as_json:
        emit_json(docs)
    else:
        click.echo(f"state dir: {store.root}")
        click.echo(table(rows, ["JOB", "LAST START", "OUTCOME", "BACKUP", "MESSAGE"]))
    return 0


@state.command()
@click.pass_context
def rebuild(ctx):
    """Rebuild each job's last success from the sites' manifests (the sites are the truth)."""
    from ..tick.engine import Clock, open_store, rebuild_states

    policy = load(ctx)
    store = open_store(policy)
    now = Clock.from_env().now()
    for name, st in rebuild_states(policy, store, list(policy.jobs), now).items():
        click.echo(f"{name}: last backup {st.last.backup_id if st.last else 'none at any site'}")
    store.drop_tick_note()
    return 0
