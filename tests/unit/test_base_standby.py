"""What completes a base taken on a standby (pgvault.methods.base_standby), on real local sites:
the stop segment at every WAL site ends the wait; at some of them, a warning; at none, the error
names the segment, the standby's archive_mode and what to change. The whole route through a
standby is in tests/integration/test_base_backup.py (archive_mode = on) and test_ha.py (always)."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from pgvault.catalog import layout
from pgvault.errors import PgvaultError
from pgvault.methods import base_standby
from pgvault.policy.load import parse_policy

SEG = "000000030000000000000007"


@pytest.fixture
def policy(tmp_path):
    text = f"""version: 1
cluster: {{name: main, conninfo: "host=/nonexistent port=1 user=postgres"}}
sites:
  a: {{type: local, path: {tmp_path / 'a'}}}
  b: {{type: local, path: {tmp_path / 'b'}}}
wal: {{sites: [a, b]}}
jobs:
  base: {{method: barman, from: standby, sites: [a]}}
"""
    return parse_policy(text, "p.yaml")


def plant(policy, site: str) -> None:
    path = Path(policy.sites[site].path) / layout.wal_key("main", SEG, ".gz")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def test_the_stop_segment_at_every_wal_site_ends_the_wait(policy):
    plant(policy, "a")
    plant(policy, "b")
    assert base_standby.wait_archived(policy, SEG, archive_mode="always", switched=True, timeout=30) == {"a", "b"}


def test_at_some_sites_only_the_base_completes_with_a_warning(policy, caplog):
    plant(policy, "b")
    with caplog.at_level(logging.WARNING, "pgvault.basebackup"):
        assert base_standby.wait_archived(policy, SEG, archive_mode="on", switched=True, timeout=0.2) == {"b"}
    assert f"{SEG} is at b only" in caplog.text and "not yet at a" in caplog.text


def test_at_no_site_the_error_says_why_and_what_to_change(policy):
    with pytest.raises(PgvaultError) as info:
        base_standby.wait_archived(policy, SEG, archive_mode="on", switched=False, timeout=0.2)
    e = info.value
    assert "not consistent from the archive" in e.message and SEG in e.message and "archive_mode = on" in e.message
    assert "no pg_switch_wal() ran" in e.message
    assert "archive_mode = always" in e.hint and "pg_switch_wal" in e.hint


def test_a_standby_base_without_wal_sites_is_refused_before_it_starts(policy):
    bare = policy.model_copy(update={"wal": policy.wal.model_copy(update={"sites": []})})
    standby, primary = SimpleNamespace(in_recovery=True), SimpleNamespace(in_recovery=False)
    assert "needs WAL archiving" in base_standby.preflight(bare, standby)[0]
    assert base_standby.preflight(bare, primary) == [] and base_standby.preflight(policy, standby) == []


def test_no_primary_to_switch_on_is_a_warning_not_a_failure(policy, caplog):
    with caplog.at_level(logging.WARNING, "pgvault.basebackup"):
        assert base_standby.close_on_primary(policy, "0/7000100", 16 << 20) is False
    assert "could not switch WAL on the primary" in caplog.text
