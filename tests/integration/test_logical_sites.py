"""Logical backups across local and S3 sites; crashes; check's Nagios exit codes."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

from pgvault import sandbox

from ..conftest import ROOT
from .test_logical import counts, load_data


def test_backup_to_local_and_s3_then_restore_from_s3_alone(s3world):
    w = s3world
    load_data(w.pg)
    w.local_site("local")
    w.s3_site("eu", region="eu-west-1")
    w.jobs["nightly"] = {"method": "logical", "sites": ["local", "eu"]}
    w.policy()
    bid = w.cli("backup", "nightly").stdout.split()[0]
    shutil.rmtree(w.workdir / "site-local")
    listed = json.loads(w.cli("list", "--site", "eu", "--json").stdout)
    assert [d["backup_id"] for d in listed] == [bid]
    w.cli("restore", bid, "--database", "app", "--as", "from_s3")
    assert counts(w.pg, "from_s3") == counts(w.pg, "app")


def test_unreachable_site_is_dropped_and_named(s3world):
    w = s3world
    load_data(w.pg, rows=100)
    w.local_site("local")
    w.sites["dead"] = {"type": "s3", "bucket": "pgv-dead", "endpoint_url": f"http://127.0.0.1:{sandbox.pg.free_port()}",
                       "connect_timeout": 1, "max_attempts": 1}
    w.jobs["nightly"] = {"method": "logical", "sites": ["local", "dead"]}
    w.policy()
    cp = w.cli("backup", "nightly", check=False)
    assert cp.returncode == 1
    assert "site 'dead' did not receive backup" in cp.stderr
    # said once, in one wording (issue 12 item 6: a second "WARNING: site dead ..." line too)
    assert [ln for ln in cp.stderr.splitlines() if "dead" in ln] == \
        [ln for ln in cp.stderr.splitlines() if "site 'dead' did not receive backup" in ln], cp.stderr
    assert len([ln for ln in cp.stderr.splitlines() if "dead" in ln]) == 1, cp.stderr
    bid = cp.stdout.split()[0]
    assert [d["backup_id"] for d in json.loads(w.cli("list", "--site", "local", "--json").stdout)] == [bid]


def test_killed_backup_leaves_only_debris_that_verify_reports(world):
    w = world
    w.pg.psql("CREATE DATABASE big")
    w.pg.psql("CREATE TABLE t AS SELECT g, md5(g::text) || md5((g+1)::text) AS pad FROM generate_series(1, 400000) g",
              dbname="big")
    site = w.local_site("a")
    w.jobs["nightly"] = {"method": "logical", "sites": ["a"], "databases": ["big"], "compression_level": 19,
                         "compression_threads": 1}
    w.policy()
    env = dict(os.environ, PGVAULT_POLICY=str(w.workdir / "policy.yaml"), PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "pgvault", "backup", "nightly"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        # Wait until the dump is being written (a temp file at the site), then kill -9 the group.
        # (Under backups/: the site marker and cluster.json are written through temp files too.)
        backups = site / "clusters/main/backups"
        sandbox.wait_until(lambda: (backups.is_dir() and any(".tmp-" in f.name for f in backups.rglob("*")))
                           or p.poll() is not None, 120, "the dump to start writing")
        assert p.poll() is None, "backup finished before it could be killed; make the data bigger"
        os.killpg(p.pid, signal.SIGKILL)
    finally:
        p.wait()
    assert json.loads(w.cli("list", "--json").stdout) == []
    # issue 12 item 6: debris is not damage (it was "DAMAGED", exit 1) and the message is true:
    # expire removes debris only once it is older than its grace (6 h), not "the next expire".
    cp = w.cli("verify", "--json", check=False)
    assert cp.returncode == 0, cp.stdout
    (report,) = json.loads(cp.stdout)
    assert report["debris"] and report["ok"], report
    assert report["problems"] == []
    out = w.cli("verify").stdout
    assert "DAMAGED" not in out and "debris (not damage)" in out, out
    assert "`pgvault expire` removes it once it is 6h old" in out
    assert w.cli("expire", "--dry-run").returncode == 0   # young debris: kept


def test_check_exit_codes(world):
    w = world
    w.local_site("a")
    w.jobs["nightly"] = {"method": "logical", "sites": ["a"]}
    w.policy()
    cp = w.cli("check")
    assert cp.returncode == 0
    assert cp.stdout.splitlines()[0].startswith("PGVAULT OK")
    # A site whose parent directory is gone: CRITICAL (2), named in the summary line.
    w.sites["gone"] = {"type": "local", "path": str(w.workdir / "no" / "such" / "dir")}
    w.policy()
    cp = w.cli("check", check=False)
    assert cp.returncode == 2
    first = cp.stdout.splitlines()[0]
    assert first.startswith("PGVAULT CRITICAL") and "does not exist" in first
    # The server down: CRITICAL too.
    del w.sites["gone"]
    w.policy()
    w.pg.stop()
    cp = w.cli("check", check=False)
    assert cp.returncode == 2
    assert "cannot connect" in cp.stdout
