"""Reports from synthetic results (pure): JUnit structure, escaping, Markdown, evidence JSON."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone

from pgvault.drills.checks import CheckResult
from pgvault.drills.reports import junit_xml, markdown, result_doc, write_reports
from pgvault.drills.runner import DrillResult
from pgvault.drills.scratch import Teardown

T0 = datetime(2026, 11, 25, 22, 15, 30, tzinfo=timezone.utc)


def results():
    ok = DrillResult("nightly", "a", "logical", "latest", T0, T0 + timedelta(seconds=5), ok=True,
                     backup_id="20261125T020000Z", restored="logical backup 20261125T020000Z",
                     rto_seconds=4.5, rto_budget_seconds=1800,
                     checks=[CheckResult("amcheck", "amcheck", "passed", "amcheck: 12 B-tree index(es) intact")],
                     teardown=Teardown(True, "stopped and removed /tmp/x"))
    bad = DrillResult("nightly", "eu", "logical", "latest", T0, T0 + timedelta(seconds=3), ok=False,
                      failure="1 check(s) failed: 'orders' <app> & co: expected 5, got 4 \x1b[0m",
                      checks=[CheckResult("sql", "orders", "failed", "expected 5, got 4")],
                      teardown=Teardown(True, "stopped and removed /tmp/y"))
    return [ok, bad]


def test_junit_has_one_case_per_drill_and_site_and_failures_carry_the_message():
    root = ET.fromstring(junit_xml(results()))
    suite = root.find("testsuite")
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {"nightly @ a", "nightly @ eu"}
    assert cases["nightly @ a"].find("failure") is None
    f = cases["nightly @ eu"].find("failure")
    assert f.get("message").startswith("1 check(s) failed: 'orders' <app> & co: expected 5, got 4")
    assert "[FAILED] expected 5, got 4" in f.text


def test_markdown_and_json_reports(tmp_path):
    md = markdown(results())
    assert "**1 of 2 passed**" in md and "| nightly | eu |" in md and "**FAIL**" in md
    paths = write_reports(results(), tmp_path / "out", cluster="main")
    doc = json.loads(paths["json"].read_text())
    assert (doc["passed"], doc["failed"]) == (1, 1)
    first = doc["results"][0]
    assert first["drill_id"] == "20261125T221530Z-nightly" and first["outcome"] == "passed"
    assert first["cluster"] == "main" and first["rto_budget_seconds"] == 1800
    ET.parse(paths["junit"])  # well-formed despite the control character


def test_evidence_carries_no_conninfo():
    doc = result_doc(results()[0], "main")
    text = json.dumps(doc)
    assert "host=" not in text and "password" not in text
    assert doc["message"].startswith("restored logical backup")
