"""In-process: how much of status's collect() is the window part (window_facts, run in each
site's probe thread, summed over both sites) on the bench/status.py scene. Wall time gives an
upper bound of its share (the two sites' threads overlap); CPU time (the window's thread CPU
time against the process's CPU time during collect()) is what a loaded machine stretches
least. Function calls, the load-independent measure: bench/status_profile.py.

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
        spent: list[tuple[float, float]] = []
        orig = C.window_facts

        def timed_window(*a, **k):
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return orig(*a, **k)
            finally:
                spent.append((time.perf_counter() - t0, time.thread_time() - c0))

        C.window_facts = timed_window
        tot, cpu, win, win_cpu = [], [], [], []
        for _ in range(rounds):
            spent.clear()
            t0, c0 = time.perf_counter(), time.process_time()
            C.collect(pol, datetime.now(timezone.utc))
            tot.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            win.append(sum(w for w, _ in spent))
            win_cpu.append(sum(c for _, c in spent))
    finally:
        sc.close()
    print("collect() runs, wall:", " ".join(f"{x:.3f}" for x in tot))
    print("collect() runs, process CPU:", " ".join(f"{x:.3f}" for x in cpu))
    print("window_facts (summed over the 2 sites, in their threads), wall:", " ".join(f"{x:.3f}" for x in win))
    print("window_facts, thread CPU:", " ".join(f"{x:.3f}" for x in win_cpu))
    print("share of thread time, wall (median of runs 2..):",
          f"{statistics.median([w / t for w, t in zip(win[1:], tot[1:])]):.3f}")
    print("share of CPU time (median of runs 2..):",
          f"{statistics.median([w / t for w, t in zip(win_cpu[1:], cpu[1:])]):.3f}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
