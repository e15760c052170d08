"""`pgvault lab run` and `pgvault lab soak`: build the world, start the load, take the first
backups, replay scenarios, check the pass criterion after each, write the reports, tear down.

The verdict of a scenario is *passed* only when its own checks and the whole criterion after it
(lab/checks.py) hold. A scenario that cannot run here (the HA ones without the Patroni harness)
is *not available*: reported as such in every report, never counted as passed."""
from __future__ import annotations

import os
import random
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ... import proc, sandbox
from . import checks, report
from .ledger import Ledger
from .outcome import Outcome
from .scenarios import QUICK, SCENARIOS, SOAKABLE
from .world import LOSE_WAL_ENV, World, tidy

LEDGER_RATE = 20.0
# A base is pgvault's own engine (one read of PGDATA, streamed to every site of the job: about
# 4 s to local + eu here); the quick lab still keeps one base site (eu) to stay inside CI's
# budget, and archives WAL and dumps to all three.
QUICK_BASE_SITES = ("eu",)
# The full lab: bases at local and eu (us holds dumps and WAL only).
FULL_BASE_SITES = ("local", "eu")


@dataclass
class Result:
    name: str
    title: str
    verdict: str                      # passed | failed | not available
    started_at: str
    seconds: float
    checks: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "verdict": self.verdict, "started_at": self.started_at,
                "seconds": round(self.seconds, 2), "timings": self.timings, "notes": self.notes,
                "checks": [c.as_dict() for c in self.checks]}


class Lab:
    def __init__(self, world: World, ledger: Ledger, say, *, samples: int, seed: int):
        self.world, self.ledger, self.say = world, ledger, say
        self.samples = samples
        self.ledger_rate = LEDGER_RATE
        # Restore points come from their own generator: the fault schedule drawn from the seed
        # stays the same whatever the ledger's timing makes the sampling draw.
        self.sample_rng = random.Random(seed + 1)
        self.restore_sites = list(world.base_sites)
        self._turn = 0
        self.results: list[Result] = []
        self.ha = None   # the Patroni cluster, built by the first HA scenario (lab/ha.py)
        self.prepare_notes: list[str] = []

    def note(self, text: str) -> None:
        self.say("  note: " + text)

    # -- the first minute: load, first backups
    def prepare(self) -> None:
        w = self.world
        w.sql("CREATE DATABASE lab", "postgres")
        self.ledger.create()
        self.ledger.start()
        proc.wait_until(lambda: self.ledger.count() >= 10, 30, "the first ledger commits", interval=0.1)
        checks._switch_and_wait(w, 90)
        w.first_segment = min(checks.stored_segments(w, "local"))
        for job in ("base",) if self.world.base_sites == QUICK_BASE_SITES else ("base", "dump"):
            ran = w.pgvault("backup", job)
            self.say(f"  {ran.shown()}: exit {ran.code} in {ran.seconds:.1f}s")
            if ran.code != 0:
                raise RuntimeError(f"the lab's first {job} backup failed: {ran.tail()}")
        # A base is restorable once the WAL up to its end is at its site; under load the spool
        # may still owe it there for a while.
        checks._switch_and_wait(w, 90)

        def starts():
            got = [datetime.fromisoformat(s["unbroken"]["start_time"]) for s in checks.windows_doc(w)["sites"]
                   if s["site"] in w.base_sites and s.get("unbroken") and s["unbroken"]["start_time"]]
            return got if len(got) == len(w.base_sites) else None
        try:
            found = proc.wait_until(starts, 180, "a restorable window at every base site", interval=2)
        except TimeoutError:
            raise RuntimeError("after the first base backup, not every base site has a restorable window "
                               f"(within 3 minutes): {checks.windows_doc(w)}") from None
        w.first_base_time = max(found)
        if os.environ.get(LOSE_WAL_ENV) == "1":
            self._lose_wal()

    def _lose_wal(self) -> None:
        """Test-only (docs/lab.md): for a few seconds under load, archive through a wal-push that
        reports success without storing, then put the honest one back. The lab must fail."""
        w = self.world
        self.prepare_notes.append(f"{LOSE_WAL_ENV}=1: WAL archived through a wal-push that stores nothing, for a while")
        self.say("  !! test-only switch: archiving through a wal-push that stores nothing")
        _set_archive_command(w, w.archive_command(lose_wal=True))
        first = self.ledger.count()
        for _ in range(2):
            proc.wait_until(lambda: self.ledger.count() >= first + 40, 30, "ledger commits", interval=0.1)
            checks._switch_and_wait(w, 60)
            first = self.ledger.count()
        _set_archive_command(w, w.archive_command())
        checks._switch_and_wait(w, 60)

    # -- one scenario
    def play(self, name: str) -> Result:
        sc = SCENARIOS[name]
        started = datetime.now(timezone.utc).isoformat()
        t0 = time.monotonic()
        self.say(f"\n=== {name}: {sc.title}")
        if not sc.available:
            r = Result(name, sc.title, "not available", started, 0.0, notes=[sc.why_not])
            self.say(f"  NOT AVAILABLE: {sc.why_not}")
            self.results.append(r)
            return r
        try:
            out = sc.run(self)
        except Exception as exc:  # noqa: BLE001 - a scenario that blew up is a failed scenario, with why
            out = Outcome(skip_criterion=sc.ha)   # the HA cluster's criterion is the scenario's own
            out.check("the scenario ran to its end", False, f"{exc!r}\n{traceback.format_exc()[-1500:]}")
        if not out.final and not out.skip_criterion:
            site = self.restore_sites[self._turn % len(self.restore_sites)]
            self._turn += 1
            # Restore points alternate between the newest archived instant (what a restore after
            # this very fault would want) and one drawn across the whole history.
            out.checks += checks.criterion(self.world, self.ledger, self.sample_rng, sites=[site],
                                           samples=self.samples, newest=self._turn % 2 == 1,
                                           broken_ok=out.broken_ok)
        verdict = "passed" if out.checks and all(c.ok for c in out.checks) else "failed"
        r = Result(name, sc.title, verdict, started, time.monotonic() - t0, out.checks, out.timings, out.notes)
        for c in out.checks:
            self.say(f"  [{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail[:300]}")
        self.say(f"  -> {verdict.upper()} in {r.seconds:.1f}s; timings {r.timings}")
        self.results.append(r)
        return r


def _set_archive_command(world: World, command: str) -> None:
    world.sql("ALTER SYSTEM SET archive_command = '" + command.replace("'", "''") + "'", "postgres")
    world.sql("SELECT pg_reload_conf()", "postgres")


def _order(names: list[str]) -> list[str]:
    """host-lost ends the world: it always goes last."""
    return [n for n in names if n != "host-lost"] + (["host-lost"] if "host-lost" in names else [])


def run(names: list[str] | None, *, report_dir: Path, quick: bool = False, say=print,
        samples: int | None = None, soak_minutes: float | None = None, seed: int = 0) -> int:
    if soak_minutes is not None:
        say(f"seed {seed}")
    if names:
        unknown = [n for n in names if n not in SCENARIOS]
        if unknown:
            from ...errors import UsageError

            raise UsageError(f"unknown scenario(s): {', '.join(unknown)}", "known: " + ", ".join(SCENARIOS))
    chosen = _order(names or (QUICK if quick else list(SCENARIOS)))
    world = World(sandbox.workdir("pgvault-lab-"), say, base_sites=QUICK_BASE_SITES if quick else FULL_BASE_SITES)
    tidy(world)
    t0 = time.monotonic()
    lab = None
    interrupted = False
    setup_error = None
    try:
        world.build()
        ledger = Ledger(world.primary.conninfo("lab"), rate=LEDGER_RATE)
        lab = Lab(world, ledger, say, samples=samples or (1 if quick else 1), seed=seed)
        lab.prepare()
        if soak_minutes is None:
            for name in chosen:
                lab.play(name)
        else:
            schedule = soak_schedule(seed)
            say("schedule: " + " ".join(schedule[:40]) + " ...")
            end = time.monotonic() + soak_minutes * 60
            for name in schedule:
                if time.monotonic() >= end:
                    break
                lab.play(name)
            lab.play("host-lost")
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted: tearing the lab down")
    except Exception as exc:  # noqa: BLE001 - the world could not be built: a failed lab, with why
        setup_error = f"{exc!r}\n{traceback.format_exc()[-2000:]}"
        say(f"the lab could not be set up: {setup_error}")
    finally:
        if lab:
            lab.ledger.stop()
        world.teardown()
    results = lab.results if lab else []
    doc = report.document(results, seed=seed if soak_minutes is not None else None, soak_minutes=soak_minutes,
                          seconds=time.monotonic() - t0, interrupted=interrupted, commands=world.commands,
                          notes=(lab.prepare_notes if lab else []) + ([f"setup failed: {setup_error}"] if setup_error else []), ledger_errors=lab.ledger.errors if lab else [])
    paths = report.write(doc, report_dir)
    say("\n" + report.summary(doc))
    say("reports: " + ", ".join(str(p) for p in paths))
    if interrupted:
        return 130
    return 0 if doc["passed"] and not setup_error else 1


def soak_schedule(seed: int, length: int = 500) -> list[str]:
    """The soak's faults, drawn from the seed alone (the same seed replays the same order).
    >>> soak_schedule(7, 3) == soak_schedule(7, 3)
    True
    """
    rng = random.Random(seed)
    return [rng.choice(SOAKABLE) for _ in range(length)]
