"""In-process: how much of status's collect() is the window part (window_facts, timed in each
site's probe thread, summed over both sites) on the bench/status.py scene. An upper bound of its
share of the wall time (the two sites' threads overlap).

    /opt/pgvault/venv/bin/python bench/status_window_share.py [ROUNDS]
"""
from __future__ import annotations

import importlib
import os
import statistics
import sys
import time
from datetime import datetime, timezone

from status import Scene


def main(rounds: int = 6) -> None:
    sc = Scene(20000, 3000)
    try:
        os.environ.update(sc.env)
        from pgvault.policy.load import load_policy

        C = importlib.import_module("pgvault.status.collect")   # pgvault.status exports a function of that name
        pol = load_policy(sc.env["PGVAULT_POLICY"])
        spent: list[float] = []
        orig = C.window_facts

        def timed_window(*a, **k):
            t0 = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                spent.append(time.perf_counter() - t0)

        C.window_facts = timed_window
        tot, win = [], []
        for _ in range(rounds):
            spent.clear()
            t0 = time.perf_counter()
            C.collect(pol, datetime.now(timezone.utc))
            tot.append(time.perf_counter() - t0)
            win.append(sum(spent))
    finally:
        sc.close()
    print("collect() runs:", " ".join(f"{x:.3f}" for x in tot))
    print("window_facts (summed over the 2 sites, in their threads):", " ".join(f"{x:.3f}" for x in win))
    print("share of thread time (median of runs 2..):", f"{statistics.median([w / t for w, t in zip(win[1:], tot[1:])]):.3f}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
