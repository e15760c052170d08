"""`pgvault lab`: the quick lab (what CI runs) passes every scenario and writes its reports;
with the test-only broken wal-push the lab FAILS and names the lost ledger rows; the proxy's
faults do what the scenarios rely on."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET

import pytest

from pgvault.sandbox.proxy import Proxy

from ..conftest import ROOT


def lab(*args, env=None):
    return subprocess.run([sys.executable, "-m", "pgvault", "lab", *args], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})), timeout=900)


def nothing_left(stdout: str) -> None:
    """This run's world (named on the lab's first line) is gone: no process, mount or file."""
    import re

    base = re.search(r"lab world in (\S+) ", stdout).group(1)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    mounts = open("/proc/mounts").read()
    assert base not in ps and base not in mounts and not os.path.exists(base)


def test_quick_lab_passes_every_scenario_and_keeps_its_reports():
    reports = ROOT / "out" / "lab"   # CI keeps them, as it keeps the demo's drill reports
    cp = lab("run", "--quick", "--report-dir", str(reports))
    assert cp.returncode == 0, cp.stdout[-8000:] + cp.stderr[-3000:]
    doc = json.loads((reports / "lab.json").read_text())
    verdicts = {r["name"]: r["verdict"] for r in doc["scenarios"]}
    assert verdicts == {"partition-eu": "passed", "host-lost": "passed"}
    by = {r["name"]: r for r in doc["scenarios"]}
    # Timings: time to detect the partition, RTO of the new host, RPO of the loss.
    assert by["partition-eu"]["timings"]["detect_seconds"] is not None
    assert by["host-lost"]["timings"]["rto_seconds"] > 0 and by["host-lost"]["timings"]["rpo_seconds"] is not None
    # The criterion ran after the surviving scenario: archive, verify, windows, a ledger restore.
    for name in ("partition-eu",):
        names = [c["name"] for c in by[name]["checks"]]
        assert "nothing reported archived is missing" in names and "every backup verifies" in names
        assert "every base site's window is unbroken" in names
        assert any(n.startswith("restore to ") for n in names), names
    exact = next(c for c in by["host-lost"]["checks"] if c["name"].startswith("exactly the ledger"))
    assert exact["ok"] and exact["evidence"]["missing"] == [] and exact["evidence"]["extra"] == []
    suite = ET.parse(reports / "junit.xml").getroot().find("testsuite")
    assert {c.get("name") for c in suite.findall("testcase")} == set(verdicts)
    assert not suite.findall(".//failure") and not suite.findall(".//skipped")
    page = (reports / "lab.html").read_text()
    assert page.count("data-verdict='passed'") == 2
    nothing_left(cp.stdout)


def test_a_wal_push_that_stores_nothing_fails_the_lab_naming_the_lost_rows(tmp_path):
    cp = lab("run", "--quick", "steady", "--report-dir", str(tmp_path), env={"PGVAULT_TEST_LOSE_WAL": "1"})
    assert cp.returncode == 1, cp.stdout[-6000:] + cp.stderr[-3000:]
    doc = json.loads((tmp_path / "lab.json").read_text())
    (steady,) = doc["scenarios"]
    assert steady["verdict"] == "failed" and doc["passed"] is False
    checks = {c["name"]: c for c in steady["checks"]}
    archive = checks["nothing reported archived is missing"]
    assert not archive["ok"] and archive["evidence"]["lost"], archive
    assert "LOST (reported archived, at no site)" in archive["detail"]
    assert not checks["every base site's window is unbroken"]["ok"]
    restore = next(c for n, c in checks.items() if n.startswith("restore to "))
    assert not restore["ok"] and restore["evidence"]["lost"], restore
    assert "rows (ids" in restore["detail"]
    # The report names them too.
    failure = ET.parse(tmp_path / "junit.xml").getroot().find(".//failure")
    assert "rows (ids" in failure.text and "LOST" in failure.text
    assert "FAIL restore to" in cp.stdout
    nothing_left(cp.stdout)


def _echo_one(c: socket.socket) -> None:
    try:
        for data in iter(lambda: c.recv(4096), b""):
            c.sendall(data)
    except OSError:
        pass   # the proxy reset it (cut)
    finally:
        c.close()


@pytest.fixture
def echo():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=_echo_one, args=(c,), daemon=True).start()
    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()
    srv.close()


def _ask(port: int, data: bytes = b"ping", timeout: float = 1.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return s.recv(4096)


def test_proxy_relays_delays_black_holes_and_cuts(echo):
    p = Proxy(echo).start()
    try:
        assert _ask(p.port) == b"ping"
        p.latency(0.01)
        assert _ask(p.port, b"slow") == b"slow"
        held = socket.create_connection(("127.0.0.1", p.port), timeout=2)
        assert _ask(p.port, b"x") == b"x"      # the accept loop has taken `held` as a clean relay
        p.black_hole()
        with pytest.raises(socket.timeout):
            _ask(p.port, timeout=0.5)          # accepted, never answered: the caller times out
        p.heal()
        held.sendall(b"a")                      # bytes sent on an open connection flow again
        assert held.recv(10) == b"a"
        p.cut()                                 # open connections reset, new ones refused
        with pytest.raises(OSError):
            held.sendall(b"b")
            if not held.recv(10):
                raise ConnectionResetError("closed")
        with pytest.raises(OSError):
            if not _ask(p.port):
                raise ConnectionResetError("closed")
        p.heal()
        assert _ask(p.port) == b"ping"
    finally:
        p.stop()
