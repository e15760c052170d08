"""The read-only commands answer while S3 sites are partitioned (issue 12, item 1): a site at
a TCP listener that accepts and never answers (a black hole) and a site on a moto_server
stopped with SIGSTOP, beside a local and a healthy S3 site. The S3 sites keep the policy's
default timeouts (60 s read, 3 attempts), as a new user's would.

Each command runs as a real subprocess under a generous outer timeout: it must have answered
before it was killed, named the unreachable sites and returned its documented exit code.
Nothing here measures how long it took (bench/readonly_partition.py does)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pgvault import sandbox
from tests.conftest import ROOT, World

OUTER = 60  # seconds; the bound the commands promise is monitoring.site_timeout (10 s)
DEAD = ("hole", "stopped")


@pytest.fixture
def partitioned(workdir, pg, moto):
    """Sites: a (local), eu (healthy S3), hole (black hole), stopped (its own moto, SIGSTOPped).
    The stopped moto is this test's own: the session's moto must never be stopped."""
    hole = sandbox.BlackHole(lifetime=600).start()
    own = sandbox.Moto().start()
    try:
        w = World(workdir, pg, moto)
        w.local_site("a")
        w.s3_site("eu", "eu-west-1")
        w.sites["hole"] = {"type": "s3", "bucket": "pgv-black-hole", "prefix": "pg", "endpoint_url": hole.url}
        w.moto = own
        w.s3_site("stopped")
        w.moto = moto
        w.jobs["nightly"] = {"method": "logical", "sites": ["a", "eu", "hole", "stopped"], "schedule": "0 2 * * *"}
        w.policy(wal={"sites": ["a", "eu", "hole", "stopped"]}, state_dir=str(sandbox.owned_dir(workdir / "state")))
        own.pause()
        yield w
    finally:
        own.resume()
        own.stop()
        hole.stop()


def run(w: World, *args) -> subprocess.CompletedProcess:
    """The CLI as users run it; fails the test if it had not answered when the outer timeout
    killed it."""
    env = dict(os.environ, PGVAULT_POLICY=str(w.workdir / "policy.yaml"), PYTHONPATH=str(ROOT))
    try:
        return subprocess.run([sys.executable, "-m", "pgvault", *args], capture_output=True, text=True, env=env,
                              timeout=OUTER)
    except subprocess.TimeoutExpired:
        pytest.fail(f"pgvault {' '.join(args)} had not answered after {OUTER}s with sites {DEAD} partitioned")


def test_check_answers_and_names_the_partitioned_sites(partitioned):
    cp = run(partitioned, "check", "--json")
    assert cp.returncode == 2, cp.stdout + cp.stderr                     # Nagios CRITICAL
    checks = {c["name"]: c for c in json.loads(cp.stdout)["checks"]}
    for name in DEAD:
        assert checks[f"site {name}"]["state"] == "CRITICAL"
        assert name in checks[f"site {name}"]["message"]
    assert checks["site a"]["state"] == checks["site eu"]["state"] == "OK"   # the others were judged
    assert checks["cluster"]["state"] == "OK"


def test_check_probes_only_answers(partitioned):
    cp = run(partitioned, "check", "--probes-only")
    assert cp.returncode == 2, cp.stdout + cp.stderr
    lines = cp.stdout.splitlines()
    for name in DEAD:
        assert any(line.startswith("CRITICAL site " + name) for line in lines), cp.stdout
        assert any(line.startswith("CRITICAL wal " + name) for line in lines), cp.stdout
    assert any(line.startswith("OK       site eu") for line in lines), cp.stdout


def test_status_answers_and_names_the_partitioned_sites(partitioned):
    cp = run(partitioned, "status", "--json")
    assert cp.returncode == 2, cp.stdout + cp.stderr
    doc = json.loads(cp.stdout)
    sites = doc["facts"]["sites"]
    assert [n for n, f in sites.items() if not f["reachable"]] == list(DEAD)
    for name in DEAD:
        assert name in sites[name]["error"]
    assert sites["eu"]["reachable"] and sites["a"]["reachable"]


def test_status_answers_with_the_cluster_down_too(partitioned):
    """With the cluster down, status used to open every site with the policy's full timeouts
    (one after another) to learn the WAL segment size."""
    partitioned.pg.stop("immediate")
    cp = run(partitioned, "status")
    assert cp.returncode == 2, cp.stdout + cp.stderr
    assert "PGVAULT CRITICAL" in cp.stdout.splitlines()[0]
    for name in DEAD:
        assert f"site {name!r}" in cp.stdout


def test_wal_status_answers_and_exits_3(partitioned):
    cp = run(partitioned, "wal-status", "--json")
    assert cp.returncode == 3, cp.stdout + cp.stderr                     # README: 3 = a site is unreachable
    doc = json.loads(cp.stdout)
    for name in DEAD:
        st = doc["sites"][name]
        assert not st["reachable"] and name in st["error"]
    assert doc["sites"]["a"]["reachable"] and doc["sites"]["eu"]["reachable"]
    text = run(partitioned, "wal-status")
    assert text.returncode == 3
    for name in DEAD:
        assert f"{name}: UNREACHABLE" in text.stdout


def test_list_answers_and_exits_3(partitioned):
    cp = run(partitioned, "list")
    assert cp.returncode == 3, cp.stdout + cp.stderr
    for name in DEAD:
        assert f"site {name!r}" in cp.stderr
    assert "no backups" in cp.stdout                                    # the reachable sites were listed
    drills = run(partitioned, "list", "--drills")
    assert drills.returncode == 3
    for name in DEAD:
        assert f"site {name!r}" in drills.stderr


def test_windows_answers_and_exits_3(partitioned):
    cp = run(partitioned, "windows", "--json")
    assert cp.returncode == 3, cp.stdout + cp.stderr
    doc = json.loads(cp.stdout)
    assert sorted(doc["unreachable"]) == sorted(DEAD)
    assert {w["site"] for w in doc["sites"]} == {"a", "eu"}              # the reachable sites were read


def test_wal_status_exits_3_for_a_site_that_refuses(workdir):
    """The exit code alone, without a hang: with a site that refuses connections at once
    (nothing listens on its port), wal-status printed UNREACHABLE and exited 0."""
    import yaml

    from pgvault.pg import free_port

    policy = workdir / "policy.yaml"
    policy.write_text(yaml.safe_dump({
        "version": 1, "cluster": {"name": "main", "conninfo": "host=/nonexistent"},
        "sites": {"a": {"type": "local", "path": str(sandbox.owned_dir(workdir / "site-a"))},
                  "gone": {"type": "s3", "bucket": "pgv-refused", "endpoint_url": f"http://127.0.0.1:{free_port()}"}},
        "wal": {"sites": ["a", "gone"]}, "state_dir": str(workdir / "state"), "jobs": {}}))
    env = dict(os.environ, **sandbox.S3_ENV, PGVAULT_POLICY=str(policy), PYTHONPATH=str(ROOT))
    cp = subprocess.run([sys.executable, "-m", "pgvault", "wal-status"], capture_output=True, text=True, env=env,
                        timeout=OUTER)
    assert cp.returncode == 3, cp.stdout + cp.stderr
    assert "gone: UNREACHABLE" in cp.stdout and "a: 0 file(s)" in cp.stdout
