"""The example policies in policies/ stay valid."""
from pathlib import Path

import pytest

from pgvault.policy.load import parse_policy

POLICIES = sorted((Path(__file__).resolve().parents[2] / "policies").glob("*.yaml"))


@pytest.mark.parametrize("path", POLICIES, ids=[p.name for p in POLICIES])
def test_example_policy_is_valid(path):
    policy = parse_policy(path.read_text(), str(path))
    assert policy.jobs, "an example policy should show at least one job"
