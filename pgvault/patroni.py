"""The door to Patroni's REST API, and the pure choice of which node runs a job.

pgvault never decides who leads: Patroni does (through its consensus store), and pgvault reads
its answer. Each host's policy names *its own* Patroni (``cluster.patroni.url``); ``/cluster``
lists every member with role and state, and this node is the member whose ``api_url`` is that
URL (Patroni 3.0's ``/patroni`` does not say its member name; 4.x does, and it is used first).

Every node computes the same choice from the same view (the leader for ``from: primary``; the
first running replica by name for ``from: standby``), so a tick started on every node at once
runs each job on exactly one of them. The choice uses names only, never lag: two nodes reading
/cluster a moment apart see different lags and must still agree.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import EXIT_ENVIRONMENT, PgvaultError, UsageError

LEADER_ROLES = ("leader", "master", "primary", "standby_leader")
REPLICA_ROLES = ("replica", "sync_standby", "quorum_standby")
RUNNING = ("running", "streaming")


class PatroniUnreachable(PgvaultError):
    exit_code = EXIT_ENVIRONMENT


@dataclass(frozen=True)
class Member:
    name: str
    role: str
    state: str
    host: str
    port: int
    api_url: str = ""
    timeline: int | None = None

    @property
    def is_leader(self) -> bool:
        return self.role in LEADER_ROLES and self.state in RUNNING

    @property
    def is_replica(self) -> bool:
        return self.role in REPLICA_ROLES and self.state in RUNNING


@dataclass(frozen=True)
class View:
    """What one node's Patroni says: the members, and which of them is this node."""

    me: str | None
    members: tuple[Member, ...]

    def leader(self) -> Member | None:
        return next((m for m in self.members if m.is_leader), None)

    def member(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)


def _same_endpoint(a: str, b: str) -> bool:
    """Do two URLs name the same host:port (scheme and path aside)?

    >>> _same_endpoint("http://127.0.0.1:8008/patroni", "http://127.0.0.1:8008")
    True
    >>> _same_endpoint("http://127.0.0.1:8009/patroni", "http://127.0.0.1:8008")
    False
    """
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.hostname, pa.port or 80) == (pb.hostname, pb.port or 80)


def parse_view(url: str, patroni_doc: dict, cluster_doc: dict) -> View:
    """The View from the bodies of GET /patroni and GET /cluster (pure).

    >>> v = parse_view("http://h:2", {"role": "replica"}, {"members": [
    ...     {"name": "a", "role": "leader", "state": "running", "host": "h", "port": 5, "api_url": "http://h:1/patroni"},
    ...     {"name": "b", "role": "replica", "state": "streaming", "host": "h", "port": 6, "api_url": "http://h:2/patroni"}]})
    >>> v.me, v.leader().name
    ('b', 'a')
    """
    members = tuple(Member(m["name"], m.get("role", ""), m.get("state", ""), m.get("host", ""),
                           int(m.get("port") or 5432), m.get("api_url", ""), m.get("timeline"))
                    for m in cluster_doc.get("members", []))
    me = (patroni_doc.get("patroni") or {}).get("name") or patroni_doc.get("name")
    if not me:
        me = next((m.name for m in members if m.api_url and _same_endpoint(m.api_url, url)), None)
    return View(me, members)


def choose(where: str, view: View) -> Member | None:
    """The member that runs a job with ``from: where`` (pure): every node computes the same.

    >>> ms = (Member("n1", "replica", "running", "h", 1), Member("n2", "leader", "running", "h", 2),
    ...       Member("n3", "replica", "streaming", "h", 3))
    >>> [choose(w, View("n1", ms)).name for w in ("primary", "standby", "prefer-standby")]
    ['n2', 'n1', 'n1']
    >>> choose("prefer-standby", View("n2", ms[1:2])).name, choose("standby", View("n2", ms[1:2]))
    ('n2', None)
    """
    if where == "primary":
        return view.leader()
    replicas = sorted((m for m in view.members if m.is_replica), key=lambda m: m.name)
    if replicas:
        return replicas[0]
    return view.leader() if where == "prefer-standby" else None


def _get(url: str, timeout: float) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:  # /patroni answers 503 when PostgreSQL is down: still a view
        body = exc.read()
    except (OSError, ValueError) as exc:
        raise PatroniUnreachable(f"Patroni REST API at {url} did not answer: {exc}",
                                 "check cluster.patroni.url in this host's policy and that Patroni runs here") from None
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        raise PatroniUnreachable(f"Patroni REST API at {url} answered something that is not JSON",
                                 "cluster.patroni.url must be Patroni's REST API (restapi.listen)") from None
    return doc if isinstance(doc, dict) else {}


def view(url: str, timeout: float = 5.0) -> View:
    """Ask this node's Patroni: GET /patroni, then GET /cluster."""
    base = url.rstrip("/")
    return parse_view(base, _get(base + "/patroni", timeout), _get(base + "/cluster", timeout))


def member_conninfo(conninfo: str, member: Member) -> str:
    """``conninfo`` pointed at one member: its host and port replace the list (the user, the
    database and every other option stay), and target_session_attrs goes (this is the node)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(conninfo)
    params.pop("target_session_attrs", None)
    params.pop("hostaddr", None)
    params.update(host=member.host, port=str(member.port))
    return make_conninfo(**params)


SESSION_ATTRS = {"primary": "read-write", "standby": "standby", "prefer-standby": "prefer-standby"}


def session_conninfo(conninfo: str, where: str) -> str:
    """Without Patroni: libpq chooses among the hosts by ``target_session_attrs``. A job from
    the primary keeps a single-host conninfo as written (and one that names its own attrs)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(conninfo)
    several = "," in str(params.get("host", "")) or "," in str(params.get("hostaddr", ""))
    if where == "primary" and (not several or "target_session_attrs" in params):
        return conninfo
    params["target_session_attrs"] = SESSION_ATTRS[where]
    return make_conninfo(**params)


def job_conninfo(policy, where: str) -> tuple[str, Member | None]:
    """(conninfo, the chosen member) for a job that runs ``from: where``: the chosen member's own address
    when Patroni runs the cluster, else the policy's conninfo with target_session_attrs."""
    cluster = policy.cluster
    if cluster.patroni is None:
        return session_conninfo(cluster.conninfo, where), None
    v = view(cluster.patroni.url, cluster.patroni.timeout.total_seconds())
    m = choose(where, v)
    if m is None:
        raise UsageError(f"no running {'standby' if where == 'standby' else 'leader'} in Patroni's view of the cluster "
                         f"({', '.join(f'{x.name}: {x.role}/{x.state}' for x in v.members) or 'no members'})",
                         "`from: prefer-standby` falls back to the primary; `patronictl list` shows the members")
    return member_conninfo(cluster.conninfo, m), m
