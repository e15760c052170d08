"""Scheduled drills for ``pgvault tick``: every drill with a ``schedule:`` becomes one item
of the engine's schedule (engine.scheduled adds them after the backup jobs).

Each item runs one drill (at each of its sites) through run_drills, which stores the evidence
at the sites; the engine records the outcome and handles locks and catch-up like any job."""
from __future__ import annotations

import logging

log = logging.getLogger("pgvault.tick.drills")

PREFIX = "drill:"


def item_name(drill_name: str) -> str:
    """The engine's name for a drill's schedule item (its lock and state).
    >>> item_name("nightly-logical")
    'drill:nightly-logical'
    """
    return PREFIX + drill_name


def scheduled(policy) -> list:
    """The engine's Scheduled items for drills that have a schedule."""
    from ..drills.load import DrillDefinitionError, load_drills
    from ..drills.sources import sites_for
    from .items import Scheduled

    if not policy.drills:
        return []
    try:
        drills = load_drills(policy)
    except DrillDefinitionError as exc:
        # A broken drill file must not stop the backups of this tick: report it and go on.
        log.error("%s", exc.message)
        return []
    return [Scheduled(item_name(d.name), d.schedule, "UTC", _runner(policy, d.name), sites_for(policy, d), "drill")
            for d in drills if d.schedule]


def _runner(policy, name: str):
    def run(now):
        from ..drills.runner import run_drills
        from .items import Outcome

        results = run_drills(policy, [name])
        sites = [r.site for r in results]
        failed = [r for r in results if not r.ok]
        if failed:
            return Outcome("failed", None, "; ".join(f"{r.case_name}: {r.failure}" for r in failed), sites)
        rto = max((r.rto_seconds or 0.0) for r in results) if results else 0.0
        return Outcome("success", None, f"drill passed at {', '.join(sites)} (worst RTO {rto:.1f}s)", sites)
    return run
