"""The lab's pure parts: its reports (a scenario not available is skipped, never passed; a
failure lists the checks that failed), the seeded soak schedule, and the doctests."""
from __future__ import annotations

import doctest
import json
import xml.etree.ElementTree as ET

from pgvault.sandbox.lab import checks, report, run
from pgvault.sandbox.lab.checks import Check
from pgvault.sandbox.lab.run import Result


def _doc():
    rs = [Result("partition-eu", "a partition", "passed", "2026-12-03T00:00:00+00:00", 12.0,
                 [Check("every backup verifies", True, "ok")], {"detect_seconds": 4.0}),
          Result("truncate", "a truncate", "failed", "2026-12-03T00:01:00+00:00", 20.0,
                 [Check("every row is back", False, "700:245350 -> 0"), Check("verify", True, "ok")],
                 {"rto_seconds": 9.5}),
          Result("failover", "a failover", "not available", "2026-12-03T00:02:00+00:00", 0.0,
                 notes=["needs the HA harness"])]
    return report.document(rs, seed=None, soak_minutes=None, seconds=40.0, interrupted=False, commands=[],
                           notes=[], ledger_errors=[])


def test_verdicts_in_every_report():
    doc = _doc()
    assert doc["passed"] is False and doc["counts"] == {"passed": 1, "failed": 1, "not available": 1}
    suite = ET.fromstring(report.junit_xml(doc)).find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert cases["truncate"].find("failure").get("message") == "every row is back"
    assert "700:245350 -> 0" in cases["truncate"].find("failure").text
    assert "not available" in cases["failover"].find("skipped").get("message")
    assert cases["partition-eu"].find("failure") is None and cases["partition-eu"].find("skipped") is None
    page = report.render_html(doc)
    assert "data-verdict='not available'" in page and "data-verdict='failed'" in page
    assert json.loads(json.dumps(doc, default=str))["scenarios"][1]["checks"][0]["ok"] is False
    text = report.summary(doc)
    assert "FAILED" in text.splitlines()[0] and "FAIL every row is back" in text


def test_only_not_available_is_not_a_pass():
    rs = [Result("failover", "a failover", "not available", "t", 0.0)]
    doc = report.document(rs, seed=None, soak_minutes=None, seconds=1.0, interrupted=False, commands=[],
                          notes=[], ledger_errors=[])
    assert doc["passed"] is False


def test_soak_schedule_is_the_seed_alone():
    assert run.soak_schedule(42) == run.soak_schedule(42)
    assert run.soak_schedule(42) != run.soak_schedule(43)
    assert "host-lost" not in run.soak_schedule(42)


def test_doctests():
    for module in (checks, run):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0
