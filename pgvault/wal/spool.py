"""The local WAL spool: per-site backlog of files a site has not received yet, the state of
each site's circuit breaker, and a cache of the cluster's identity.

    <spool>/files/<name><suffix>           compressed bytes, fsynced before wal-push succeeds
    <spool>/pending/<site>/<name><suffix>  one empty marker per site still owed the file
    <spool>/sites/<site>.json              {"down_since", "retry_at", "error"} while a site fails
    <spool>/identity.json                  the system identifier and the sites already bound

A file leaves the spool only when the last site owed it has confirmed it (marker removed,
then the bytes). The site stays the source of truth: identity.json only saves a read of
cluster.json per push and can be deleted at any time.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..fsutil import fsync_dir as _fsync_dir
from ..fsutil import mkdirs as _mkdirs
from ..fsutil import write_atomic as _write_atomic


class Spool:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.files = self.root / "files"
        self.pending_dir = self.root / "pending"
        self.sites_dir = self.root / "sites"
        self._ready = False

    def ensure(self) -> "Spool":
        """Create the spool, owned by the PostgreSQL user whoever runs first, or raise
        StateDirUnusable (exit 3) saying how to fix it (see pgvault.statedir)."""
        if self._ready:
            return self
        from ..statedir import ensure_dir

        ensure_dir(self.root, "WAL spool")
        for d in (self.files, self.pending_dir, self.sites_dir):
            if not os.access(d, os.W_OK | os.X_OK):
                _mkdirs(d)
                ensure_dir(d, "WAL spool")
        self._ready = True
        return self

    # -- backlog
    def enqueue_many(self, entries: list[tuple[str, bytes, list[str], "Path | None"]]) -> None:
        """Make each file durable here for its sites: bytes fsynced first, then the markers, with
        one fsync per directory for the whole batch. Each entry is (stored, data, sites,
        same_bytes_at): when ``same_bytes_at`` is a
        file already durable on this filesystem holding exactly ``data`` (the copy a local
        site just committed), the spool hard-links it instead of writing the bytes again."""
        from ..fsutil import TMP_PREFIX

        self.ensure()
        for stored, data, _sites, src in entries:
            path = self.files / stored
            try:
                if path.stat().st_size == len(data):
                    continue
            except FileNotFoundError:
                pass
            if src is not None:
                tmp = self.files / f"{TMP_PREFIX}{stored}.{os.getpid()}"
                try:
                    tmp.unlink(missing_ok=True)
                    os.link(src, tmp)
                    if tmp.stat().st_size == len(data):
                        os.replace(tmp, path)
                        continue
                    tmp.unlink()
                except OSError:  # another filesystem, not ours to link, gone: write the bytes
                    tmp.unlink(missing_ok=True)
            _write_atomic(path, data, sync_dir=False)
        _fsync_dir(self.files)
        dirs = set()
        for stored, _data, sites, _src in entries:
            for site in sites:
                d = self.pending_dir / site
                if d not in dirs:
                    _mkdirs(d)
                    dirs.add(d)
                os.close(os.open(d / stored, os.O_WRONLY | os.O_CREAT, 0o600))
        for d in dirs:
            _fsync_dir(d)
        if dirs:
            _fsync_dir(self.pending_dir)

    def backlog(self, site: str) -> list[str]:
        """Stored names owed to ``site``, in archive order (history files first)."""
        from .names import sort_key, split_stored

        d = self.pending_dir / site
        try:
            names = [n for n in os.listdir(d) if not n.startswith(".")]
        except FileNotFoundError:
            return []
        return sorted(names, key=lambda n: sort_key(split_stored(n)[0]))

    def backlog_age(self, site: str, now: float | None = None) -> float | None:
        """Seconds since the oldest file owed to ``site`` was spooled."""
        d = self.pending_dir / site
        oldest = None
        for n in self.backlog(site):
            try:
                m = (d / n).stat().st_mtime
            except FileNotFoundError:
                continue
            oldest = m if oldest is None else min(oldest, m)
        return None if oldest is None else max(0.0, (now or time.time()) - oldest)

    def read(self, stored: str) -> bytes | None:
        try:
            return (self.files / stored).read_bytes()
        except FileNotFoundError:
            return None

    def delivered(self, site: str, stored: str) -> None:
        """``site`` holds ``stored`` now: drop its marker, and the bytes once no site is owed them."""
        try:
            (self.pending_dir / site / stored).unlink()
        except FileNotFoundError:
            pass
        for d in self.pending_dir.iterdir() if self.pending_dir.is_dir() else ():
            if (d / stored).exists():
                return
        try:
            (self.files / stored).unlink()
        except FileNotFoundError:
            pass

    def sites_with_backlog(self) -> list[str]:
        if not self.pending_dir.is_dir():
            return []
        return sorted(d.name for d in self.pending_dir.iterdir() if d.is_dir() and self.backlog(d.name))

    # -- circuit breaker
    def site_state(self, site: str) -> dict | None:
        try:
            return json.loads((self.sites_dir / f"{site}.json").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def mark_down(self, site: str, error: str, retry_interval: float, now: float | None = None) -> None:
        now = now or time.time()
        prev = self.site_state(site) or {}
        state = {"down_since": prev.get("down_since", now), "retry_at": now + retry_interval, "error": error}
        self.ensure()
        _write_atomic(self.sites_dir / f"{site}.json", json.dumps(state).encode(), sync=False)

    def mark_up(self, site: str) -> None:
        try:
            (self.sites_dir / f"{site}.json").unlink()
        except FileNotFoundError:
            pass

    def is_resting(self, site: str, now: float | None = None) -> bool:
        """True while a failed site waits for its next retry (wal-push spools without trying it)."""
        state = self.site_state(site)
        return bool(state) and state.get("retry_at", 0) > (now or time.time())

    # -- identity cache
    def identity(self) -> dict:
        try:
            return json.loads((self.root / "identity.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def save_identity(self, doc: dict) -> None:
        self.ensure()
        _write_atomic(self.root / "identity.json", json.dumps(doc, indent=1).encode(), sync=False)
