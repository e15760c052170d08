"""Which node of a Patroni cluster runs a due item: ``pgvault tick`` runs on every node from the
same timer, and each job must run on exactly one of them (see docs/ha.md).

No lock of pgvault's own: the node is the one Patroni's view names (``pgvault.patroni.choose``:
the leader for ``from: primary``, the first running replica by name for standby jobs), read from
this host's Patroni once per tick. Scheduled drills run where a ``prefer-standby`` job would,
sparing the leader a restore's CPU.

Due-ness of a backup job in a cluster is read from the sites before anything runs: a node that
did not run the last slot (another node did) has an old local state, and after a failover it
would otherwise run that slot again at once. The newest manifest of the job at any site is the
truth (as when a state is rebuilt), so every node — the chosen one and the others — moves its
anchor to the backup the chosen node wrote, and goes idle.
"""
from __future__ import annotations

import logging
from datetime import datetime

from ..errors import PgvaultError
from ..policy.schedule import Due, due
from .items import Scheduled
from .state import JobState, StateStore

log = logging.getLogger("pgvault.tick.ha")


class Gate:
    """One tick's view of the cluster (Patroni is asked once, when an item is first due)."""

    def __init__(self, policy, store: StateStore, rebuild):
        self.policy = policy
        self.store = store
        self.rebuild = rebuild  # engine.rebuild_states (passed in: the engine imports this module)
        self._view = None
        self._error: str | None = None

    def view(self):
        if self._view is None and self._error is None:
            from ..patroni import view

            cfg = self.policy.cluster.patroni
            try:
                self._view = view(cfg.url, cfg.timeout.total_seconds())
            except PgvaultError as exc:
                self._error = exc.message + (f" (HINT: {exc.hint})" if exc.hint else "")
        return self._view

    def where(self, item: Scheduled) -> str:
        if item.kind != "backup":
            return "prefer-standby"
        return self.policy.jobs[item.name].from_

    def decide(self, item: Scheduled, d: Due, st: JobState, now: datetime, *, save: bool):
        """(due, state, None) when this node runs ``item`` now; else (.., .., (action, reason)) to report."""
        if item.kind == "backup":
            st = self.refresh(item.name, st, now, save=save)
            d = due(item.schedule, item.tz, st.anchor, now)
            if not d.due:
                return d, st, ("idle", f"run by another node: its newest backup is "
                                                      f"{st.last.backup_id if st.last else '?'}; " + d.reason(False))
        v = self.view()
        if v is None:
            return d, st, ("failed", f"not run: cannot tell which node runs it: {self._error}")
        from ..patroni import choose

        where = self.where(item)
        chosen = choose(where, v)
        if v.me is None:
            return d, st, ("failed", "not run: this host's Patroni is not a member of the cluster it "
                                                    "reports (cluster.patroni.url must be this node's REST API)")
        if chosen is None:
            return d, st, ("failed" if v.me == _first_running(v) else "elsewhere",
                               f"no node is fit to run it (from: {where}); members: "
                               + ", ".join(f"{m.name} {m.role}/{m.state}" for m in v.members))
        if chosen.name != v.me:
            return d, st, ("elsewhere", f"runs on {chosen.name} ({chosen.role}; from: {where}, per "
                                                       f"Patroni); this node is {v.me}")
        return d, st, None

    def refresh(self, name: str, st: JobState, now: datetime, *, save: bool) -> JobState:
        """``st`` with its last run moved to the job's newest backup at the sites when that is
        newer (another node ran it)."""
        fresh = self.rebuild(self.policy, self.store, [name], now, save=False)[name]
        if fresh.last is not None and (st.last is None or fresh.last.started_at > st.last.started_at):
            st.last = fresh.last
            if st.last_success is None or fresh.last.started_at > st.last_success.started_at:
                st.last_success = fresh.last
            if save:
                self.store.save(st)
        return st


def _first_running(v) -> str | None:
    """The one member that reports a cluster with no fit node as a failure (the others say
    'elsewhere'), so the alarm is raised once, not on every node."""
    running = sorted(m.name for m in v.members if m.state in ("running", "streaming"))
    return running[0] if running else None
