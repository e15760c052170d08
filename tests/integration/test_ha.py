"""pgvault in a real Patroni cluster (etcd + 3 PostgreSQL 15 nodes, pgvault.sandbox.ha): one
module-scoped cluster, the scenarios in an order where each leaves the cluster healthy for the
next (switchover, then kill -9, then the zombie last)."""
from __future__ import annotations

import json

import pytest

from tests.conftest import ha_world


@pytest.fixture(scope="module")
def hw(moto):
    with ha_world(moto) as w:
        w.start()
        yield w


def test_cluster_forms_and_archives(hw):
    leader = hw.ha.leader()
    assert leader and len(hw.ha.replicas()) == 2
    hw.ha.psql("CREATE TABLE t(i int, at timestamptz DEFAULT now()); INSERT INTO t SELECT 1; SELECT pg_switch_wal()")
    hw.ha.wait_streaming()
    out = json.loads(hw.cli("wal-status", "--json").stdout)
    print(out)
