"""Just enough of the policy for ``pgvault tick``'s idle path: its bytes, state_dir and cluster
name, read with the C YAML loader and without validation (the caller checks a digest of the
bytes against a note written by a full, validating tick)."""
from __future__ import annotations

import os
from pathlib import Path


def light_read(given: str | None) -> tuple[bytes, str | None, str] | None:
    path = given or os.environ.get("PGVAULT_POLICY")
    if not path:
        path = "/etc/pgvault/policy.yaml"
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if not os.environ.get("PGVAULT_STATE_DIR"):
        import yaml

        try:
            doc = yaml.load(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
            state_cfg = doc.get("state_dir")
            cluster = doc["cluster"]["name"]
        except Exception:  # anything odd: let the full path report it properly
            return None
        if not isinstance(cluster, str) or not (state_cfg is None or isinstance(state_cfg, str)):
            return None
        return data, state_cfg, cluster
    return data, None, ""
