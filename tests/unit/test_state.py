"""Job state and per-job locks: atomic JSON, flock semantics, stale-lock detection, id seconds."""
from __future__ import annotations

import os
import threading
from datetime import datetime, timedelta, timezone

import pytest

from pgvault.errors import PgvaultError
from pgvault.tick.state import JobLock, JobState, Run, StateStore

T = datetime(2026, 11, 16, 2, tzinfo=timezone.utc)


def test_state_round_trip_and_damaged_file(tmp_path):
    store = StateStore(tmp_path)
    st = JobState("nightly", T)
    st.record(Run(T, T + timedelta(minutes=1), "success", "20261116T020000Z", "ok"))
    store.save(st)
    back = store.load("nightly")
    assert back.last.backup_id == "20261116T020000Z" and back.anchor == T and back.last_success == back.last
    assert oct((tmp_path / "jobs" / "nightly.json").stat().st_mode & 0o777) == "0o600"
    (tmp_path / "jobs" / "nightly.json").write_text("{not json")
    assert store.load("nightly") is None                     # a damaged cache is rebuilt, not trusted


def test_failed_run_moves_the_anchor_but_not_last_success(tmp_path):
    st = JobState("j", T)
    st.record(Run(T, T, "success", "a"))
    st.record(Run(T + timedelta(days=1), T + timedelta(days=1), "failed", None, "boom"))
    assert st.anchor == T + timedelta(days=1) and st.last_success.backup_id == "a"


def test_lock_excludes_and_reports_holder(tmp_path):
    a, b = JobLock(tmp_path / "j.lock"), JobLock(tmp_path / "j.lock")
    assert a.acquire(T)
    assert not b.acquire(T)                                  # another open file description: excluded
    assert b.held()["pid"] == os.getpid()
    a.release()
    assert b.held() is None and b.acquire(T) and b.stale is None   # a clean release leaves no stale note
    b.release()


def test_waiting_acquire_gets_the_lock_when_its_holder_lets_go(tmp_path):
    """Expiry waits for another job's expiry instead of skipping its own sites."""
    path = tmp_path / ".expire.lock"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child holds the lock until the parent closes the pipe
        os.close(w)
        JobLock(path).acquire(T)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    waiter = JobLock(path)
    while JobLock(path).held() is None:  # the child has taken it
        os.sched_yield()
    assert not waiter.acquire(T, wait=0)                     # no wait: refused at once
    got = []
    t = threading.Thread(target=lambda: got.append(waiter.acquire(T, wait=120)))
    t.start()
    os.close(w)                                              # the holder exits, releasing it
    t.join()
    os.waitpid(pid, 0)
    assert got == [True] and waiter.held()["pid"] == os.getpid()
    waiter.release()


def test_lock_of_a_killed_holder_is_free_and_reported_stale(tmp_path):
    path = tmp_path / "j.lock"
    pid = os.fork()
    if pid == 0:  # the child takes the lock and dies without releasing it
        JobLock(path).acquire(T)
        os._exit(0)
    os.waitpid(pid, 0)
    lock = JobLock(path)
    assert lock.held() is None
    assert lock.acquire(T + timedelta(minutes=1))
    assert lock.stale["pid"] == pid and lock.stale["started_at"].startswith("2026-11-16T02:00")
    lock.release()


def test_reserved_seconds_are_distinct(tmp_path):
    store = StateStore(tmp_path)
    got = [store.reserve_second(T) for _ in range(3)]
    assert got == [T, T + timedelta(seconds=1), T + timedelta(seconds=2)]
    assert store.reserve_second(T + timedelta(hours=1)) == T + timedelta(hours=1)


def test_unusable_state_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(PgvaultError) as e:
        StateStore(blocker / "state").ensure()
    assert e.value.exit_code == 3 and "state_dir" in e.value.hint


def test_doctests_of_the_engine_modules():
    import doctest

    from pgvault import clock, statedir
    from pgvault.tick import state
    from pgvault.catalog import layout
    from pgvault.policy import load_light
    from pgvault.cli import schedule as schedule_cli

    for mod in (clock, state, statedir, layout, schedule_cli, load_light):
        assert doctest.testmod(mod).failed == 0, mod.__name__
