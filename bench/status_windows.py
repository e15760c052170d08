"""Is `pgvault status` slower since it computes each WAL site's recoverability window (issue
16: at most 10 % slower)? The scene of bench/status.py (a local site with N and an S3 site
with M WAL objects, one logical backup), and `pgvault status --json` / `--prometheus` run by
this checkout and by a checkout of the commit before windows, their runs interleaved (base,
this, base, this, ...) so that the shared machine's load falls on both alike. Beside the wall
time, each run's CPU time (user + system of the status process, from getrusage): a loaded
machine stretches the wall time far more than the CPU time a run needs.

    /opt/pgvault/venv/bin/python bench/status_windows.py [BASE_COMMIT] [ROUNDS] [N_LOCAL] [N_S3]

BASE_COMMIT defaults to 7d0400a (the last commit before the windows branch); it is exported
with `git archive` into a temporary directory."""
from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT

from status import Scene, _status


def export(commit: str, into: Path) -> Path:
    into.mkdir()
    subprocess.run(f"git -C {ROOT} archive {commit} | tar -x -C {into}", shell=True, check=True)
    return into


def main(base: str = "7d0400a", rounds: int = 7, n_local: int = 20000, n_s3: int = 3000) -> None:
    sc = Scene(n_local, n_s3)
    try:
        old = export(base, sc.work / "base-checkout")    # removed with the scene's workdir
        prom = sc.work / "pgvault.prom"
        cases = {f"status --json, base {base}": (old, ()), "status --json, this checkout": (ROOT, ()),
                 f"status --prometheus, base {base}": (old, ("--prometheus", str(prom))),
                 "status --prometheus, this checkout": (ROOT, ("--prometheus", str(prom)))}
        for root, extra in cases.values():               # warm: caches (page cache, windows end times)
            _status(sc.env, *extra, root=root)
        runs: dict[str, list[float]] = {k: [] for k in cases}
        cpu: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(rounds):
            for name, (root, extra) in cases.items():
                subprocess.run(["sync"], check=True)
                c0 = _children_cpu()
                t0 = time.perf_counter()
                _status(sc.env, *extra, root=root)
                runs[name].append(time.perf_counter() - t0)
                cpu[name].append(_children_cpu() - c0)
    finally:
        sc.close()
    print(f"# bench/status_windows.py {base} {rounds} {n_local} {n_s3}: {rounds} interleaved rounds, medians")
    for what, table in (("wall", runs), ("cpu", cpu)):
        med = {k: statistics.median(v) for k, v in table.items()}
        print(f"{'case (' + what + ' time)':44} {'median s':>9}  runs")
        for k, v in table.items():
            print(f"{k:44} {med[k]:9.3f}  " + " ".join(f"{x:.3f}" for x in v))
        for kind in ("json", "prometheus"):
            b = med[f"status --{kind}, base {base}"]
            n = med[f"status --{kind}, this checkout"]
            print(f"ratio status --{kind} ({what}): this / base = {n / b:.3f}")


def _children_cpu() -> float:
    """User + system seconds of the waited-for child processes so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0] if a else "7d0400a", *(int(x) for x in a[1:4]))
