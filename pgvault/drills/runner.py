"""Running drills: for each drill (x site), restore into a scratch instance, run the checks,
measure RTO (and RPO for PITR), tear the scratch instance down whatever happened, store the
evidence at the site, and hand back results for the reports.

The teardown is in a ``finally`` and SIGTERM/SIGHUP are turned into an exception for the
duration of a run, so Ctrl-C, a CI timeout's SIGTERM or a failing restore all leave no
postmaster and no scratch directory behind."""
from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .. import signals
from ..signals import Interrupted
from ..errors import PgvaultError
from ..policy.durations import format_duration
from .checks import CheckContext, CheckResult, run_canary, run_check
from .model import Drill
from .scratch import Scratch, Teardown
from .sources import DrillRun, adapter_for, sites_for, source_method

log = logging.getLogger("pgvault.drills")


class DrillInterrupted(Interrupted):
    """SIGTERM or SIGHUP during a drill run (Ctrl-C is a KeyboardInterrupt already)."""


@dataclass
class DrillResult:
    drill: str
    site: str
    method: str
    target: str
    started_at: datetime
    finished_at: datetime | None = None
    ok: bool = False
    failure: str | None = None
    backup_id: str | None = None
    restored: str | None = None
    rto_seconds: float | None = None
    rto_budget_seconds: float | None = None
    rpo_seconds: float | None = None
    target_time: datetime | None = None
    replayed_until: datetime | None = None
    checks: list[CheckResult] = field(default_factory=list)
    teardown: Teardown | None = None
    scratch_dir: str | None = None
    port: int | None = None
    evidence: str | None = None
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False

    @property
    def drill_id(self) -> str:
        """Unique per run and site, sortable: ``20261125T221530Z-nightly-logical``."""
        return f"{self.started_at.strftime('%Y%m%dT%H%M%SZ')}-{self.drill}"

    @property
    def case_name(self) -> str:
        return f"{self.drill} @ {self.site}"


def plan(policy, drills: list[Drill]) -> list[tuple[Drill, str]]:
    """Every (drill, site) pair to run, in order."""
    return [(d, s) for d in drills for s in sites_for(policy, d)]


def _rto_budget(policy, drill: Drill) -> float | None:
    budget = drill.rto if drill.rto is not None else policy.objectives.rto
    return None if budget is None else budget.total_seconds()


def run_one(policy, drill: Drill, site: str, *, scratch_root=None, canary=None, warn=None) -> DrillResult:
    """One drill at one site. Never raises: a failure, or an interruption (then ``interrupted``
    is set and the caller stops the run), is recorded in the result after the teardown."""
    method = source_method(policy, drill)
    result = DrillResult(drill.name, site, method, drill.target, datetime.now(timezone.utc),
                         rto_budget_seconds=_rto_budget(policy, drill))
    run = DrillRun(policy, drill, site, method, result.started_at, canary, warn)
    scratch: Scratch | None = None
    t0 = time.monotonic()
    try:
        scratch = Scratch(f"{drill.name}-{site}", root=scratch_root, bindir=policy.cluster.bin_dir)
        result.scratch_dir, result.port = str(scratch.dir), scratch.port
        restored = adapter_for(method)(run, scratch)
        result.backup_id, result.restored = restored.backup_id, restored.target
        result.target_time, result.replayed_until = restored.target_time, restored.replayed_until
        result.notes += restored.notes
        ctx = CheckContext(restored.instance, restored.manifest, canary.expected() if canary else {})
        for check in drill.checks:
            result.checks.append(run_check(check, ctx))
        if canary is not None:
            result.checks.append(run_canary(ctx))
        result.rto_seconds = time.monotonic() - t0
        if restored.target_time and restored.replayed_until:
            result.rpo_seconds = max(0.0, (restored.target_time - restored.replayed_until).total_seconds())
        failed = [c.detail for c in result.checks if not c.ok]
        if failed:
            result.failure = f"{len(failed)} check(s) failed: " + " | ".join(failed)
        elif result.rto_budget_seconds is not None and result.rto_seconds > result.rto_budget_seconds:
            result.failure = (f"RTO {format_duration(result.rto_seconds)} exceeds the budget of "
                              f"{format_duration(result.rto_budget_seconds)} (restore and checks passed)")
    except PgvaultError as exc:
        result.failure = f"restore failed: {exc.message}" + (f" (HINT: {exc.hint})" if exc.hint else "")
    except KeyboardInterrupt as exc:
        result.failure = f"interrupted ({exc or 'Ctrl-C'}) after {format_duration(time.monotonic() - t0)}"
        result.interrupted = True
    except Exception as exc:  # one broken drill must not cost the others their reports
        log.exception("drill %s at %s", drill.name, site)
        result.failure = f"unexpected error (a bug in pgvault): {type(exc).__name__}: {exc}"
    finally:
        if scratch is not None:
            with signals.deferred() as pending:
                result.teardown = scratch.destroy()
            if not result.teardown.ok and not result.failure:
                result.failure = f"teardown failed: {result.teardown.detail}"
            if pending and not result.interrupted:
                result.interrupted = True
                result.failure = result.failure or f"interrupted ({signal.Signals(pending[0]).name}) during teardown"
        result.finished_at = datetime.now(timezone.utc)
        result.ok = result.failure is None
    return result


def not_run(policy, drill: Drill, site: str, why: str) -> DrillResult:
    """The result of a drill that could not start at a site."""
    now = datetime.now(timezone.utc)
    return DrillResult(drill.name, site, source_method(policy, drill), drill.target, now, finished_at=now,
                       failure=why, rto_budget_seconds=_rto_budget(policy, drill))


def _notify_failure(policy, r: DrillResult) -> None:
    """Best effort, like every notification: never fails the drill run."""
    if "notify" not in type(policy).model_fields:  # a build without notifications
        return
    try:
        from ..notify import notify

        notify(policy, {"event": "drill_failed", "drill": r.drill, "site": r.site, "drill_id": r.drill_id,
                        "message": f"drill {r.case_name} failed: {r.failure}"})
    except Exception as exc:  # noqa: BLE001 - a failed notification never fails the run
        log.warning("drill_failed notification not sent: %s", getattr(exc, "message", exc))


def run_drills(policy, names: list[str] | None = None, report_dir: str | Path | None = None, *,
               scratch_root=None, store_evidence: bool = True, warn=None,
               on_result: Callable[[DrillResult], None] | None = None) -> list[DrillResult]:
    """Run the named drills (default: all), store evidence at each site, write the reports.

    This is what ``pgvault drill run`` and ``pgvault tick`` call. The caller decides the exit
    status from ``all(r.ok for r in results)``."""
    from .canary import CanaryNotPlanted, plant_for
    from .load import load_drills
    from .reports import store_evidence as store, write_reports

    drills = load_drills(policy, names)
    results: list[DrillResult] = []

    def done(r: DrillResult) -> None:
        if store_evidence:
            r.evidence = store(policy, r)
        if not r.ok:
            _notify_failure(policy, r)
        results.append(r)
        if on_result:
            on_result(r)

    try:
        with signals.raising(DrillInterrupted):
            for drill in drills:
                sites = sites_for(policy, drill)
                try:
                    with plant_for(policy, drill) as canary:
                        for site in sites:
                            r = run_one(policy, drill, site, scratch_root=scratch_root, canary=canary, warn=warn)
                            done(r)
                            if r.interrupted:
                                raise DrillInterrupted(r.failure)
                except CanaryNotPlanted as exc:
                    # Every site's drill fails with the reason; the other drills still run.
                    for site in sites:
                        done(not_run(policy, drill, site, exc.message + (f" (HINT: {exc.hint})" if exc.hint else "")))
    except KeyboardInterrupt:
        # Whatever ran is torn down and recorded; the reports say the run was cut short.
        if report_dir:
            write_reports(results, report_dir, interrupted=True, cluster=policy.cluster.name)
        raise
    if report_dir:
        write_reports(results, report_dir, cluster=policy.cluster.name)
    return results
