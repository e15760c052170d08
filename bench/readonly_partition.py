"""How long do the read-only commands take while S3 sites are partitioned? A local site and a
healthy S3 site (moto_server), plus two S3 sites that do not answer: one at a TCP listener
that accepts and never replies (a black hole), one on a moto_server stopped with SIGSTOP. The
S3 sites keep the policy defaults (5 s connect, 60 s read, 3 attempts), as a new user's would.

    /opt/pgvault/venv/bin/python bench/readonly_partition.py [ROUNDS] [CAP_SECONDS]

Each of `check`, `status`, `wal-status` and `list` is run ROUNDS times, the rounds
interleaved (check, status, wal-status, list, check, ...), and the median printed with the
exit code. A run still going after CAP_SECONDS is killed and counted as CAP (printed as
">CAP"). PGVAULT_BENCH_CHECKOUT=DIR runs the CLI of another checkout (e.g. the code before a
change, from `git archive`); the harness always comes from this one."""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

import yaml

from common import ROOT

from pgvault import sandbox

COMMANDS = [("check",), ("status",), ("wal-status",), ("list",)]


def run(args, env, cap: float) -> tuple[float, str]:
    checkout = os.environ.get("PGVAULT_BENCH_CHECKOUT", str(ROOT))
    t0 = time.perf_counter()
    try:
        cp = subprocess.run([sys.executable, "-m", "pgvault", *args], capture_output=True, text=True, cwd=checkout,
                            env=dict(os.environ, PYTHONPATH=checkout, **env), timeout=cap)
        return time.perf_counter() - t0, str(cp.returncode)
    except subprocess.TimeoutExpired:
        return cap, "killed"


def main(rounds: int = 3, cap: float = 120.0) -> None:
    work = sandbox.workdir("pgvault-bench-partition-")
    moto = sandbox.Moto().start()
    stopped = sandbox.Moto().start()
    hole = sandbox.BlackHole(lifetime=rounds * len(COMMANDS) * cap + 120).start()
    inst = sandbox.new_instance(work)
    try:
        moto.create_bucket("pgv-bench-eu", "eu-west-1")
        stopped.create_bucket("pgv-bench-us")
        policy = work / "policy.yaml"
        policy.write_text(yaml.safe_dump({
            "version": 1, "cluster": {"name": "main", "conninfo": inst.conninfo()},
            "sites": {"local": {"type": "local", "path": str(sandbox.owned_dir(work / "site-local"))},
                      "eu": {"type": "s3", "bucket": "pgv-bench-eu", "region": "eu-west-1", "endpoint_url": moto.url},
                      "hole": {"type": "s3", "bucket": "pgv-bench-hole", "endpoint_url": hole.url},
                      "us": {"type": "s3", "bucket": "pgv-bench-us", "endpoint_url": stopped.url}},
            "wal": {"sites": ["local", "eu", "hole", "us"]}, "state_dir": str(sandbox.owned_dir(work / "state")),
            "jobs": {"nightly": {"method": "logical", "sites": ["local", "eu", "hole", "us"],
                                 "schedule": "0 2 * * *"}}}))
        env = {"PGVAULT_POLICY": str(policy)}
        stopped.pause()
        times: dict[str, list[float]] = {c[0]: [] for c in COMMANDS}
        codes: dict[str, set] = {c[0]: set() for c in COMMANDS}
        for _ in range(rounds):
            for args in COMMANDS:
                secs, code = run(args, env, cap)
                times[args[0]].append(secs)
                codes[args[0]].add(code)
        print("\n## read-only commands, sites 'hole' (black hole) and 'us' (SIGSTOP'd moto) partitioned")
        print(f"checkout: {os.environ.get('PGVAULT_BENCH_CHECKOUT', ROOT)}; rounds {rounds}, cap {cap:.0f}s; "
              f"python {sys.version.split()[0]}, cpus {os.cpu_count()}")
        print(f"{'command':18} {'median s':>9} {'runs':>28}  exit")
        for name, ts in times.items():
            med = statistics.median(ts)
            shown = f">{cap:.0f}" if med >= cap else f"{med:.1f}"
            runs = " ".join(f">{cap:.0f}" if t >= cap else f"{t:.1f}" for t in ts)
            print(f"pgvault {name:10} {shown:>9} {runs:>28}  {','.join(sorted(codes[name]))}")
    finally:
        stopped.resume()
        inst.stop("immediate")
        moto.stop()
        stopped.stop()
        hole.stop()
        subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main(*(int(a) if i == 0 else float(a) for i, a in enumerate(sys.argv[1:])))
