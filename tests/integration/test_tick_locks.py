"""Two real `pgvault tick` processes at once against a real cluster, and a tick killed with
SIGKILL while it holds a job's lock. A job is made slow by holding a table lock its pg_dump
needs (no sleeps: every wait polls a condition)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone

from pgvault.sandbox import wait_until
from pgvault.statedir import JobLock

from .test_tick import ROOT_ENV, iso, site_backups

UTC = timezone.utc


def start_tick(world, now: datetime) -> subprocess.Popen:
    env = dict(os.environ, **ROOT_ENV(world), PGVAULT_NOW=iso(now))
    return subprocess.Popen([sys.executable, "-m", "pgvault", "tick"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run_tick(world, now: datetime) -> subprocess.CompletedProcess:
    env = dict(os.environ, **ROOT_ENV(world), PGVAULT_NOW=iso(now))
    return subprocess.run([sys.executable, "-m", "pgvault", "tick"], env=env, capture_output=True, text=True,
                          timeout=300)


def test_concurrent_ticks_and_a_killed_tick(world):
    w = world
    w.pg.psql("CREATE DATABASE app")
    w.pg.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1)", dbname="app")
    w.local_site("a")
    w.local_site("b")
    w.jobs["slow"] = {"method": "logical", "databases": ["app"], "globals": False, "sites": ["a"],
                      "schedule": "* * * * *", "row_counts": False}
    w.jobs["quick"] = {"method": "logical", "databases": ["postgres"], "globals": False, "sites": ["b"],
                       "schedule": "* * * * *"}
    w.policy()
    state = w.workdir / "state"
    slow_lock = JobLock(state / "locks" / "slow.lock")
    t0 = datetime(2026, 11, 16, 2, 0, tzinfo=UTC)
    assert run_tick(w, t0).returncode == 0                          # first seen: nothing due yet

    # Make "slow" block: its pg_dump waits for this ACCESS EXCLUSIVE lock.
    holder = w.pg.connect(dbname="app", autocommit=False)
    holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")

    # Two ticks for the same minute at once: each job runs exactly once.
    t1 = t0 + timedelta(minutes=1)
    p1, p2 = start_tick(w, t1), start_tick(w, t1)
    wait_until(lambda: slow_lock.held(), 120, "slow's lock to be taken")
    # One tick finishes (its slow job was skipped), the other is stuck in slow.
    first = wait_until(lambda: next((p for p in (p1, p2) if p.poll() is not None), None), 120, "one tick to finish")
    out_first = first.stdout.read()
    assert first.returncode == 0, out_first + first.stderr.read()
    assert "slow: skipped: running since 2026-11-16T02:01:00+00:00 (pid " in out_first
    stuck = p2 if first is p1 else p1
    assert stuck.poll() is None

    # The next minute's tick is not held up by the slow job: it skips it and runs quick.
    # (The stuck tick may itself have taken this minute's quick: wait until that run let go of
    # quick's lock, or the next tick rightly skips quick as running.)
    quick_lock = JobLock(state / "locks" / "quick.lock")
    wait_until(lambda: quick_lock.held() is None, 120, "the first minute's quick run to finish")
    t2 = t0 + timedelta(minutes=2)
    cp = run_tick(w, t2)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "slow: skipped: running since" in cp.stdout and "quick: ran -> 20261116T020200Z" in cp.stdout
    assert stuck.poll() is None

    holder.rollback()                                               # let slow finish
    out_stuck, err_stuck = stuck.communicate(timeout=300)
    assert stuck.returncode == 0, out_stuck + err_stuck
    # Jobs started in the same tick get distinct seconds for their ids (host-wide reservation).
    assert "slow: ran -> 20261116T0201" in out_stuck
    assert [b[:13] for b in site_backups(w, "a")] == ["20261116T0201"]
    assert [b[:13] for b in site_backups(w, "b")] == ["20261116T0201", "20261116T0202"]

    # A tick killed (SIGKILL) while it holds slow's lock: the next tick clears it and reruns the slot.
    holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
    t3 = t0 + timedelta(minutes=3)
    p3 = start_tick(w, t3)
    info = wait_until(lambda: slow_lock.held(), 120, "slow's lock to be taken again")
    child = info["pid"]
    assert child != p3.pid  # the job runs in the tick's child process
    os.kill(p3.pid, signal.SIGKILL)
    os.kill(child, signal.SIGKILL)
    p3.wait(60)
    wait_until(lambda: slow_lock.held() is None, 60, "the kernel to release the dead tick's lock")
    holder.rollback()
    holder.close()
    # issue 12 item 6: `state show` called the dead run RUNNING and never showed it interrupted
    shown = next(x for x in w.cli("state", "show", env=ROOT_ENV(w)).stdout.splitlines() if x.startswith("slow "))
    assert "INTERRUPTED" in shown and f"(pid {child}) died" in shown and "RUNNING" not in shown, shown

    t4 = t0 + timedelta(minutes=4)
    cp = run_tick(w, t4)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    line = next(x for x in cp.stdout.splitlines() if x.startswith("slow: "))
    assert line.startswith("slow: ran -> 20261116T0204") and f"previous run (pid {child}) was interrupted" in line
    new_id = line.split(" -> ")[1][:16]
    assert new_id in site_backups(w, "a")
    doc = json.loads((state / "jobs" / "slow.json").read_text())
    assert doc["interrupted"]["outcome"] == "interrupted" and str(child) in doc["interrupted"]["message"]
    assert doc["running"] is None and doc["last"]["backup_id"] == new_id
    shown = next(x for x in w.cli("state", "show", env=ROOT_ENV(w)).stdout.splitlines() if x.startswith("slow "))
    assert "last interrupted run: started" in shown, shown
    # The killed run's half-written backup is debris, never a listed backup.
    assert "20261116T020300Z" not in site_backups(w, "a")

    # A job that outlives its timeout is aborted (its pg_dump killed) and recorded failed.
    w.jobs["slow"]["timeout"] = "2s"
    w.policy()
    holder = w.pg.connect(dbname="app", autocommit=False)
    holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
    before = set(site_backups(w, "a"))
    cp = run_tick(w, t0 + timedelta(minutes=5))
    holder.rollback()
    holder.close()
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert "slow: failed" in cp.stdout and "timed out after 2s" in cp.stdout and "quick: ran" in cp.stdout
    assert set(site_backups(w, "a")) == before
    assert slow_lock.held() is None
