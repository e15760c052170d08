"""pgvault tick on a real cluster: a simulated week with catch-up and retention, dry-run, and
failures that do not stop other jobs. The clock is injected with PGVAULT_NOW."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from pgvault.catalog import layout

from ..conftest import ROOT

UTC = timezone.utc


def ROOT_ENV(world) -> dict:
    """Environment for running pgvault against a world's policy with a private state dir."""
    return {"PGVAULT_POLICY": str(world.workdir / "policy.yaml"), "PYTHONPATH": str(ROOT),
            "PGVAULT_STATE_DIR": str(world.workdir / "state")}


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class Ticker:
    def __init__(self, world):
        self.w = world
        self.env = {"PGVAULT_STATE_DIR": str(world.workdir / "state")}

    def tick(self, now: datetime, *args, check=True):
        cp = self.w.cli("tick", *args, env=dict(self.env, PGVAULT_NOW=iso(now)), check=False)
        if check and cp.returncode != 0:
            raise AssertionError(f"tick at {now} exited {cp.returncode}\n{cp.stdout}\n{cp.stderr}")
        return cp

    def cli(self, now: datetime, *args, check=True):
        return self.w.cli(*args, env=dict(self.env, PGVAULT_NOW=iso(now)), check=check)


def site_backups(world, site) -> dict[str, str]:
    """backup id -> job, read straight from the site's directory."""
    root = world.workdir / f"site-{site}" / "clusters/main/backups"
    out = {}
    for m in sorted(root.glob("*/manifest.json")) if root.exists() else []:
        out[m.parent.name] = json.loads(m.read_text())["job"]
    return out


@pytest.fixture
def week(world):
    world.local_site("a")
    world.local_site("b")
    # Small, quick dumps: the postgres database only.
    small = {"method": "logical", "databases": ["postgres"], "globals": False}
    world.jobs["nightly"] = dict(small, sites=["a", "b"], schedule="0 2 * * *",
                                 retain={"daily": 3}, retain_at={"b": {"count": 1}})
    world.jobs["twice"] = dict(small, sites=["a"], schedule="0 5,17 * * *", retain={"count": 2})
    world.jobs["manual"] = dict(small, sites=["a"])
    world.policy()
    return Ticker(world)


def test_simulated_week_catch_up_and_retention(week):
    start = datetime(2026, 11, 16, tzinfo=UTC)                      # a Monday
    down = (datetime(2026, 11, 18, tzinfo=UTC), datetime(2026, 11, 19, 12, tzinfo=UTC))
    runs: list[tuple[str, datetime]] = []
    outputs = {}
    t = start
    while t < start + timedelta(days=7):
        if not (down[0] <= t < down[1]):                             # the host is down 36 hours
            cp = week.tick(t)
            outputs[t] = cp.stdout
            for line in cp.stdout.splitlines():
                if ": ran -> " in line:
                    runs.append((line.split(":")[0], t))
        t += timedelta(hours=6)

    nightly = [r for j, r in runs if j == "nightly"]
    twice = [r for j, r in runs if j == "twice"]
    d = lambda day, h: datetime(2026, 11, day, h, tzinfo=UTC)  # noqa: E731
    # Each job runs at the first tick after its slot; the 36-hour outage is caught up ONCE.
    assert nightly == [d(16, 6), d(17, 6), d(19, 12), d(20, 6), d(21, 6), d(22, 6)]
    assert twice == [d(16, 6), d(16, 18), d(17, 6), d(17, 18), d(19, 12), d(19, 18), d(20, 6), d(20, 18),
                     d(21, 6), d(21, 18), d(22, 6), d(22, 18)]
    assert not any(j == "manual" for j, _ in runs), "a job without a schedule never runs from tick"
    catch_up = outputs[d(19, 12)]
    assert "nightly: ran" in catch_up and "(2 slots missed, runs once)" in catch_up
    assert "twice: ran" in catch_up and "(3 slots missed, runs once)" in catch_up

    # Exactly what retention promises remains at each site.
    def ids(job, times, n):
        return {(job, x.strftime("%Y%m%dT%H%M")) for x in times[-n:]}

    def held(site):
        # Ids are the tick's time; two jobs started in the same tick may differ by a second.
        return {(job, bid[:13]) for bid, job in site_backups(week.w, site).items()}

    assert held("a") == ids("nightly", nightly, 3) | ids("twice", twice, 2)
    assert held("b") == ids("nightly", nightly, 1)

    # expire --dry-run explains every decision, and the state agrees with the sites.
    end = start + timedelta(days=7)
    doc = json.loads(week.cli(end, "expire", "--dry-run", "--json").stdout)
    a = next(s for s in doc if s["site"] == "a")
    reasons = {(b["job"], b["backup_id"][:13]): b["reasons"] for b in a["backups"]}
    assert reasons[("nightly", "20261122T0600")] == ["daily 2026-11-22"]
    assert reasons[("twice", "20261122T1800")] == ["count 2"]
    assert all(b["action"] == "KEEP" for s in doc for b in s["backups"])
    state = json.loads(week.cli(end, "state", "show", "--json").stdout)
    last = {s["job"]: s["last"]["backup_id"] for s in state if s.get("last")}
    assert last["nightly"] in site_backups(week.w, "b")


def test_dry_run_failure_and_state_rebuild(week):
    w = week.w
    t0 = datetime(2026, 11, 16, tzinfo=UTC)
    week.tick(t0)                                                  # first seen
    # An idle tick stops at the note the full tick left (no policy validation, no croniter) ...
    cp = week.cli(t0 + timedelta(minutes=1), "-v", "tick")
    assert "nothing due before 2026-11-16 02:00Z" in cp.stderr and cp.stdout == ""
    # ... until the policy changes: then the full path validates it again.
    w.jobs["broken"] = {"method": "logical", "databases": ["no_such_db"], "sites": ["a"], "schedule": "0 2 * * *"}
    events = w.workdir / "events.jsonl"
    w.extra["notify"] = {"events": ["job_failed"], "command": [
        sys.executable, "-c", f"import sys; open({str(events)!r}, 'a').write(sys.stdin.read() + '\\n')"]}
    w.policy()
    cp = week.cli(t0 + timedelta(minutes=2), "-v", "tick")
    assert "nothing due" not in cp.stderr and "broken: idle: not due: next 2026-11-16 02:00Z" in cp.stdout

    # --dry-run says what would run and why, and runs nothing.
    cp = week.tick(t0 + timedelta(days=2, hours=6), "--dry-run")
    assert ("nightly: would run: due since 2026-11-16 02:00Z (3 slots missed, runs once), "
            "first seen 2026-11-16 00:00Z, never run") in cp.stdout
    assert "twice: would run: due since 2026-11-16 05:00Z" in cp.stdout
    assert "manual: idle: manual only (no schedule)" in cp.stdout
    assert site_backups(w, "a") == {}

    # A failure is recorded with its message, the other due jobs still run, the exit code says so.
    cp = week.tick(t0 + timedelta(hours=3), check=False)
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert "broken: failed" in cp.stdout and "no_such_db" in cp.stdout
    # Jobs of one tick run at once, each given its own second for its backup id.
    assert "nightly: ran -> 20261116T0300" in cp.stdout
    state = {s["job"]: s for s in json.loads(week.cli(t0, "state", "show", "--json").stdout)}
    assert state["broken"]["last"]["outcome"] == "failed" and "no_such_db" in state["broken"]["last"]["message"]
    # The failure was notified once, through the configured command; the jobs that ran were not.
    sent = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
    assert [(e["event"], e["job"]) for e in sent] == [("job_failed", "broken")]
    assert "no_such_db" in sent[0]["message"]
    # A failed run is retried at its next slot, not every minute.
    assert "broken" not in week.tick(t0 + timedelta(hours=4)).stdout

    # With the local state gone, the sites say nightly ran at 03:00: not due again today.
    import shutil

    shutil.rmtree(w.workdir / "state")
    cp = week.tick(t0 + timedelta(hours=4), "--dry-run")
    assert "nightly: idle: not due: next 2026-11-17 02:00Z, last run 2026-11-16 03:00Z" in cp.stdout
    assert "nightly: last backup 20261116T0300" in week.cli(t0, "state", "rebuild").stdout


def test_pins_and_schedule_install(week, tmp_path):
    t0 = datetime(2026, 11, 16, tzinfo=UTC)
    first = week.cli(t0, "backup", "nightly").stdout.strip().splitlines()[-1]
    second = week.cli(t0, "backup", "nightly").stdout.strip().splitlines()[-1]
    assert first != second
    assert "pinned" in week.cli(t0, "pin", first, "--site", "b", "--note", "audit").stdout
    pin = week.w.workdir / "site-b" / layout.pin_key("main", first)
    assert json.loads(pin.read_text())["note"] == "audit"
    out = week.cli(t0, "expire").stdout
    assert first in site_backups(week.w, "b") and second in site_backups(week.w, "b")
    assert "pinned" in out
    week.cli(t0, "unpin", first)
    week.cli(t0, "expire")
    assert list(site_backups(week.w, "b")) == [second]
    # Pinning something that is not there is a clear usage error.
    cp = week.cli(t0, "pin", "20000101T000000Z", check=False)
    assert cp.returncode == 2 and "HINT:" in cp.stderr and "Traceback" not in cp.stderr

    # tick --no-wait (the systemd unit's mode) starts due jobs detached and returns at once;
    # the outcome lands in the job state and the job's log.
    from pgvault.sandbox import wait_until

    # ("twice": nightly's state comes from the sites, where the backups above are from today)
    t1 = t0 + timedelta(hours=6)
    week.tick(t0 + timedelta(hours=1))                             # first seen at 01:00
    cp = week.tick(t1, "--no-wait")
    assert "twice: started: pid " in cp.stdout and "(detached)" in cp.stdout
    job_state = week.w.workdir / "state" / "jobs" / "twice.json"
    done = wait_until(lambda: (json.loads(job_state.read_text()).get("last") or {}).get("outcome"), 120,
                      "the detached run to finish")
    assert done == "success"
    assert (week.w.workdir / "state" / "logs" / "twice.log").exists()

    # schedule install / show
    out = week.cli(t0, "schedule", "install", "--systemd", "--dir", str(tmp_path)).stdout
    timer = (tmp_path / "pgvault-main.timer").read_text()
    service = (tmp_path / "pgvault-main.service").read_text()
    assert "OnCalendar=minutely" in timer and "Persistent=true" in timer
    assert "tick --no-wait" in service and "KillMode=process" in service and str(week.w.workdir / "policy.yaml") in service
    assert "systemctl enable --now pgvault-main.timer" in out
    line = week.cli(t0, "schedule", "install", "--cron").stdout.strip()
    assert line.startswith("* * * * * root ") and line.endswith("tick >>/var/log/pgvault-tick.log 2>&1")
    week.cli(t0, "schedule", "install", "--cron", "--install", "--cron-dir", str(tmp_path))
    assert line in (tmp_path / "pgvault-main").read_text()
    show = week.cli(t0, "schedule", "show").stdout
    assert "nightly" in show and "UTC" in show and "manual" in show
    cp = week.cli(t0, "schedule", "install", check=False)
    assert cp.returncode == 2 and "HINT: pass --systemd or --cron" in cp.stderr


def test_simulated_days_with_a_barman_job_keep_what_retention_promises(s3world):
    """tick over three simulated days with a nightly logical job and a nightly Barman job (a
    real Barman server at the local site, WAL through wal-push): each job runs once a day, and
    retention leaves exactly the newest two bases (pgvault's manifests and the bases in Barman's
    layout) and the WAL from the oldest kept base on."""
    from pgvault import sandbox

    w = s3world
    policy = w.workdir / "policy.yaml"
    w.pg.stop()
    w.pg.configure(archive_mode="on", archive_command=sandbox.pgvault_command(policy) + " wal-push %p")
    w.local_site("a")
    w.jobs["dump"] = {"method": "logical", "databases": ["postgres"], "globals": False, "sites": ["a"],
                      "schedule": "0 1 * * *", "retain": {"count": 2}}
    w.jobs["base"] = {"method": "barman", "sites": ["a"], "schedule": "0 3 * * *", "retain": {"count": 2}}
    w.policy(wal={"sites": ["a"]}, state_dir=str(sandbox.owned_dir(w.workdir / "state")))
    w.pg.start()
    ticker = Ticker(w)
    start = datetime(2026, 11, 16, tzinfo=UTC)
    ticker.tick(start)                                                  # first seen
    ran = []
    for day in range(3):
        w.pg.psql(f"CREATE TABLE day{day} AS SELECT g FROM generate_series(1, 1000) g; SELECT pg_switch_wal()")
        cp = ticker.tick(start + timedelta(days=day, hours=4))
        ran += [line.split(":")[0] for line in cp.stdout.splitlines() if ": ran -> " in line]
    assert sorted(ran) == ["base"] * 3 + ["dump"] * 3
    held = site_backups(w, "a")
    assert sorted(held.values()) == ["base", "base", "dump", "dump"]
    bases = sorted(b for b, j in held.items() if j == "base")
    # Barman's layout at the site agrees: exactly the two kept bases remain in base/.
    listing = os.listdir(w.workdir / "site-a/clusters/main/base")
    kept_barman = {json.loads((w.workdir / "site-a/clusters/main/backups" / b / "manifest.json").read_text())
                   ["facts"]["barman"]["a"]["backup_id"] for b in bases}
    assert set(listing) == kept_barman
    oldest = json.loads((w.workdir / "site-a/clusters/main/backups" / bases[0] / "manifest.json").read_text())
    wals = sorted(p.name[:24] for p in (w.workdir / "site-a/clusters/main/wals").rglob("0*") if p.is_file())
    assert wals[0] >= oldest["start_wal"][:24]
