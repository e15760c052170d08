"""The Method contract (pgvault/methods/base.py) and its one registry (pgvault.methods.METHODS):
every registered method satisfies the contract, every other list of methods agrees with the
registry, and a method registered in-process — a toy defined in this file, no other file
touched — is scheduled by the tick and checked by `pgvault check`."""
from __future__ import annotations

import inspect
import sys
import types
from typing import Literal, get_args

import pytest

from pgvault import checks, methods
from pgvault.drills import model as drill_model
from pgvault.drills.sources import ADAPTERS, adapter_for
from pgvault.methods.base import BackupFacts, Method
from pgvault.methods.snapshot import Driver
from pgvault.policy import model as policy_model
from pgvault.policy.load import parse_policy
from pgvault.restore import routes
from pgvault.tick.engine import backup_items

REGISTERED = list(methods.METHODS)

POLICY = """
version: 1
cluster: {name: main, conninfo: "host=/tmp port=5432 user=postgres"}
sites:
  local: {type: local, path: /var/backups/pgvault}
jobs:
  nightly: {method: logical, sites: [local], schedule: '0 3 * * *'}
"""


@pytest.mark.parametrize("name", REGISTERED)
def test_every_registered_method_satisfies_the_contract(name):
    m = methods.get_method(name)
    assert isinstance(m, Method) and m.name == name
    assert m.tools and all(isinstance(t, str) and t for t in m.tools)
    for fn, params in ((m.check, 1), (m.backup, 2), (m.expire, 2)):
        assert callable(fn) and len(inspect.signature(fn).parameters) == params, fn
    assert inspect.signature(m.backup).return_annotation in (BackupFacts, "BackupFacts")
    # Its restore and drill adapters exist: the upper layers' tables are keyed by route.
    assert callable(routes.entry(routes.ROUTES[m.restore_route]))
    assert callable(adapter_for(name))
    # Its policy model is the job model whose discriminator tag is its name.
    assert get_args(m.policy_model.model_fields["method"].annotation) == (name,)
    assert m.policy_model in policy_model.JOB_MODELS
    # A snapshot method brings a Driver covering the restore side too (no kind branches above).
    assert (m.snapshot_driver is not None) == (m.restore_route == "snapshot")
    if m.snapshot_driver is not None:
        wanted = {n for n, v in vars(Driver).items() if callable(v) and not n.startswith("_")}
        assert wanted - set(dir(m.snapshot_driver)) == set()
    if m.restore_route == "snapshot" or m.per_site_bases:
        assert m.pitr_base
    if m.restore_route == "pitr":  # restore/pitr.py can lay its bases down
        assert m.per_site_bases or m.lay_down_base is not None


def test_the_policy_and_the_drills_know_exactly_the_registered_methods():
    assert policy_model.METHODS == tuple(REGISTERED)
    assert get_args(get_args(drill_model.Source.model_fields["method"].annotation)[0]) == tuple(REGISTERED)
    assert set(drill_model.pitr_methods()) == {n for n in REGISTERED if methods.get_method(n).pitr_base}
    assert set(policy_model.METHODS_NEEDING_SITES) == {n for n in REGISTERED if methods.get_method(n).needs_sites}


def test_the_route_tables_have_no_entry_no_method_uses():
    used = {methods.get_method(n).restore_route for n in REGISTERED}
    assert set(routes.ROUTES) == used
    assert set(ADAPTERS) == {methods.get_method(n).drill_route for n in REGISTERED}


def test_an_unknown_method_is_refused_by_name():
    with pytest.raises(KeyError, match="no backup method 'tape' .*logical"):
        methods.get_method("tape")


# -- a toy method, registered in-process: this file is all it takes (plus, for real use, its
# job model in pgvault.policy.model's union so that policy files can name it).

class ToyJob(policy_model.JobBase):
    method: Literal["toy"]


def _toy_check(ctx):
    return []


def _toy_backup(ctx, session) -> BackupFacts:
    return BackupFacts(restore="cat toy")


TOY_TOOL = "pgvault-toy-tool-not-installed"


@pytest.fixture
def toy(monkeypatch):
    module = types.ModuleType("pgvault_test_toy_method")
    module.METHOD = Method(name="toy", job_model=ToyJob, tools=(TOY_TOOL,), check=_toy_check, backup=_toy_backup,
                           restore_route="logical", drill_route="logical")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(methods.METHODS, "toy", module.__name__)
    policy = parse_policy(POLICY, "toy.yaml")
    policy.jobs["toyjob"] = ToyJob(method="toy", schedule="*/5 * * * *", sites=["local"])
    return policy


def test_a_toy_method_is_scheduled_by_the_tick(toy):
    items = {i.name: i for i in backup_items(toy)}
    assert set(items) == {"nightly", "toyjob"}
    assert (items["toyjob"].schedule, items["toyjob"].kind, items["toyjob"].sites) == ("*/5 * * * *", "backup", ["local"])


def test_a_toy_method_is_checked_by_check(toy):
    results = {r.name: r for r in checks.check_tools(toy, None)}
    toy_tool = results[f"tool {TOY_TOOL}"]
    assert toy_tool.state == checks.CRITICAL and "needed by toyjob" in toy_tool.message
    assert methods.get_method("toy").needs_sites is False
    assert adapter_for("toy") is adapter_for("logical")
