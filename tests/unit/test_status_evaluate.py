"""The pure core of status: evaluation of synthetic facts against policies, the textfile
format, notify's env expansion and transitions, and the modules' doctest examples."""
from __future__ import annotations

import doctest
import importlib
from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgvault.policy.load import parse_policy
from pgvault.status.evaluate import evaluate
from pgvault.status.prometheus import render

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
SEG = 16 << 20


@pytest.mark.parametrize("module", ["pgvault.status.cron", "pgvault.status.evaluate",
                                    "pgvault.status.prometheus", "pgvault.notify",
                                    "pgvault.cli.progress", "pgvault.cli.check"])
def test_doctests(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


def policy(**extra):
    doc = {"version": 1, "cluster": {"name": "main", "conninfo": "host=/tmp"},
           "sites": {"a": {"type": "local", "path": "/srv/a"}, "b": {"type": "local", "path": "/srv/b"}},
           "wal": {"sites": ["a", "b"]},
           "jobs": {"nightly": {"method": "logical", "sites": ["a"], "schedule": "0 2 * * *"}},
           "objectives": {"rpo": "5m", "rto": "30m"}}
    doc.update(extra)
    import yaml

    return parse_policy(yaml.safe_dump(doc))


def iso(t: datetime) -> str:
    return t.isoformat()


def facts(*, reachable=True, lsn="0/6000100", wal_a=None, wal_b=None, drills=None, last=NOW - timedelta(hours=10)):
    def wal(newest, at, gaps=(), oldest="000000010000000000000001"):
        return {"count": 5, "newest": newest, "newest_time": iso(at), "oldest": oldest, "required_from": "000000010000000000000001",
                "timelines": [1], "gaps": list(gaps), "gap_count": len(gaps)}

    cluster = ({"reachable": True, "timeline": 1, "current_lsn": lsn, "wal_segment_size": SEG, "archive_mode": "on",
                "archiver": {"last_archived_time": iso(NOW), "last_failed_time": None}} if reachable
               else {"reachable": False, "error": "connection refused", "hint": "is it running?"})
    return {"cluster_name": "main", "collected_at": iso(NOW), "wal_segment_size": SEG, "cluster": cluster,
            "sites": {"a": {"reachable": True, "describe": "local:/srv/a", "bound_at": iso(NOW - timedelta(days=9)),
                            "backups": {"nightly": {"count": 3, "total_size": 300, "last": {
                                "backup_id": "x", "started_at": iso(last), "finished_at": iso(last), "size": 100}}},
                            "wal": wal_a or wal("000000010000000000000006", NOW - timedelta(seconds=20))},
                      "b": {"reachable": True, "describe": "local:/srv/b", "bound_at": None, "backups": {},
                            "wal": wal_b or wal("000000010000000000000006", NOW - timedelta(seconds=20))}},
            "drills": drills or {}}


def states(doc, group):
    return {(i["name"], i["site"]): i["state"] for i in doc[group]}


def test_healthy_facts_are_ok():
    doc = evaluate(policy(), facts(), NOW)
    assert doc["state"] == "OK", doc["summary"]
    assert one_wal(doc, "a")["lag_segments"] == 0 and one_wal(doc, "a")["lag_seconds"] == 0.0


def one_wal(doc, site):
    return next(w for w in doc["wal"] if w["site"] == site)


def test_wal_lag_against_rpo_thresholds():
    # Site b's newest segment is 4 minutes old and 3 segments behind: beyond half the RPO.
    f = facts(wal_b=None)
    f["sites"]["b"]["wal"].update(newest="000000010000000000000003", newest_time=iso(NOW - timedelta(minutes=4)))
    doc = evaluate(policy(), f, NOW)
    b = one_wal(doc, "b")
    assert (b["state"], b["lag_segments"], b["lag_seconds"]) == ("WARNING", 3, 240.0)
    f["sites"]["b"]["wal"]["newest_time"] = iso(NOW - timedelta(minutes=6))
    doc = evaluate(policy(), f, NOW)
    assert one_wal(doc, "b")["state"] == "CRITICAL" and "RPO 5m" in one_wal(doc, "b")["message"]
    # The RPO objective is judged on the best recovery point: site a (a base and all WAL) meets it.
    assert next(o for o in doc["objective_checks"] if o["name"] == "rpo")["state"] == "OK"


def test_monitoring_overrides_wal_thresholds():
    f = facts()
    f["sites"]["b"]["wal"]["newest_time"] = iso(NOW - timedelta(minutes=20))
    f["cluster"]["current_lsn"] = "0/7000100"
    p = policy(monitoring={"wal_warn_lag": "30m", "wal_crit_lag": "2h"})
    assert one_wal(evaluate(p, f, NOW), "b")["state"] == "OK"
    p = policy(objectives={}, monitoring={"wal_crit_segments": 1})
    assert one_wal(evaluate(p, f, NOW), "b")["state"] == "CRITICAL"


def test_gaps_are_critical():
    f = facts()
    f["sites"]["a"]["wal"].update(gaps=["000000010000000000000003"], gap_count=1)
    doc = evaluate(policy(), f, NOW)
    assert one_wal(doc, "a")["state"] == "CRITICAL" and "missing segment" in doc["summary"]


def test_unreachable_cluster_is_critical_and_lag_unknown():
    doc = evaluate(policy(), facts(reachable=False), NOW)
    assert doc["state"] == "CRITICAL"
    assert one_wal(doc, "a")["state"] == "UNKNOWN" and one_wal(doc, "a")["lag_segments"] is None
    assert doc["summary"].startswith("PGVAULT CRITICAL - cluster main: cluster unreachable")


def drill(outcome="passed", rto=60.0, rpo=10.0, age=timedelta(hours=1)):
    t = iso(NOW - age)
    return {"drill": "d1", "id": "d1-x", "site": "a", "started_at": t, "finished_at": t, "when": t,
            "outcome": outcome, "rto_seconds": rto, "rpo_seconds": rpo, "message": "m"}


@pytest.mark.parametrize("d, state, words", [
    (drill(), "OK", "passed"),
    (drill(outcome="failed"), "CRITICAL", "outcome failed: m"),
    (drill(rto=3600.0), "CRITICAL", "RTO 1h beyond objective 30m"),
    (drill(rpo=600.0), "WARNING", "RPO 10m beyond objective 5m"),
    (drill(age=timedelta(days=9)), "WARNING", "older than 8d"),
])
def test_drill_judgement(d, state, words):
    doc = evaluate(policy(), facts(drills={"d1@a": d}), NOW)
    (item,) = doc["drills"]
    assert item["state"] == state and words in item["message"]


def test_configured_drills_without_evidence_warn():
    doc = evaluate(policy(drills=["drills/*.yaml"]), facts(), NOW)
    assert [i["state"] for i in doc["drills"]] == ["WARNING"]


def test_textfile_parses_and_escapes_labels():
    p = policy(jobs={'we"ird\\job': {"method": "logical", "sites": ["a"], "schedule": "0 2 * * *"}})
    f = facts(drills={"d1@a": drill()})
    f["sites"]["a"]["backups"] = {'we"ird\\job': f["sites"]["a"]["backups"]["nightly"]}
    doc = evaluate(p, f, NOW)
    doc["facts"] = f
    fams = {m.name: m for m in text_string_to_metric_families(render(doc))}
    (sample,) = fams["pgvault_backup_count"].samples
    assert sample.labels == {"cluster": "main", "job": 'we"ird\\job', "site": "a"} and sample.value == 3
    assert fams["pgvault_drill_rto_seconds"].samples[0].value == 60.0
    assert fams["pgvault_backup_last_success_timestamp_seconds"].samples[0].value == (NOW - timedelta(hours=10)).timestamp()


def test_a_failed_run_recorded_by_the_engine_warns_until_a_success():
    f = facts()
    f["runs"] = {"nightly": {"outcome": "failed", "started_at": iso(NOW - timedelta(hours=1)), "finished_at": None,
                             "message": "pg_dump exited with code 1", "running": False}}
    (job,) = evaluate(policy(), f, NOW)["jobs"]
    assert job["state"] == "WARNING" and "last run failed" in job["message"] and "pg_dump" in job["message"]
    # A later success at the site supersedes the failure.
    f["runs"]["nightly"]["started_at"] = iso(NOW - timedelta(hours=11))
    (job,) = evaluate(policy(), f, NOW)["jobs"]
    assert job["state"] == "OK"
