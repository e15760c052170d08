"""Is `pgvault status` slower since it computes each WAL site's recoverability window (issue
16: at most 10 % slower)? The scene of bench/status.py (a local site with N and an S3 site
with M WAL objects, one logical backup), and `pgvault status --json` / `--prometheus` run by
this checkout and by a checkout of the commit before windows, their runs interleaved (base,
this, base, this, ...) so that the shared machine's load falls on both alike. Beside the wall
time, each run's CPU time (user + system of the status process, from getrusage): a loaded
machine stretches the wall time far more than the CPU time a run needs.

    /opt/pgvault/venv/bin/python bench/status_windows.py [BASE_COMMIT] [ROUNDS] [N_LOCAL] [N_S3]

A fifth case runs this checkout with the window part stubbed out, which isolates what the
windows cost from everything else added since the base. BASE_COMMIT defaults to 7d0400a (the
last commit before the windows branch; 3ccd521 is main just before windows were merged); it
is exported with `git archive` into a temporary directory."""
from __future__ import annotations

import os
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
                 "status --prometheus, this checkout": (ROOT, ("--prometheus", str(prom))),
                 NO_WINDOWS: (None, ())}
        for root, extra in cases.values():               # warm: caches (page cache, windows end times)
            _run(sc.env, root, extra)
        runs: dict[str, list[float]] = {k: [] for k in cases}
        cpu: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(rounds):
            for name, (root, extra) in cases.items():
                subprocess.run(["sync"], check=True)
                c0 = _children_cpu()
                t0 = time.perf_counter()
                _run(sc.env, root, extra)
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
        n, w = med["status --json, this checkout"], med[NO_WINDOWS]
        print(f"window part of status --json ({what}): this / this without windows = {n / w:.3f}")


# This checkout with window_facts stubbed out (its import of the window modules too): what
# the windows cost inside the same code, apart from everything else added since the base.
NO_WINDOWS = "status --json, this checkout, no windows"
STUB = """
import importlib, sys
C = importlib.import_module("pgvault.status.collect")
C.window_facts = lambda policy, name, *a, **k: {"site": name, "error": "not computed (bench)"}
sys.argv = ["pgvault"] + sys.argv[1:]
from pgvault.cli import main
main()
"""


def _run(env: dict, root, extra) -> None:
    """One status run: of the checkout at ``root``, or (``root`` None) of this one without windows."""
    if root is not None:
        _status(env, *extra, root=root)
        return
    cp = subprocess.run([sys.executable, "-c", STUB, "status", "--json"], capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=str(ROOT), **env), cwd=ROOT, check=False)
    assert cp.returncode in (0, 1, 2, 3) and '"facts"' in cp.stdout, cp.stderr[-2000:]


def _children_cpu() -> float:
    """User + system seconds of the waited-for child processes so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0] if a else "7d0400a", *(int(x) for x in a[1:4]))
