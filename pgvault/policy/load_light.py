"""Just enough of the policy for ``pgvault tick``'s idle path: its bytes, state_dir and cluster
name — without validation (the caller checks a digest of the bytes against a note written by a
full, validating tick). A quick scan of the text finds the two values in the usual layouts;
otherwise the C YAML loader does. A wrong guess only means no note is found and the full path
runs: the digest, not this guess, decides whether the note applies."""
from __future__ import annotations

import os
import re
from pathlib import Path

_STATE = re.compile(rb"^state_dir:[ \t]*['\"]?([^'\"#\n]+?)['\"]?[ \t]*(?:#.*)?$", re.M)
_NAME_FLOW = re.compile(rb"^cluster:[ \t]*\{[^}]*?\bname:[ \t]*['\"]?([A-Za-z0-9][A-Za-z0-9_.-]*)", re.M)
_NAME_BLOCK = re.compile(rb"^cluster:[ \t]*(?:#.*)?\n(?:[ \t]+.*\n|[ \t]*\n)*?[ \t]+name:[ \t]*['\"]?([A-Za-z0-9][A-Za-z0-9_.-]*)", re.M)


def scan(data: bytes) -> tuple[str | None, str] | None:
    """(state_dir, cluster name) found by a quick scan, or None.

    >>> scan(b"version: 1\\ncluster: {name: main, conninfo: x}\\nstate_dir: /var/lib/pgv\\n")
    ('/var/lib/pgv', 'main')
    >>> scan(b"cluster:\\n  conninfo: x\\n  name: 'db1'\\n")
    (None, 'db1')
    """
    m = _NAME_FLOW.search(data) or _NAME_BLOCK.search(data)
    if not m:
        return None
    s = _STATE.search(data)
    return (s.group(1).decode() if s else None), m.group(1).decode()


def light_read(given: str | None) -> tuple[bytes, str | None, str] | None:
    path = given or os.environ.get("PGVAULT_POLICY") or "/etc/pgvault/policy.yaml"
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if os.environ.get("PGVAULT_STATE_DIR"):
        return data, None, ""
    found = scan(data)
    if found is None:
        import yaml

        try:
            doc = yaml.load(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
            found = doc.get("state_dir"), doc["cluster"]["name"]
        except Exception:  # anything odd: let the full path report it properly
            return None
        if not isinstance(found[1], str) or not (found[0] is None or isinstance(found[0], str)):
            return None
    return data, found[0], found[1]
