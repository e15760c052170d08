"""Local job state, under the state directory (pgvault.statedir says where; it holds the locks).

The state is a cache: the sites are the source of truth, and ``rebuild`` recreates the
last-success facts from the manifests at the sites. Files:

    <state>/jobs/<job>.json     last run (start, end, outcome, backup id, message), running marker
    <state>/locks/<job>.lock    flock()ed while a job runs; holds the holder's pid and start time
    <state>/tick.json           what the last full tick computed (lets an idle tick stop early)

Writes are atomic (temp file, fsync, rename, fsync dir) so a crash never leaves half a file.
This module imports nothing heavy: the idle fast path of ``pgvault tick`` uses it.
"""
from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .. import fsutil
from ..statedir import DEFAULT_BASE, ENV, JobLock, state_dir  # noqa: F401  (re-exported for the tick)


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(timezone.utc).isoformat()


def _dt(s: str | None) -> datetime | None:
    return None if s is None else datetime.fromisoformat(s)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    fsutil.write_atomic(path, data, mode=mode, mkdir=True)  # parents take the state dir's owner


@dataclass
class Run:
    """One finished (or interrupted) run of a job."""

    started_at: datetime
    finished_at: datetime | None = None
    outcome: str = "success"          # success | partial | failed | interrupted
    backup_id: str | None = None
    message: str = ""

    def to_doc(self) -> dict:
        d = asdict(self)
        d["started_at"], d["finished_at"] = _iso(self.started_at), _iso(self.finished_at)
        return d

    @classmethod
    def from_doc(cls, d: dict | None) -> "Run | None":
        if not d:
            return None
        return cls(_dt(d["started_at"]), _dt(d.get("finished_at")), d.get("outcome", "success"),
                   d.get("backup_id"), d.get("message", ""))


@dataclass
class JobState:
    job: str
    first_seen: datetime
    last: Run | None = None              # the last finished run: its start is the schedule anchor
    last_success: Run | None = None
    interrupted: Run | None = None       # a run whose process died (kill -9, power loss)
    running: dict | None = None          # {"pid", "started_at", "host"} while a run is in progress
    source: str = "local"                # local | sites (rebuilt from the sites' manifests)
    history: list[dict] = field(default_factory=list)

    @property
    def anchor(self) -> datetime:
        """Due-ness is measured from here: the last finished run's start, else first seen.
        An interrupted run does not count, so its slot runs again."""
        return self.last.started_at if self.last else self.first_seen

    def to_doc(self) -> dict:
        return {"version": 1, "job": self.job, "first_seen": _iso(self.first_seen),
                "last": self.last and self.last.to_doc(), "last_success": self.last_success and self.last_success.to_doc(),
                "interrupted": self.interrupted and self.interrupted.to_doc(), "running": self.running,
                "source": self.source, "history": self.history[-20:]}

    @classmethod
    def from_doc(cls, d: dict) -> "JobState":
        return cls(d["job"], _dt(d["first_seen"]), Run.from_doc(d.get("last")), Run.from_doc(d.get("last_success")),
                   Run.from_doc(d.get("interrupted")), d.get("running"), d.get("source", "local"), d.get("history", []))

    def record(self, run: Run) -> None:
        self.last = run
        self.running = None
        if run.outcome in ("success", "partial"):
            self.last_success = run
        self.history.append(run.to_doc())


class StateStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self._ready = False

    def ensure(self) -> None:
        """Create the state directory (owned by the PostgreSQL user, whoever runs first), or
        raise StateDirUnusable (exit 3) naming the path, the owner and the fix."""
        from ..statedir import ensure_dir

        if self._ready:
            return
        ensure_dir(self.root)
        for sub in ("jobs", "locks"):
            ensure_dir(fsutil.mkdirs(self.root / sub))
        self._ready = True

    def _job_path(self, job: str) -> Path:
        return self.root / "jobs" / f"{job}.json"

    def load(self, job: str) -> JobState | None:
        try:
            return JobState.from_doc(json.loads(self._job_path(job).read_bytes()))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            # A damaged cache is rebuilt, never trusted.
            return None

    def save(self, st: JobState) -> None:
        self.ensure()
        write_atomic(self._job_path(st.job), (json.dumps(st.to_doc(), indent=2) + "\n").encode())

    def jobs(self) -> list[str]:
        d = self.root / "jobs"
        return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []

    def reserve_second(self, now: datetime) -> datetime:
        """A whole second at or after ``now`` that no other job on this host was given.

        Backup ids are UTC seconds and run_backup only checks the ids already at the sites, so
        two jobs started in the same second and sharing a site could pick the same id. Ticks run
        jobs in parallel, so the engine hands each run a distinct second, under a host-wide lock."""
        from datetime import timedelta

        self.ensure()
        path = self.root / "locks" / ".ids"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fsutil.give_dir_owner(fd, path.parent)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            t = now.astimezone(timezone.utc).replace(microsecond=0)
            last = os.pread(fd, 64, 0).decode().strip()
            if last:
                prev = datetime.fromisoformat(last)
                # Only seconds reserved recently matter (a simulated clock may also go backwards).
                if t <= prev < t + timedelta(minutes=10):
                    t = prev + timedelta(seconds=1)
            os.ftruncate(fd, 0)
            os.pwrite(fd, t.isoformat().encode(), 0)
            return t
        finally:
            os.close(fd)

    def lock(self, job: str) -> "JobLock":
        """The job's lock (acquiring it needs ``ensure`` first; ``held`` does not)."""
        return JobLock(self.root / "locks" / f"{job}.lock")

    # -- the idle fast path's note (see pgvault.tick.note)
    def tick_note(self) -> dict | None:
        try:
            return json.loads((self.root / "tick.json").read_bytes())
        except (FileNotFoundError, ValueError):
            return None

    def save_tick_note(self, doc: dict) -> None:
        self.ensure()
        write_atomic(self.root / "tick.json", json.dumps(doc).encode())

    def drop_tick_note(self) -> None:
        try:
            (self.root / "tick.json").unlink()
        except FileNotFoundError:
            pass
