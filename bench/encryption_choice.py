"""Which encryption for pgvault: throughput per core of the candidates, on 16 MiB WAL segments
and on a long stream (a dump), rounds interleaved. CPU seconds are what matter (wal-push
compresses and encrypts every segment on 2 shared cores); wall time is printed too.

Candidates:
  age-inproc   pgvault.crypt.age (the age format on `cryptography`/OpenSSL), push-style
  pyrage       pyrage.encrypt (whole buffer) / pyrage.encrypt_io (pull from a reader)
  age-cli      the stock `age -r` through proc pipes (one process per segment)
  gpg          `gpg --encrypt` to a cv25519 key, no compression (Barman's route)

Usage: python bench/encryption_choice.py [--stream-mib 256] [--rounds 3]
Writes bench/results/encryption-choice.txt.
"""
from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgvault.crypt import age  # noqa: E402

SEG = 16 << 20
CH = 1 << 20


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure(fn):
    c0, k0, t0 = time.process_time(), cpu_children(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, (time.process_time() - c0) + (cpu_children() - k0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stream-mib", type=int, default=256)
    ap.add_argument("--segments", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    import pyrage

    tmp = Path(tempfile.mkdtemp(prefix="pgvault-bench-enc-"))
    ident, rcpt = age.generate()
    pr = pyrage.x25519.Recipient.from_str(rcpt)
    gh = tmp / "gnupg"
    gh.mkdir(mode=0o700)
    subprocess.run(["gpg", "--homedir", str(gh), "--batch", "--passphrase", "", "--quick-gen-key", "bench@pgvault",
                    "future-default", "default", "never"], check=True, capture_output=True)
    # WAL-like content: compressed WAL is close to random; encryption cost does not depend on content.
    seg = os.urandom(SEG)
    stream_chunks = [os.urandom(CH) for _ in range(16)]
    n_stream = a.stream_mib

    def seg_inproc():
        for _ in range(a.segments):
            age.seal(seg, [rcpt])

    def seg_pyrage():
        for _ in range(a.segments):
            pyrage.encrypt(seg, [pr])

    def seg_cli():
        for _ in range(a.segments):
            subprocess.run(["age", "-r", rcpt], input=seg, stdout=subprocess.DEVNULL, check=True)

    def seg_gpg():
        for _ in range(a.segments):
            subprocess.run(["gpg", "--homedir", str(gh), "--batch", "--trust-model", "always", "-z", "0",
                            "-r", "bench@pgvault", "--encrypt"], input=seg, stdout=subprocess.DEVNULL, check=True)

    def st_inproc():
        s = age.Sealer([rcpt])
        for i in range(n_stream):
            s.update(stream_chunks[i % 16])
        s.finish()

    class Src(io.RawIOBase):
        def __init__(self):
            self.i = 0

        def readable(self):
            return True

        def readinto(self, b):
            if self.i >= n_stream:
                return 0
            c = stream_chunks[self.i % 16]
            self.i += 1
            b[:len(c)] = c
            return len(c)

    class Null(io.RawIOBase):
        def writable(self):
            return True

        def write(self, b):
            return len(b)

    def st_pyrage():
        pyrage.encrypt_io(io.BufferedReader(Src(), CH), Null(), [pr])

    def pipe_to(argv):
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        for i in range(n_stream):
            p.stdin.write(stream_chunks[i % 16])
        p.stdin.close()
        assert p.wait() == 0

    def st_cli():
        pipe_to(["age", "-r", rcpt])

    def st_gpg():
        pipe_to(["gpg", "--homedir", str(gh), "--batch", "--trust-model", "always", "-z", "0",
                 "-r", "bench@pgvault", "--encrypt"])

    cases = {
        "segments": [("age-inproc", seg_inproc), ("pyrage", seg_pyrage), ("age-cli", seg_cli), ("gpg", seg_gpg)],
        "stream": [("age-inproc", st_inproc), ("pyrage", st_pyrage), ("age-cli", st_cli), ("gpg", st_gpg)],
    }
    volume = {"segments": a.segments * SEG, "stream": n_stream * CH}
    runs = {(k, n): [] for k, cs in cases.items() for n, _ in cs}
    for _ in range(a.rounds):
        for k, cs in cases.items():
            for n, fn in cs:
                runs[(k, n)].append(measure(fn))
    lines = [f"# encryption choice: {a.segments} x 16 MiB segments, a {n_stream} MiB stream, {a.rounds} rounds interleaved",
             f"# host: {os.cpu_count()} cores; age {subprocess.run(['age', '--version'], capture_output=True, text=True).stdout.strip()}, "
             f"pyrage {getattr(pyrage, '__version__', '1.4.0')}, "
             f"{subprocess.run(['gpg', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}",
             f"{'workload':10} {'candidate':12} {'MiB/s per CPU-s':>16} {'MiB/s wall':>11} {'x age-inproc (cpu)':>19}  runs (wall s / cpu s)"]
    for k, cs in cases.items():
        mib = volume[k] / (1 << 20)
        base = None
        for n, _ in cs:
            wall = statistics.median(w for w, _c in runs[(k, n)])
            cpu = statistics.median(c for _w, c in runs[(k, n)])
            per_cpu = mib / cpu
            base = base or per_cpu
            every = " ".join(f"{w:.3f}/{c:.3f}" for w, c in runs[(k, n)])
            lines.append(f"{k:10} {n:12} {per_cpu:16.0f} {mib / wall:11.0f} {per_cpu / base:19.2f}  {every}")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).resolve().parent / "results" / "encryption-choice.txt"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
