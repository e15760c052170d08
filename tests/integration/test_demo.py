"""The README's first command: `pgvault demo` runs end to end and every step does what it
should. Its drill reports are kept in out/drills/, as CI keeps them."""
from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

from ..conftest import ROOT


def test_demo_runs_end_to_end_and_keeps_drill_reports():
    reports = ROOT / "out" / "drills"
    cp = subprocess.run([sys.executable, "-m", "pgvault", "demo", "--report-dir", str(reports)],
                        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=1500)
    assert cp.returncode == 0, cp.stdout[-6000:] + cp.stderr[-3000:]
    assert "demo completed: every step did what it should" in cp.stdout
    # The accident was undone: the copy-back restored the rows the TRUNCATE removed.
    assert "shop.orders after the copy-back" in cp.stdout
    suite = ET.parse(reports / "junit.xml").getroot()
    cases = suite.findall(".//testcase")
    assert cases and not suite.findall(".//failure") and not suite.findall(".//error")
    names = " ".join(c.get("name", "") + c.get("classname", "") for c in cases)
    assert "canary" in names and "logical-latest" in names
    assert (reports / "report.json").exists() and (reports / "report.md").exists()
    # Nothing of the sandbox is left running.
    assert "pgvault-demo-" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
