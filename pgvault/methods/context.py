"""What a backup method is handed: the policy, the job, a connection and the server's facts."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..pg import ServerInfo, tool


@dataclass
class BackupContext:
    policy: Any
    job_name: str
    job: Any
    conn: Any                     # psycopg connection (autocommit)
    server: ServerInfo
    progress: Callable[[str, int], None] | None = None
    facts: dict = field(default_factory=dict)
    node_conninfo: str | None = None  # the node the job runs on (from:), when not the policy's conninfo

    def tool(self, name: str) -> str:
        return tool(name, self.server.major, self.policy.cluster.bin_dir)

    def conninfo(self, dbname: str | None = None) -> str:
        ci = self.node_conninfo or self.policy.cluster.conninfo
        if dbname is None:
            return ci
        from psycopg.conninfo import make_conninfo

        return make_conninfo(ci, dbname=dbname)
