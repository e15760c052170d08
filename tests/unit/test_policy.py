"""Malformed policies -> every problem listed with its dotted path; the CLI exits 2, no traceback."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pgvault.errors import PolicyError
from pgvault.policy.load import parse_policy

ROOT = Path(__file__).resolve().parents[2]

BASE = """
version: 1
cluster: {name: main, conninfo: "host=/tmp port=5432 user=postgres"}
sites:
  local: {type: local, path: /var/backups/pgvault}
  eu: {type: s3, bucket: acme-pg-eu, region: eu-west-1, prefix: prod}
"""

CASES = [
    # (policy text appended to BASE, expected (path, message fragment) pairs)
    ("jobs:\n  n: {method: logical, sites: [local], schedule: '61 * * * *'}",
     [("jobs.n.schedule", "invalid cron expression '61 * * * *'")]),
    ("jobs:\n  n: {method: logical, sites: [local, nowhere]}",
     [("jobs.n.sites[1]", "site 'nowhere' does not exist")]),
    ("jobs:\n  n: {method: logical, sites: [local], retain: {daily: -3}}",
     [("jobs.n.retain.daily", "must be >= 0")]),
    ("jobs:\n  n: {method: logical, sites: [local], retain: {max_age: soon}}",
     [("jobs.n.retain.max_age", "not a duration")]),
    ("jobs:\n  n: {method: logical, sites: [local], colour: blue}",
     [("jobs.n.colour", "unknown key")]),
    ("jobs:\n  n: {method: tape, sites: [local]}",
     [("jobs.n.method", "unknown value 'tape'")]),
    # issue 12 item 4: a wrong or missing discriminator is named at its own key, not the parent's
    ("  l: {type: ftp, path: /x}\n",
     [("sites.l.type", "unknown value 'ftp'")]),
    ("  k: {path: /x}\n",
     [("sites.k.type", "required key is missing")]),
    ("jobs:\n  n: {sites: [local]}",
     [("jobs.n.method", "required key is missing")]),
    ("jobs:\n  n: {method: zfs}",
     [("jobs.n.datasets", "required key is missing")]),
    ("jobs:\n  n: {method: logical}",
     [("jobs.n.sites", "needs at least one site")]),
    ("wal: {sites: [local, mars]}",
     [("wal.sites[1]", "site 'mars' does not exist")]),
    ("wal: {sites: [local], sync_sites: 2}",
     [("wal.sync_sites", "between 1 and the number of wal.sites (1)")]),
    ("wal: {sites: [local], sync_sites: some}",
     [("wal.sync_sites", "must be 'all' or a number of sites")]),
    ("objectives: {rpo: -5m}",
     [("objectives.rpo", "cannot be negative")]),
]


@pytest.mark.parametrize("extra,expected", CASES)
def test_malformed_policy_lists_problem_with_path(extra, expected):
    with pytest.raises(PolicyError) as info:
        parse_policy(BASE + extra, "p.yaml")
    problems = [(p, m) for p, m, _h in info.value.problems]
    for path, fragment in expected:
        assert any(p == path and fragment in m for p, m in problems), problems


def test_every_problem_is_reported_at_once():
    text = textwrap.dedent("""
        version: 1
        cluster: {name: main, conninfo: "host=/tmp password=hunter2"}
        sites:
          a: {type: local, path: /srv/a}
          b: {type: local, path: /srv/a/nested}
          c: {type: s3, bucket: same, prefix: x}
          d: {type: s3, bucket: same, prefix: x}
        jobs:
          one: {method: logical, sites: [a, zz], schedule: "* * *"}
          two: {method: barman, sites: [c], compression: rar}
        """)
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml")
    paths = {p for p, _m, _h in info.value.problems}
    assert {"cluster.conninfo", "sites.b.path", "sites.d.prefix", "jobs.one.sites[1]", "jobs.one.schedule",
            "jobs.two.compression"} <= paths
    # The password itself never appears in the message.
    assert "hunter2" not in info.value.render()


def test_not_yaml_and_not_a_mapping():
    with pytest.raises(PolicyError) as info:
        parse_policy("version: [1\n", "p.yaml")
    assert "not valid YAML" in info.value.problems[0][1]
    with pytest.raises(PolicyError):
        parse_policy("- just\n- a list\n", "p.yaml")


def test_valid_policy_parses_with_defaults():
    p = parse_policy(BASE + "jobs:\n  n: {method: logical, sites: [local, eu], schedule: '0 2 * * *', retain: {daily: 7}}\n")
    assert p.jobs["n"].retain.daily == 7
    assert p.jobs["n"].retain.min_keep == 1
    assert p.sites["eu"].url() == "s3://acme-pg-eu/prod"


def test_cli_check_on_invalid_policy_exits_2_without_traceback(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(BASE + "jobs:\n  n: {method: logical, sites: [nope], schedule: 'x'}\n")
    cp = subprocess.run([sys.executable, "-m", "pgvault", "check", "--policy", str(f)], capture_output=True,
                        text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert cp.returncode == 2
    assert "Traceback" not in cp.stderr
    assert "jobs.n.sites[0]: site 'nope' does not exist" in cp.stderr
    assert "jobs.n.schedule: invalid cron expression 'x'" in cp.stderr


def test_binary_policy_file_is_bad_input_not_a_bug(tmp_path):
    # issue 12 item 3: read_text() raised UnicodeDecodeError -> exit 70
    f = tmp_path / "b.yaml"
    f.write_bytes(b"\xff\xfe\x00\x01 binary \x80\n")
    cp = subprocess.run([sys.executable, "-m", "pgvault", "check", "--policy", str(f)], capture_output=True,
                        text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert cp.returncode == 2, cp.stderr
    assert "Traceback" not in cp.stderr and "internal error" not in cp.stderr
    assert f"invalid policy {f}" in cp.stderr and "not UTF-8 text" in cp.stderr


def test_cli_without_policy_says_how_to_give_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PGVAULT_POLICY"}
    cp = subprocess.run([sys.executable, "-m", "pgvault", "list"], capture_output=True, text=True,
                        env=dict(env, PYTHONPATH=str(ROOT)), cwd=tmp_path)
    if Path("/etc/pgvault/policy.yaml").exists():
        return
    assert cp.returncode == 2
    assert "HINT: pass --policy FILE or set PGVAULT_POLICY" in cp.stderr
