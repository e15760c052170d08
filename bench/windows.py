"""How long does the recoverability window take on a big site? A local site holds N WAL
segments (empty files with real names: the window is computed from the listing alone, one
segment missing in the middle) and B bases; timed: listing the site's WAL archive
(gather.archive_of, what `pgvault windows` does) and the pure computation (restore/windows.py),
separately and together. Goal (issue 16): <= 2 s for 10,000 segments and 100 backups.

    /opt/pgvault/venv/bin/python bench/windows.py [N_SEGMENTS] [N_BASES]
"""
from __future__ import annotations

import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from common import timed  # noqa: F401  (puts the checkout on sys.path)

from pgvault.catalog import layout
from pgvault.restore import plan as P
from pgvault.restore import windows as W
from pgvault.restore.gather import archive_of
from pgvault.sites.local import LocalSite, LocalSiteConfig

T0 = datetime(2026, 11, 25, tzinfo=timezone.utc)


def main(n: int = 10_000, nb: int = 100) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "site"
        hole = n // 2
        for s in range(n):
            if s == hole:
                continue
            p = root / layout.wal_key("main", P.seg_name(1, s + 1))
            p.parent.mkdir(parents=True, exist_ok=True)
            p.touch()
        step = n // nb
        bases = [P.Base(f"b{i:04d}", "local", "barman", 1, (1 + i * step) * P.SEG + 0x28, (1 + i * step) * P.SEG + 0x100,
                        T0 + timedelta(minutes=i * step), T0 + timedelta(minutes=i * step, seconds=5)) for i in range(nb)]
        site = LocalSite("local", LocalSiteConfig(type="local", path=str(root)))
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            arch = archive_of(site, "main", P.SEG)
            t1 = time.perf_counter()
            w = W.compute("local", bases, arch)
            t2 = time.perf_counter()
            runs.append((t1 - t0, t2 - t1, t2 - t0))
        runs.sort(key=lambda r: r[2])
        lst, comp, tot = runs[1]
        print(f"windows over {n} segments ({len(w.holes)} hole), {nb} bases, median of 3: "
              f"list {lst:.3f}s, compute {comp:.3f}s, total {tot:.3f}s (goal <= 2 s)")
        assert len(w.holes) == 1, w.holes


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
