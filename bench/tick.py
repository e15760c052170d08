"""How much does `pgvault tick` cost when nothing is due? It runs every minute on every host.

Compares, in the same run (medians of N runs, Python start-up included, peak RSS per process):
  python3 -c pass                 the floor
  pgvault --version               the CLI root (click) alone
  pgvault tick   (idle, note)     the fast path: digest of the policy + the last tick's note
  pgvault tick   (idle, no note)  the full path: validate the policy, croniter, job state

    PYTHONPATH=$PWD /opt/pgvault/venv/bin/python bench/tick.py [--runs 20]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(argv, env, runs, before=None):
    times, rss = [], []
    for _ in range(runs):
        if before:
            before()
        t = time.perf_counter()
        p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(p.pid, 0)
        times.append(time.perf_counter() - t)
        rss.append(usage.ru_maxrss / 1024)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{argv} failed: {p.stderr.read().decode()}")
        p.stderr.close()
    return statistics.median(times), max(rss)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="pgvault-bench-tick-"))
    site = d / "site"
    site.mkdir()
    jobs = "\n".join(f"""  job{i}:
    method: logical
    schedule: "{i} 2 * * *"
    sites: [local]
    retain: {{daily: 7, weekly: 4}}""" for i in range(5))
    (d / "policy.yaml").write_text(f"""version: 1
cluster: {{name: bench, conninfo: "host=/nonexistent dbname=postgres"}}
state_dir: {d / "state"}
sites:
  local: {{type: local, path: {site}}}
jobs:
{jobs}
""")
    env = dict(os.environ, PYTHONPATH=str(ROOT), PGVAULT_POLICY=str(d / "policy.yaml"),
               PGVAULT_NOW="2026-11-25T12:00:00Z")
    # Measure what an installed pgvault costs: with bytecode caches (this sandbox sets
    # PYTHONDONTWRITEBYTECODE, which would recompile every module on every run).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "pgvault")], env=env, check=True)
    py = sys.executable
    tick = [py, "-m", "pgvault", "tick"]
    subprocess.run(tick, env=env, check=True)          # first tick: jobs first seen, note written
    note = d / "state" / "tick.json"
    assert note.exists()
    subprocess.run(["sync"])
    rows = [
        ("python3 -c pass", measure([py, "-c", "pass"], env, args.runs)),
        ("pgvault --version", measure([py, "-m", "pgvault", "--version"], env, args.runs)),
        ("pgvault tick (idle, fast path)", measure(tick, env, args.runs)),
        ("pgvault tick (idle, full path)", measure(tick, env, args.runs, before=lambda: note.unlink(missing_ok=True))),
    ]
    base = rows[0][1][0]
    print(f"{'command':34} {'median ms':>10} {'x python':>9} {'peak RSS MiB':>13}   ({args.runs} runs, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f})")
    for name, (t, rss) in rows:
        print(f"{name:34} {t * 1000:10.0f} {t / base:9.1f} {rss:13.1f}")


if __name__ == "__main__":
    main()
