"""`pgvault status`: is the promise holding? Facts are read from the sites (the source of
truth) and the cluster (collect), judged against the policy (evaluate, pure), and rendered by
the CLI as a table, JSON or a node_exporter textfile (prometheus)."""
from __future__ import annotations

from datetime import datetime

from .collect import collect
from .evaluate import CRITICAL, OK, STATE_NAMES, UNKNOWN, WARNING, all_items, evaluate, worst  # noqa: F401


def status(policy, now: datetime | None = None, deadline=None) -> dict:
    """Collect and evaluate; the document `pgvault status --json` prints. The sites are read
    within ``deadline`` (a pgvault.sites.readonly.Deadline; default monitoring.site_timeout)."""
    from ..clock import Clock

    now = now or Clock.from_env().now()  # $PGVAULT_NOW: "what would status say at time T?"
    facts = collect(policy, now, deadline)
    doc = evaluate(policy, facts, now)
    doc["facts"] = facts
    return doc
