"""The HA parts of a policy (cluster.patroni, jobs.<job>.from): strict, errors at their dotted
paths; and the pure routing that a job's `from:` becomes without Patroni."""
from __future__ import annotations

import pytest

from pgvault.errors import PolicyError
from pgvault.patroni import session_conninfo
from pgvault.policy.load import parse_policy
from tests.unit.test_policy import BASE

HA = BASE.replace('cluster: {name: main, conninfo: "host=/tmp port=5432 user=postgres"}',
                  'cluster: {name: main, conninfo: "host=db1,db2 port=5432,5432 user=postgres", '
                  'patroni: {url: "http://127.0.0.1:8008"}}')


def problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml")
    return [(p, m) for p, m, _h in info.value.problems]


def test_from_and_patroni_parse():
    p = parse_policy(HA + "jobs:\n  d: {method: logical, sites: [local], from: prefer-standby}\n", "p.yaml")
    assert p.jobs["d"].from_ == "prefer-standby" and p.jobs["d"].model_dump(by_alias=True)["from"] == "prefer-standby"
    assert p.cluster.patroni.url == "http://127.0.0.1:8008" and p.cluster.patroni.timeout.total_seconds() == 5


def test_bad_from_and_patroni_are_named_at_their_paths():
    found = problems(HA.replace('url: "http://127.0.0.1:8008"', 'url: "ftp://x", port: 8008')
                     + "jobs:\n  d: {method: logical, sites: [local], from: replica}\n")
    paths = {p for p, _m in found}
    assert {"jobs.d.from", "cluster.patroni.url", "cluster.patroni.port"} <= paths, found


def test_target_session_attrs_without_patroni():
    multi = "host=db1,db2 port=5432,5433 user=postgres"
    assert "target_session_attrs=read-write" in session_conninfo(multi, "primary")
    assert "target_session_attrs=standby" in session_conninfo(multi, "standby")
    assert "target_session_attrs=prefer-standby" in session_conninfo(multi, "prefer-standby")
    single = "host=/tmp port=5432 user=postgres"
    assert session_conninfo(single, "primary") == single  # as written
    assert session_conninfo(multi + " target_session_attrs=primary", "primary").endswith("target_session_attrs=primary")
