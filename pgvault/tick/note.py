"""The note a full tick leaves for the next ones: "for this exact policy file, nothing is due
before T". An idle tick reads the policy's bytes and this note and stops — no validation, no
croniter, no site drivers. The digest covers the policy bytes and pgvault's version, so any
edit (or upgrade) sends the next tick down the full, validating path."""
from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime

NOTE = "tick.json"


def policy_digest(data: bytes) -> str:
    from .. import __version__

    return hashlib.sha256(data + b"\0" + __version__.encode()).hexdigest()


def idle_until(policy_file: str | None, now: datetime) -> datetime | bool | None:
    """The time before which nothing is due (True: nothing is scheduled at all), or None when
    the full path must decide (no note, another policy, or something is due)."""
    from ..policy.load_light import light_read

    found = light_read(policy_file)
    if found is None:
        return None
    data, state_cfg, cluster = found
    root = os.environ.get("PGVAULT_STATE_DIR") or state_cfg or f"/var/lib/pgvault/{cluster}"
    try:
        with open(os.path.join(root, NOTE), "rb") as fh:
            note = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    if not isinstance(note, dict) or note.get("digest") != policy_digest(data):
        return None
    nd = note.get("next_due")
    if nd is None:
        return True
    t = datetime.fromisoformat(nd)
    return t if now < t else None
