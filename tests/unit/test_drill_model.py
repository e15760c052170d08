"""Drill definitions: every problem reported with its file and dotted path (pure, no I/O)."""
from __future__ import annotations

import pytest

from pgvault.drills.load import parse_drill
from pgvault.drills.model import AmcheckCheck, ReadAllCheck, RowCountsCheck, SqlCheck
from pgvault.policy.load import parse_policy

POLICY = parse_policy("""
version: 1
cluster: {name: main, conninfo: "host=/tmp"}
sites: {a: {type: local, path: /tmp/pgv-a}, b: {type: local, path: /tmp/pgv-b}, c: {type: local, path: /tmp/pgv-c}}
jobs:
  nightly: {method: logical, sites: [a, b]}
  base: {method: barman, sites: [a, c]}
""")

INVALID = [
    ("source: {job: nightly}\nfoo: 1", "foo", "unknown key"),
    ("source: {job: nope}", "source.job", "job 'nope' does not exist"),
    ("source: {site: a}", "source", "name a job or a method"),
    ("source: {method: tape}", "source.method", "Input should be"),
    ("source: {job: nightly, method: barman}", "source.method", "is a logical job, not barman"),
    ("source: {job: nightly, site: zz}", "source.site", "site 'zz' does not exist"),
    ("source: {job: nightly, site: c}", "source.site", "does not keep backups at site 'c'"),
    ("source: {job: nightly}\ntarget: tomorrow", "target", "unknown target 'tomorrow'"),
    ("source: {job: nightly}\ntarget: -1h", "target", "needs point-in-time recovery"),
    ("source: {job: nightly}\ntarget: canary", "target", "needs point-in-time recovery"),
    ("source: {job: base}\ntarget: -banana", "target", "not a duration"),
    ("source: {job: nightly}\nrto: soon", "rto", "not a duration"),
    ("source: {job: nightly}\nschedule: '61 * * * *'", "schedule", "invalid cron expression"),
    ("source: {job: nightly}\ncanary_rows: 0", "canary_rows", "must be >= 1 (got 0)"),
    ("source: {job: nightly}\nname: 'bad name!'", "name", "String should match pattern"),
    ("source: {job: nightly}\nchecks: [{foo: 1}]", "checks[0]", "exactly one of"),
    ("source: {job: nightly}\nchecks: [{sql: x, amcheck: true}]", "checks[0]", "exactly one of"),
    ("source: {job: nightly}\nchecks: [{sql: x, databse: app}]", "checks[0].databse", "unknown key"),
    ("source: {job: nightly}\nchecks: [{sql: x, expect: 1, expect_rows: [[1]]}]", "checks[0]", "not both"),
    ("source: {job: nightly}\nchecks: [{amcheck: false}]", "checks[0].amcheck", "Input should be True"),
    ("source: {job: nightly}\nchecks: [{sql: x, expect_rows: 5}]", "checks[0].expect_rows", "valid list"),
    ("- just a list", "(top level)", "must be a mapping"),
    ("source: {job: nightly\n", "(yaml", "not valid YAML"),
]


@pytest.mark.parametrize("text,path,fragment", INVALID, ids=[i[1] + ":" + i[2][:20] for i in INVALID])
def test_invalid_drill_is_reported_with_its_path(text, path, fragment):
    drill, problems = parse_drill(POLICY, text, "restore_drills/x.yaml", "x")
    assert drill is None
    assert any(p.startswith(f"restore_drills/x.yaml: {path}") and fragment in m for p, m, _ in problems), problems


def test_every_problem_is_reported_at_once():
    text = "source: {job: nope, site: zz}\ntarget: soon\nrto: x\nextra: 1\nchecks: [{foo: 1}]"
    _, problems = parse_drill(POLICY, text, "x.yaml", "x")
    assert {p for p, _, _ in problems} >= {"x.yaml: source.job", "x.yaml: source.site", "x.yaml: target",
                                           "x.yaml: rto", "x.yaml: extra", "x.yaml: checks[0]"}


def test_valid_drill_defaults():
    drill, problems = parse_drill(POLICY, "source: {job: base, site: c}\ntarget: -90m\nrto: 15m", "x.yaml", "pitr")
    assert problems == []
    assert drill.name == "pitr" and drill.target_kind == "offset" and drill.target_offset.total_seconds() == 5400
    assert drill.rto.total_seconds() == 900
    assert [type(c) for c in drill.checks] == [AmcheckCheck, ReadAllCheck, RowCountsCheck]


def test_checks_parse_to_their_kinds():
    text = """
source: {method: logical}
checks:
  - {sql: "SELECT 1", database: app, expect: 1, name: one}
  - {amcheck: true, heapallindexed: true}
  - {read_all: true, databases: [app]}
  - {row_counts: true}
"""
    drill, problems = parse_drill(POLICY, text, "x.yaml", "x")
    assert problems == []
    assert [type(c) for c in drill.checks] == [SqlCheck, AmcheckCheck, ReadAllCheck, RowCountsCheck]
    assert drill.checks[1].heapallindexed and drill.checks[2].databases == ["app"]


def test_example_drills_validate_against_the_example_policy():
    from pathlib import Path

    from pgvault.drills.load import load_drills
    from pgvault.policy.load import load_policy

    policy = load_policy(Path(__file__).resolve().parents[2] / "policies" / "example.yaml")
    names = {d.name for d in load_drills(policy)}
    assert {"logical-latest", "logical-random"} <= names


def test_pitr_example_drills_validate_against_the_example_policy():
    from pathlib import Path

    from pgvault.drills.load import parse_drill
    from pgvault.policy.load import load_policy

    root = Path(__file__).resolve().parents[2]
    policy = load_policy(root / "policies" / "example.yaml")
    files = sorted((root / "restore_drills" / "pitr").glob("*.yaml"))
    assert [f.stem for f in files] == ["canary", "pitr-hour-ago"]
    for f in files:
        drill, problems = parse_drill(policy, f.read_text(), f.name, f.stem)
        assert problems == [] and drill.source.method == "barman"


def test_a_drill_path_that_names_no_file_is_a_problem_a_glob_that_matches_nothing_is_not(tmp_path):
    from pgvault.drills.load import DrillDefinitionError, load_drills

    (tmp_path / "policy.yaml").write_text(
        "version: 1\ncluster: {name: main, conninfo: 'host=/tmp'}\nsites: {a: {type: local, path: /tmp/pgv-a}}\n"
        "jobs: {nightly: {method: logical, sites: [a]}}\ndrills: [none-yet/*.yaml, moved/latest.yaml]\n")
    from pgvault.policy.load import load_policy

    with pytest.raises(DrillDefinitionError) as e:
        load_drills(load_policy(tmp_path / "policy.yaml"))
    assert [p[0] for p in e.value.problems] == ["policy drills[1]"] and "moved/latest.yaml" in e.value.problems[0][1]
