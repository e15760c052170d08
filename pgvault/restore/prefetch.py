"""WAL prefetch for a restore that pgvault itself drives (--start).

PostgreSQL runs restore_command once per segment, one at a time; each `pgvault wal-fetch`
pays a Python start and a site round trip, which dominates replay of many segments. The
plan already names every segment recovery will read, so while the instance recovers, worker
threads fetch the next ones with the same verifying code as wal-fetch (pgvault.wal.fetch) into
a staging directory; restore_command takes a staged file when it is there and falls back to
`pgvault wal-fetch` otherwise. A file appears in the staging directory only complete and
verified (fetched into a private temp dir, then renamed), and at most ``ahead`` files wait
there, so a target early in a long archive does not download the whole archive."""
from __future__ import annotations

import logging
import os
import shlex
import shutil
import threading
import time
from pathlib import Path

from .. import pg

log = logging.getLogger("pgvault.restore.prefetch")

STAGING = "pgvault_prefetch"


def restore_command(staging: Path, fallback: str) -> str:
    """A restore_command that takes a staged file first (PostgreSQL runs it with /bin/sh).

    >>> restore_command(Path("/r/pgvault_prefetch"), "pgvault wal-fetch %f %p")
    'f=/r/pgvault_prefetch/%f; if [ -f "$f" ]; then exec mv -f "$f" "%p"; fi; exec pgvault wal-fetch %f %p'
    """
    return f'f={shlex.quote(str(staging))}/%f; if [ -f "$f" ]; then exec mv -f "$f" "%p"; fi; exec {fallback}'


class Prefetcher:
    def __init__(self, policy, wal_names: list[str], staging: Path, *, from_site: str | None = None,
                 workers: int = 4, ahead: int = 32):
        self.policy = policy
        self.names = list(wal_names)
        self.staging = staging
        self.tmp = staging / ".incoming"
        self.from_site = from_site
        self.workers = workers
        self.ahead = ahead
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.fetched = 0
        self.failed = 0

    def start(self) -> "Prefetcher":
        from ..sites import open_site
        from ..wal.fetch import site_order

        self.tmp.mkdir(parents=True, exist_ok=True)
        os.chmod(self.tmp, 0o700)
        pg.chown_to_run_user(self.staging)
        # One driver per site shared by the workers (boto3 clients are thread-safe).
        self.sites = {n: open_site(n, self.policy.sites[n]) for n in site_order(self.policy, self.from_site)}
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"prefetch-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _take(self) -> str | None:
        with self._lock:
            if self._next >= len(self.names):
                return None
            name = self.names[self._next]
            self._next += 1
            return name

    def _waiting(self) -> int:
        try:
            return sum(1 for e in os.scandir(self.staging) if e.is_file())
        except OSError:
            return 0

    def _work(self) -> None:
        from ..wal.fetch import fetch

        while not self._stop.is_set():
            name = self._take()
            if name is None:
                return
            while self._waiting() >= self.ahead and not self._stop.is_set():
                time.sleep(0.05)
            try:
                fetch(self.policy, name, self.tmp / name, from_site=self.from_site, sites=self.sites)
                pg.chown_to_run_user(self.tmp / name)
                os.rename(self.tmp / name, self.staging / name)
                self.fetched += 1
            except Exception as exc:  # noqa: BLE001 - restore_command falls back to wal-fetch
                self.failed += 1
                log.info("prefetch of %s failed (wal-fetch will try): %s", name, getattr(exc, "message", exc))

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        shutil.rmtree(self.staging, ignore_errors=True)
