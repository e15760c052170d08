"""The policy: one YAML file per cluster, loaded into strict, frozen models.

Names are resolved lazily (PEP 562) so that pure submodules such as ``policy.schedule`` can be
imported by ``pgvault tick``'s idle path without loading pydantic."""


def __getattr__(name):
    if name in ("load_policy", "policy_path"):
        from . import load

        return getattr(load, name)
    if name == "Policy":
        from .model import Policy

        return Policy
    raise AttributeError(name)
