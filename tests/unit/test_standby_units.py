"""method: standby, the pure parts: the policy's rules (every problem with its dotted path), how
status judges a standby's facts, and the doctest examples of its modules."""
from __future__ import annotations

import doctest
import importlib

import pytest
import yaml

from pgvault.errors import PolicyError
from pgvault.policy.load import parse_policy
from pgvault.status.evaluate import standby_items

BASE = {"version": 1, "cluster": {"name": "main", "conninfo": "host=/tmp"},
        "sites": {"a": {"type": "local", "path": "/srv/a"}}}


@pytest.mark.parametrize("module", ["pgvault.methods.standby_build", "pgvault.restore.standby",
                                    "pgvault.policy.model"])
def test_doctests(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


def policy(**job):
    doc = dict(BASE, jobs={"undo": {"method": "standby", "conninfo": "host=/s port=5433 user=postgres", "delay": "1h",
                                    **job}})
    return parse_policy(yaml.safe_dump(doc))


def test_a_standby_job_is_strict_and_says_every_problem_at_once():
    assert policy().jobs["undo"].slot_name("undo") == "pgvault_undo"
    with pytest.raises(PolicyError) as exc:
        policy(schedule="0 * * * *", sites=["a"], delay="0s", conninfo="host=/s password=x", wal_source="tape",
               bogus=1)
    text = exc.value.render()
    for where in ("jobs.undo.schedule", "jobs.undo.sites", "jobs.undo.delay", "jobs.undo.conninfo",
                  "jobs.undo.wal_source", "jobs.undo.bogus"):
        assert where in text, text
    assert "Traceback" not in text


def facts(**over):
    f = {"reachable": True, "in_recovery": True, "pause_state": "not paused", "paused": False,
         "replay_lsn": "0/5000000", "receive_lsn": "0/5000100", "last_replayed_commit": "2026-11-25T11:00:00+00:00",
         "checked_at": "2026-11-25T12:00:05+00:00", "delay_seconds": 3605.0, "apply_delay_seconds": 3600.0,
         "archive_mode": "off", "receiver": "streaming", "lsn_lag_bytes": 256, "window": {},
         "promised_seconds": 3600.0, "wal_source": "slot", "patroni_member": None}
    f.update(over)
    return {"standbys": {"undo": f}}


@pytest.mark.parametrize("over, state, words", [
    ({}, "OK", "delay 1h5s (promised 1h)"),
    ({"delay_seconds": 20000.0}, "OK", "delay 5h33m20s"),              # an idle primary: more delay is harmless
    ({"delay_seconds": None}, "OK", "delay -"),                        # nothing applied since it started
    ({"receiver": None}, "OK", "WAL receiver not running"),            # replaying what it holds after a restart
    ({"paused": True, "pause_state": "paused"}, "CRITICAL", "no longer follows the primary"),
    ({"paused": True, "pause_state": "pause requested"}, "CRITICAL", "replay pause requested"),
    ({"in_recovery": False, "pause_state": None}, "CRITICAL", "promoted"),
    ({"apply_delay_seconds": 60.0}, "CRITICAL", "recovery_min_apply_delay 1m is below the promised 1h"),
    ({"delay_seconds": 1800.0}, "CRITICAL", "sooner than the promised 1h"),
    ({"archive_mode": "always"}, "CRITICAL", "must never archive"),
    ({"reachable": False, "error": "connection refused", "hint": None}, "CRITICAL", "unreachable: connection refused"),
])
def test_status_judges_a_standby_against_its_promise(over, state, words):
    (item,) = standby_items(None, facts(**over))
    assert (item["kind"], item["name"], item["state"]) == ("standby", "undo", state)
    assert words in item["message"], item["message"]


def test_prometheus_metrics_of_a_standby():
    from prometheus_client.parser import text_string_to_metric_families

    from pgvault.status.prometheus import render

    f = facts(paused=True, pause_state="paused")
    items = standby_items(None, f)
    doc = {"cluster": "main", "code": 2, "collected_at": "2026-11-25T12:00:05+00:00",
           "facts": {"cluster": {"reachable": True}, "sites": {}, **f}, "infrastructure": [], "jobs": [],
           "standbys": items, "wal": [], "drills": [], "objective_checks": []}
    got = {(s.name, s.labels.get("standby", s.labels.get("name"))): s.value
           for fam in text_string_to_metric_families(render(doc)) for s in fam.samples}
    assert got[("pgvault_standby_up", "undo")] == 1 and got[("pgvault_standby_paused", "undo")] == 1
    assert got[("pgvault_standby_delay_seconds", "undo")] == 3605
    assert got[("pgvault_standby_promised_delay_seconds", "undo")] == 3600
    assert got[("pgvault_standby_lsn_lag_bytes", "undo")] == 256
    assert got[("pgvault_item_state", "undo")] == 2
