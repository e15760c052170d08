"""Where does `pgvault status --json` spend its calls, this checkout against a base commit? On the
scene of bench/status.py, each checkout's CLI runs once under cProfile in every thread (status
reads its sites in probe threads, which cProfile alone does not see); the merged profile is
summarised. Call counts do not depend on the machine's load, so this is the measure to trust
on a shared machine; the times beside them are inflated alike for both.

    /opt/pgvault/venv/bin/python bench/status_profile.py [BASE_COMMIT] [N_LOCAL] [N_S3] [TOP]
"""
from __future__ import annotations

import os
import pstats
import subprocess
import sys
import textwrap

import yaml

from common import ROOT

from status import Scene
from status_windows import export

# Run inside the profiled interpreter: every thread (probe threads included) gets its own
# profiler, merged into one stats file when the CLI exits.
WRAPPER = textwrap.dedent("""
    import atexit, cProfile, gc, os, sys, threading
    # CPython 3.11's profiler crashes now and then when the garbage collector runs in a
    # profiled probe thread (botocore's listing): no collection (nothing here is counted by it).
    gc.disable()
    out = sys.argv.pop(1)
    profs, done, here = [], [], threading.local()
    orig = threading.Thread.run
    def run(self):
        p = here.prof = cProfile.Profile(); profs.append(p); p.enable()
        try:
            orig(self)
        finally:
            p.disable()
    threading.Thread.run = run
    main = here.prof = cProfile.Profile(); profs.append(main)
    # The window part, counted apart: its own profiler while the thread's pauses (one a thread).
    import importlib
    C = importlib.import_module("pgvault.status.collect")
    if hasattr(C, "window_facts"):
        window = C.window_facts
        def counted(*a, **k):
            outer, inner = here.prof, cProfile.Profile()
            profs.append(inner)
            outer.disable(); inner.enable()
            try:
                return window(*a, **k)
            finally:
                inner.disable(); outer.enable()
                with open(out + ".window", "a") as fh:
                    import pstats
                    st = pstats.Stats(inner)
                    fh.write(f"{st.total_calls} {st.total_tt}\\n")
        C.window_facts = counted
    def dump():
        import pstats
        if done:                   # dumped already
            return
        done.append(1)
        main.disable()
        s = pstats.Stats(profs[0])
        for p in profs[1:]:
            s.add(p)
        s.dump_stats(out)
    atexit.register(dump)
    real_exit = os._exit
    def fast_exit(code):          # the CLI leaves by os._exit (no atexit) after read-only commands
        dump()
        real_exit(code)
    os._exit = fast_exit
    sys.argv = ["pgvault"] + sys.argv[1:]
    from pgvault.cli import main as cli
    main.enable()
    cli()
""")

# What the window part is made of (cumulative, in this checkout).
WATCH = ("parse", "scan_listing", "window_facts", "site_window", "site_inputs", "archive_of", "compute", "end_times",
         "_load", "relate_drills", "scan", "_read_site", "collect", "read_evidence", "standby_facts", "parse_segment",
         "split_stored", "is_wal_name")


def profile(env: dict, root, out: str) -> pstats.Stats:
    """One `status --json` run of the checkout at ``root`` under the all-threads profiler."""
    for _attempt in range(5):
        if os.path.exists(out + ".window"):
            os.unlink(out + ".window")
        cp = subprocess.run([sys.executable, "-c", WRAPPER, out, "status", "--json"], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(root), PYTHONFAULTHANDLER="1", **env), cwd=root,
                            check=False)
        if cp.returncode != -11:
            break
        # CPython 3.11's profiler crashes now and then in an S3 probe thread (botocore's
        # listing); the run is repeated: what is counted does not depend on the attempt.
        print(f"(profiled run of {root} crashed: {cp.stderr[:300]!r}; again)", file=sys.stderr)
    assert cp.returncode in (0, 1, 2, 3) and '"facts"' in cp.stdout, (cp.returncode, cp.stderr[-2000:])
    st = pstats.Stats(out)
    st.window = [tuple(float(x) for x in ln.split()) for ln in open(out + ".window")] \
        if os.path.exists(out + ".window") else []
    return st


def totals(st: pstats.Stats) -> tuple[int, int]:
    """(all calls, primitive calls) of a profile."""
    return st.total_calls, st.prim_calls


def watched(st: pstats.Stats) -> dict[str, tuple[int, float]]:
    """{function name: (calls, cumulative seconds)} of the WATCH functions, summed over modules."""
    out: dict[str, tuple[int, float]] = {}
    for (path, _line, fn), (_cc, nc, _tt, ct, _callers) in st.stats.items():
        if fn in WATCH and "/pgvault/" in path and "site-packages" not in path:
            key = f"{fn} ({path.rsplit('pgvault/', 1)[-1]})"
            c, t = out.get(key, (0, 0.0))
            out[key] = (c + nc, t + ct)
    return out


def patient(sc: Scene) -> None:
    """A profiled run is several times slower: give every site minutes, not the default 10 s
    (a site given up on would leave its thread's profiler running as the CLI exits)."""
    path = sc.env["PGVAULT_POLICY"]
    with open(path) as fh:
        doc = yaml.safe_load(fh)
    doc.setdefault("monitoring", {})["site_timeout"] = "600s"
    with open(path, "w") as fh:
        yaml.safe_dump(doc, fh)


def by_function(st: pstats.Stats) -> dict[str, int]:
    """{module-relative function: calls}, the checkout's path left out (so that two compare)."""
    out: dict[str, int] = {}
    for (path, line, fn), (_cc, nc, _tt, _ct, _callers) in st.stats.items():
        where = path.rsplit("pgvault/", 1)[-1] if "/pgvault/" in path else path.rsplit("/", 1)[-1]
        key = f"{where}:{fn}"
        out[key] = out.get(key, 0) + nc
    return out


def added_calls(base: pstats.Stats, this: pstats.Stats, top: int) -> list[tuple[str, int, int]]:
    """The functions whose call counts grew most: (function, base calls, this calls)."""
    b, n = by_function(base), by_function(this)
    rows = [(k, b.get(k, 0), n.get(k, 0)) for k in set(b) | set(n)]
    return sorted(rows, key=lambda r: r[1] - r[2])[:top]


def imports(env: dict, root) -> dict[str, int]:
    """{module: its own import time in microseconds} of one `status --json` run (-X importtime)."""
    cp = subprocess.run([sys.executable, "-X", "importtime", "-m", "pgvault", "status", "--json"], capture_output=True,
                        text=True, env=dict(os.environ, PYTHONPATH=str(root), **env), cwd=root, check=False)
    out = {}
    for line in cp.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "self [us]" not in line:
            self_us, _cum, name = line[len("import time:"):].split("|")
            out[name.strip()] = int(self_us)
    return out


def main(base: str = "3ccd521", n_local: int = 20000, n_s3: int = 3000, top: int = 25) -> None:
    sc = Scene(n_local, n_s3)
    try:
        patient(sc)
        old = export(base, sc.work / "base-checkout")
        for root in (old, ROOT):                        # warm (page cache, the windows end-time cache)
            profile(sc.env, root, str(sc.work / "warm.prof"))
        stats = {f"base {base}": profile(sc.env, old, str(sc.work / "base.prof")),
                 "this checkout": profile(sc.env, ROOT, str(sc.work / "this.prof"))}
        mods = {"base": imports(sc.env, old), "this": imports(sc.env, ROOT)}
    finally:
        sc.close()
    print(f"# bench/status_profile.py {base} {n_local} {n_s3}: one `status --json` per checkout, all threads")
    for name, st in stats.items():
        calls, prim = totals(st)
        print(f"\n## {name}: {calls} function calls ({prim} primitive), {st.total_tt:.3f} s profiled (all threads)")
        if st.window:
            wc, wt = sum(c for c, _ in st.window), sum(t for _, t in st.window)
            print(f"  window part (window_facts, {len(st.window)} sites): {wc:.0f} calls ({wc / calls:.3f} of all), "
                  f"{wt:.3f} s profiled ({wt / st.total_tt:.3f} of all)")
        for k, (c, t) in sorted(watched(st).items(), key=lambda kv: -kv[1][1]):
            print(f"  {k:60} calls {c:8d}  cum {t:7.3f} s")
        st.sort_stats("tottime").print_stats(top)
    print("\n## call counts that grew most (base -> this checkout)")
    for k, cb, cn in added_calls(*stats.values(), top):
        print(f"  {k:70} {cb:8d} -> {cn:8d}  ({cn - cb:+d})")
    only = sorted(set(mods["this"]) - set(mods["base"]), key=lambda m: -mods["this"][m])
    print(f"\n## modules only this checkout imports: {len(only)} of {len(mods['this'])} "
          f"(base {len(mods['base'])}), {sum(mods['this'][m] for m in only) / 1000:.1f} ms self time")
    for m in only[:top]:
        print(f"  {m:60} {mods['this'][m] / 1000:7.1f} ms")
    b, n = (totals(s)[0] for s in stats.values())
    print(f"function calls: this / base = {n / b:.3f}")


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0] if a else "3ccd521", *(int(x) for x in a[1:4]))
