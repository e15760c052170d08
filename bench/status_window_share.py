"""In-process: how much of status's collect() is the window part (window_facts, timed in each
site's probe thread, summed over both sites) on the bench/status.py scene. An upper bound of its
share of the wall time (the two sites' threads overlap).

    /opt/pgvault/venv/bin/python bench/status_window_share.py
"""
import sys, time, statistics
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from status import Scene
sc = Scene(20000, 3000)
try:
    import os
    os.environ.update(sc.env)
    from pgvault.policy.load import load_policy
    import importlib; C = importlib.import_module("pgvault.status.collect")
    from datetime import datetime, timezone
    pol = load_policy(sc.env["PGVAULT_POLICY"])
    spent = []
    orig = C.window_facts
    def wrapped(*a, **k):
        t0 = time.perf_counter(); r = orig(*a, **k); spent.append(time.perf_counter() - t0); return r
    C.window_facts = wrapped
    tot = []; win = []
    for i in range(6):
        spent.clear()
        t0 = time.perf_counter(); C.collect(pol, datetime.now(timezone.utc)); tot.append(time.perf_counter() - t0)
        win.append(sum(spent))
    print("collect() runs:", " ".join(f"{x:.3f}" for x in tot))
    print("window_facts (summed over the 2 sites, in their threads):", " ".join(f"{x:.3f}" for x in win))
    print("share of thread time (median of runs 2..6):", f"{statistics.median([w / t for w, t in zip(win[1:], tot[1:])]):.3f}")
finally:
    sc.close()
