"""One tick: due jobs -> run -> record -> expire. See docs/scheduling.md.

- Each scheduled item (a backup job or a scheduled drill, see items.py) is decided and run under
  its own non-blocking per-job lock. A held lock means another tick is running that job: this
  tick skips it and goes on, so a slow job delays unrelated jobs by at most one tick.
- Due-ness is re-checked after the lock is taken (the state is reread), so two ticks never run
  the same slot twice.
- A failure is recorded with its message and does not stop the other due jobs.
- After at least one successful backup, expiry runs for the sites those jobs wrote to.

The clock is injectable (``Clock``; ``PGVAULT_NOW`` in the environment) so tests can run
ticks across a simulated week. Imports stay lean until something is actually due.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ..clock import Clock, parse_now  # noqa: F401  (re-exported)
from ..policy.schedule import Due, due
from .items import Outcome, Scheduled
from .. import fsutil
from .state import JobState, Run, StateStore, state_dir

log = logging.getLogger("pgvault.tick.engine")

def backup_items(policy) -> list[Scheduled]:
    """One item per job of the policy. Every job is a backup job, whatever its method: there is
    no list of methods here to forget one in (the policy loader has already refused a method
    the registry does not know, and run_backup would refuse it loudly)."""
    return [Scheduled(name, job.schedule, job.schedule_tz, _backup_runner(policy, name), list(job.sites), "backup",
                      job.timeout.total_seconds() if job.timeout else None)
            for name, job in policy.jobs.items()]


def _backup_runner(policy, name):
    def run(now: datetime) -> Outcome:
        from ..backup import run_backup

        r = run_backup(policy, name, now=now)
        if r.partial:
            return Outcome("partial", r.backup_id, "; ".join(f"site {s}: {m}" for s, m in r.failed_sites.items()),
                           r.sites)
        return Outcome("success", r.backup_id, f"{r.manifest.method} backup at {', '.join(r.sites)}", r.sites)
    return run


def scheduled(policy) -> list[Scheduled]:
    """Every item the tick schedules: the policy's backup jobs, then its scheduled drills."""
    from .drills import scheduled as drill_items  # imported on use: an idle tick never needs it

    return backup_items(policy) + drill_items(policy)


@dataclass
class Line:
    """What tick did (or would do) about one item."""

    name: str
    action: str          # idle | run | ran | failed | partial | skipped | started
    reason: str
    backup_id: str | None = None
    expiry: list[str] = field(default_factory=list)
    expiry_failed: bool = False


@dataclass
class TickReport:
    now: datetime
    lines: list[Line] = field(default_factory=list)
    expiry: list[str] = field(default_factory=list)
    expiry_failed: bool = False

    @property
    def failed(self) -> bool:
        return self.expiry_failed or any(x.action in ("failed", "partial") or x.expiry_failed for x in self.lines)


# -- state bootstrap

def rebuild_states(policy, store: StateStore, names: list[str], now: datetime, *, save: bool = True) -> dict[str, JobState]:
    """Job states from the sites' manifests (the source of truth): the newest backup of each job
    becomes its last success. Jobs with nothing at any reachable site start from ``now``."""
    from ..catalog import layout

    newest: dict[str, str] = {}
    if names:
        from ..catalog.catalog import open_catalogs
        from ..errors import PgvaultError

        wanted = set(names)
        for sname, cat in open_catalogs(policy, list(policy.sites)).items():
            try:
                for m in cat.manifests():
                    if m.job in wanted and m.backup_id > newest.get(m.job, ""):
                        newest[m.job] = m.backup_id
            except PgvaultError as exc:
                log.warning("site %s: cannot read manifests to rebuild job state: %s", sname, exc.message)
    out = {}
    for n in names:
        st = JobState(n, now, source="sites")
        if n in newest:
            t = layout.backup_time(newest[n])
            st.last = st.last_success = Run(t, None, "success", newest[n], "rebuilt from the sites' manifests")
        out[n] = st
        if save:
            store.save(st)
    return out


def open_store(policy) -> StateStore:
    return StateStore(state_dir(policy.state_dir, policy.cluster.name))


# -- the tick

def _holder_text(holder: dict | None) -> str:
    if not holder or "pid" not in holder:
        return "running in another tick"
    return f"running since {holder.get('started_at', '?')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')})"


def plan(policy, store: StateStore, now: datetime, *, save: bool = True) -> list[tuple[Scheduled, Due, JobState]]:
    """Every scheduled item with its due-ness at ``now`` (states missing locally are rebuilt
    from the sites first)."""
    items = scheduled(policy)
    states = {i.name: store.load(i.name) for i in items}
    missing = [n for n, s in states.items() if s is None]
    if missing:
        states.update(rebuild_states(policy, store, missing, now, save=save))
    return [(i, due(i.schedule, i.tz, states[i.name].anchor, now), states[i.name]) for i in items]


def tick(policy, clock: Clock, *, dry_run: bool = False, wait: bool = True, store: StateStore | None = None,
         log_dir: Path | None = None) -> TickReport:
    """Decide what is due and run each due item in its own child process (forked), all at once.

    Children take the job lock themselves; a job whose lock is held is reported as skipped.
    With ``wait`` the tick waits for its children and reports their outcomes; without it the
    children are detached (systemd, see docs/scheduling.md) and record their outcomes in the
    job state only."""
    store = store or open_store(policy)
    if not dry_run:
        store.ensure()
    now = clock.now()
    report = TickReport(now)
    children = []
    gate = None
    if policy.cluster.patroni is not None:
        from .ha import Gate

        gate = Gate(policy, store, rebuild_states)
    for item, d, st in plan(policy, store, now, save=not dry_run):
        st_never = st.last is None
        if not d.due:
            report.lines.append(Line(item.name, "idle", d.reason(st_never)))
            continue
        if gate is not None:
            d, st, elsewhere = gate.decide(item, d, st, now, save=not dry_run)
            if elsewhere is not None:
                report.lines.append(Line(item.name, *elsewhere))
                continue
        holder = store.lock(item.name).held()
        if holder is not None:  # a hint only; the child's flock is what counts
            report.lines.append(Line(item.name, "skipped", _holder_text(holder) + "; " + d.reason(st_never)))
            continue
        if dry_run:
            report.lines.append(Line(item.name, "run", d.reason(st_never)))
            continue
        children.append((item, _fork(policy, item.name, clock, store, wait, log_dir)))
    for item, (pid, rfd) in children:
        if not wait:
            report.lines.append(Line(item.name, "started", f"pid {pid} (detached)"))
            continue
        report.lines.append(_reap(item.name, pid, rfd))
        report.expiry.extend(x for x in report.lines[-1].expiry)
    if not dry_run:
        _save_note(policy, store, [i for i, _, _ in plan(policy, store, now)], report, clock)
    return report


def _fork(policy, name: str, clock: Clock, store: StateStore, wait: bool, log_dir: Path | None):
    import json
    import sys

    rfd, wfd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(wfd)
        return pid, rfd
    # The child: run one job and report back through the pipe; never return into the parent's code.
    code = 70
    try:
        os.close(rfd)
        if not wait:
            os.setsid()
            d = log_dir or (store.root / "logs")
            fsutil.mkdirs(d)
            fd = os.open(d / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
        line = run_one(policy, name, clock, store)
        os.write(wfd, json.dumps(line.__dict__).encode())
        code = 1 if line.action in ("failed", "partial") or line.expiry_failed else 0
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _reap(name: str, pid: int, rfd: int) -> "Line":
    import json

    chunks = []
    while True:
        b = os.read(rfd, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(rfd)
    _, status = os.waitpid(pid, 0)
    if chunks:
        try:
            return Line(**json.loads(b"".join(chunks)))
        except (ValueError, TypeError):
            pass
    return Line(name, "failed", f"the child running it (pid {pid}) ended without a report "
                                f"(exit status {os.waitstatus_to_exitcode(status)}); see the log above")


def run_one(policy, name: str, clock: Clock, store: StateStore) -> "Line":
    """Run one scheduled item if it is still due, under its lock; then expire its sites."""
    items = {i.name: i for i in scheduled(policy)}
    item = items[name]
    now = clock.now()
    lock = store.lock(name)
    if not lock.acquire(now):
        return Line(name, "skipped", _holder_text(lock.holder()))
    try:
        line = _run_locked(item, store, lock, clock, now)
    finally:
        lock.release()
    if line.action in ("failed", "partial"):
        from ..notify import notify

        notify(policy, {"event": "job_failed", "job": name, "outcome": line.action, "message": line.reason,
                        "started_at": now.isoformat()})
    if line.action in ("ran", "partial") and item.kind == "backup" and item.sites:
        r = TickReport(now)
        _expire_after(policy, store, clock, list(item.sites), r)
        line.expiry, line.expiry_failed = r.expiry, r.expiry_failed
    return line


def _run_locked(item: Scheduled, store: StateStore, lock, clock: Clock, now: datetime) -> Line:
    from ..errors import PgvaultError

    st = store.load(item.name) or JobState(item.name, now)
    d: Due = due(item.schedule, item.tz, st.anchor, now)
    if not d.due:  # another tick ran it between our look and our lock
        return Line(item.name, "idle", "just run by another tick; " + d.reason(st.last is None))
    prefix = ""
    never_ran = st.last is None
    if st.running or lock.stale:
        dead = st.running or lock.stale or {}
        st.interrupted = Run(datetime.fromisoformat(dead["started_at"]) if dead.get("started_at") else now,
                             None, "interrupted", None,
                             f"the tick running it (pid {dead.get('pid', '?')}) died; its slot runs again")
        prefix = f"previous run (pid {dead.get('pid', '?')}) was interrupted; "
        log.warning("job %s: %s", item.name, st.interrupted.message)
    start = clock.now()
    st.running = {"pid": os.getpid(), "started_at": start.isoformat(), "host": os.uname().nodename}
    store.save(st)
    try:
        with _time_limit(item.timeout):
            o = item.run(store.reserve_second(start))
    except PgvaultError as exc:
        o = Outcome("failed", None, exc.message + (f" (HINT: {exc.hint})" if exc.hint else ""))
    except Exception as exc:  # one broken job must not stop the others; the log has the traceback
        log.exception("job %s failed unexpectedly", item.name)
        o = Outcome("failed", None, f"unexpected error (a bug in pgvault): {exc!r}")
    st.record(Run(start, clock.now(), o.outcome, o.backup_id, o.message))
    store.save(st)
    action = {"success": "ran", "partial": "partial", "failed": "failed"}[o.outcome]
    return Line(item.name, action, prefix + d.reason(never_ran) + (f": {o.message}" if o.message else ""), o.backup_id)


class JobTimeout(Exception):
    pass


class _time_limit:
    """Raise JobTimeout in this (child) process after ``seconds``. The exception unwinds through
    the method, which kills its tool (proc.Stream) and aborts the backup session (no debris)."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds

    def _fire(self, signum, frame):
        raise JobTimeout()

    def __enter__(self):
        import signal

        if self.seconds:
            self.old = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, exc_type, exc, tb):
        import signal

        if self.seconds:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old)
        if exc_type is JobTimeout:
            from ..errors import PgvaultError

            raise PgvaultError(f"timed out after {self.seconds:g}s (the job's timeout) and was aborted",
                               "raise jobs.<job>.timeout, or find what the job waits for") from None
        return False


EXPIRE_WAIT = 900.0  # seconds a job waits for another's expiry to finish


def _expire_after(policy, store, clock, sites, report) -> None:
    from ..errors import PgvaultError
    from ..expire import expire_sites

    lock = store.lock(".expire")
    # Wait for another job's expiry rather than skip: it may be expiring other sites than ours,
    # and a skipped site would keep what its retention drops until its next backup.
    if not lock.acquire(clock.now(), wait=EXPIRE_WAIT):
        report.expiry.append(f"skipped: another process has been expiring for over {EXPIRE_WAIT:.0f}s "
                             "(the next successful backup expires again)")
        report.expiry_failed = True
        return
    try:
        results = expire_sites(policy, sites, now=clock.now(), busy=busy_jobs(store))
        for r in results:
            report.expiry.append(r.summary())
            report.expiry_failed |= bool(r.errors)
    except PgvaultError as exc:
        report.expiry.append(f"expiry failed: {exc.message}")
        report.expiry_failed = True
    finally:
        lock.release()


def busy_jobs(store: StateStore) -> bool:
    """Is any job's lock held right now (a backup may be writing what looks like debris)?"""
    d = store.root / "locks"
    if not d.is_dir():
        return False
    for p in d.glob("*.lock"):
        if p.name == ".expire.lock":
            continue
        if store.lock(p.stem).held() is not None:
            return True
    return False


# -- the note that lets an idle tick stop early (pgvault.tick.note)

def _save_note(policy, store, items, report, clock) -> None:
    src = getattr(policy, "_source", None)
    if src is None:
        return
    now = report.now
    nexts = []
    for item in items:
        busy = any(x.name == item.name and x.action == "skipped" for x in report.lines)
        st = store.load(item.name)
        if busy or st is None:
            nexts.append(now)  # re-evaluate next minute
            continue
        d = due(item.schedule, item.tz, st.anchor, now)
        if d.due:
            nexts.append(now)
        elif d.next is not None:
            nexts.append(d.next)
    try:
        from .note import policy_digest

        store.save_tick_note({"digest": policy_digest(Path(src).read_bytes()), "written_at": now.isoformat(),
                              "next_due": min(nexts).isoformat() if nexts else None, "jobs": len(items)})
    except OSError as exc:
        log.debug("cannot write the tick note: %s", exc)
