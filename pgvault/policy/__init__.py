"""The policy: one YAML file per cluster, loaded into strict, frozen models."""
from .load import load_policy, policy_path  # noqa: F401
from .model import Policy  # noqa: F401
