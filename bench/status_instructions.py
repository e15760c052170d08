"""Instructions executed by `pgvault status --json` (valgrind's cachegrind, I refs) on the scene of
bench/status.py: this checkout, the base commit, and this checkout with the window part stubbed
out (bench/status_windows.py's STUB). Instructions, unlike wall or CPU time, hardly depend on
what else the machine runs, and, unlike cProfile's call counts, include the work done in C
(regular expressions, pydantic-core, JSON, the interpreter's own). One run each, ~80x slower
than native: the sites are given minutes (bench/status_profile.patient).

    /opt/pgvault/venv/bin/python bench/status_instructions.py [BASE_COMMIT] [N_LOCAL] [N_S3]
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

from common import ROOT

from status import Scene
from status_profile import patient
from status_windows import STUB, export


def instructions(env: dict, root, argv: list[str], out: str) -> int:
    """I refs of one status run of the checkout at ``root`` (``argv`` after the interpreter)."""
    cp = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}",
                         sys.executable, *argv, "status", "--json"], capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=str(root), **env), cwd=root, check=False)
    assert cp.returncode in (0, 1, 2, 3) and '"facts"' in cp.stdout, cp.stderr[-2000:]
    m = re.search(r"I\s+refs:\s+([\d,]+)", cp.stderr)
    return int(m.group(1).replace(",", ""))


def main(base: str = "3ccd521", n_local: int = 20000, n_s3: int = 3000) -> None:
    sc = Scene(n_local, n_s3)
    try:
        patient(sc)
        old = export(base, sc.work / "base-checkout")
        cases = {f"base {base}": (old, ["-m", "pgvault"]), "this checkout": (ROOT, ["-m", "pgvault"]),
                 "this checkout, no windows": (ROOT, ["-c", STUB])}
        for root, argv in cases.values():              # warm (page cache, .pyc files, windows end times)
            subprocess.run([sys.executable, *argv, "status", "--json"], capture_output=True,
                           env=dict(os.environ, PYTHONPATH=str(root), **sc.env), cwd=root, check=False)
        refs = {k: instructions(sc.env, root, argv, str(sc.work / "cg.out")) for k, (root, argv) in cases.items()}
    finally:
        sc.close()
    print(f"# bench/status_instructions.py {base} {n_local} {n_s3}: status --json, instructions (cachegrind I refs)")
    for k, v in refs.items():
        print(f"{k:40} {v:15,d}")
    b, n, w = refs[f"base {base}"], refs["this checkout"], refs["this checkout, no windows"]
    print(f"ratio this / base = {n / b:.3f}")
    print(f"window part: this / this without windows = {n / w:.3f} ({(n - w) / n:.3f} of this checkout's instructions)")


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0] if a else "3ccd521", *(int(x) for x in a[1:3]))
