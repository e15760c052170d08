"""Shared helpers for benchmarks: timing with sync before each repetition, medians, ratios."""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def timed(fn, reps: int = 3, setup=None) -> float:
    """Median wall time of ``fn`` over ``reps`` runs; ``sync`` (and ``setup``) before each."""
    times = []
    for _ in range(reps):
        if setup:
            setup()
        subprocess.run(["sync"], check=True)
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timed_together(cases, reps: int = 3) -> list[float]:
    """Median wall time of each ``(fn, setup)`` in ``cases``, their repetitions interleaved
    (a, b, c, a, b, c, ...) so that load that comes and goes on a shared machine falls on all
    of them alike; ``sync`` (and ``setup``) before each."""
    times = [[] for _ in cases]
    for _ in range(reps):
        for i, (fn, setup) in enumerate(cases):
            if setup:
                setup()
            subprocess.run(["sync"], check=True)
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def sh(cmd: str, env=None) -> None:
    """Run a bare-tool pipeline through bash (benchmarks only; pgvault itself never uses a shell)."""
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def pgvault(*args, env=None) -> subprocess.CompletedProcess:
    # cwd=ROOT: `python -m` puts the working directory first on sys.path, so run from another
    # checkout it would import that checkout's pgvault, not this one.
    return subprocess.run([sys.executable, "-m", "pgvault", *args], check=True, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})), cwd=ROOT)


def report(title: str, rows: list[tuple[str, float]], baseline: str, extra: dict | None = None) -> None:
    base = dict(rows)[baseline]
    print(f"\n## {title}")
    print(f"{'command':62} {'seconds':>8} {'x ' + baseline[:18]:>22}")
    for name, secs in rows:
        print(f"{name:62} {secs:8.2f} {secs / base:22.2f}")
    for k, v in (extra or {}).items():
        print(f"{k}: {v}")
