"""A real high-availability cluster on this host: one etcd and N Patroni nodes, each a
PostgreSQL 15 instance run as ``postgres`` on free ports with its own data directory, REST port
and ``archive_command`` (pgvault wal-push with that node's policy). Failovers are made the real
way: ``patronictl switchover``, ``kill -9`` of the leader's postmaster, SIGSTOP of a node.

Used by the HA tests, the failover benchmark and ``pgvault lab``. Production code never imports
it (sandbox is the top layer but one).

    with HACluster(workdir, 3, policies={"n1": p1, "n2": p2, "n3": p3}) as ha:
        ha.start()
        old, new = ha.switchover()

Why these Patroni settings (bootstrap.dcs):
- ``ttl 10, loop_wait 1, retry_timeout 4``: a failover after a lost leader takes ~10 s, not
  Patroni's default 30 s (Patroni requires loop_wait + 2*retry_timeout <= ttl).
- ``primary_start_timeout 0``: a crashed leader's postmaster (kill -9) is not restarted in place
  on the same timeline; a replica is promoted at once — the failover the tests are about.
- ``use_pg_rewind`` (the instances have data checksums): the old leader rejoins as a replica.
- ``archive_mode`` defaults to ``always`` so replicas archive what they receive: a leader
  killed before its archiver sent a finished segment leaves no gap (PostgreSQL's docs: a
  promoted standby with archive_mode=on archives only what it generated itself).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import pg
from ..proc import wait_until
from . import owned_dir, pgvault_command

PG_BIN = "/usr/lib/postgresql/15/bin"


def _http_json(url: str, timeout: float = 2.0) -> tuple[int, dict | list | None]:
    """(status, decoded body) of a GET; (0, None) when nothing answers. Patroni answers 503
    with a JSON body on /leader and /replica of the wrong role: that is an answer, not an error."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:
            return exc.code, None
    except (OSError, ValueError):
        return 0, None


def _descendants(pid: int) -> list[int]:
    """pid and every process below it, from /proc (a postmaster and its backends)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


class Etcd:
    """One etcd member on 127.0.0.1 (client and peer ports free), data in ``base``."""

    def __init__(self, base: Path):
        self.base = base
        self.client_port = pg.free_port()
        self.peer_port = pg.free_port()
        self.url = f"http://127.0.0.1:{self.client_port}"
        self.proc: subprocess.Popen | None = None
        self.log = base / "etcd.log"

    def start(self) -> "Etcd":
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = ["etcd", "--name", "e1", "--data-dir", str(self.base / "etcd-data"),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"e1={peer}", "--initial-cluster-token", uuid.uuid4().hex[:8],
                "--log-level", "warn"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self._healthy, 60, "etcd to answer /health", interval=0.1)
        return self

    def _healthy(self) -> bool:
        if self.proc and self.proc.poll() is not None:
            raise RuntimeError(f"etcd exited: {self.log.read_text(errors='replace')[-2000:]}")
        status, body = _http_json(self.url + "/health")
        return status == 200 and isinstance(body, dict) and body.get("health") == "true"

    def stop(self) -> None:
        _end(self.proc)


def _end(popen: subprocess.Popen | None, timeout: float = 20) -> None:
    """SIGCONT (it may be paused), SIGTERM, then SIGKILL after ``timeout``."""
    if not popen or popen.poll() is not None:
        return
    for sig in (signal.SIGCONT, signal.SIGTERM):
        try:
            os.kill(popen.pid, sig)
        except ProcessLookupError:
            return
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait()


@dataclass
class Node:
    """One Patroni member: its PostgreSQL port, REST port, data directory and config file."""

    name: str
    base: Path
    pg_port: int = field(default_factory=pg.free_port)
    rest_port: int = field(default_factory=pg.free_port)
    proc: subprocess.Popen | None = None
    paused: list[int] = field(default_factory=list)

    @property
    def pgdata(self) -> Path:
        return self.base / self.name / "data"

    @property
    def config(self) -> Path:
        return self.base / self.name / "patroni.yml"

    @property
    def log(self) -> Path:
        return self.base / self.name / "patroni.log"

    @property
    def socket_dir(self) -> Path:
        return self.base / self.name / "sock"

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.pg_port} user=postgres dbname={dbname}"

    def instance(self) -> pg.Instance:
        """This node's instance as pgvault sees it (for psql, connect); Patroni owns its life."""
        return pg.Instance(self.pgdata, self.pg_port, socket_dir=self.socket_dir, bindir=PG_BIN)

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def patroni_state(self) -> dict:
        """GET /patroni of this node ({} when it does not answer)."""
        status, body = _http_json(self.rest + "/patroni")
        return body if status == 200 and isinstance(body, dict) else {}


class HACluster:
    """etcd + ``n`` Patroni nodes named n1..nN under ``base``.

    ``policies``: the pgvault policy each node's archive_command uses — one path for all, or a
    dict by node name; None means no archiving. ``parameters`` go to every node's
    postgresql.conf through the DCS (cluster-wide) configuration.
    """

    def __init__(self, base: Path, n: int = 3, *, policies: Path | dict[str, Path] | None = None,
                 archive_mode: str = "always", archive_timeout: int = 5, parameters: dict | None = None,
                 scope: str | None = None):
        self.base = base
        self.scope = scope or f"pgv-{uuid.uuid4().hex[:8]}"
        self.nodes = {f"n{i}": Node(f"n{i}", base) for i in range(1, n + 1)}
        self.policies = policies
        self.archive_mode = archive_mode
        self.archive_timeout = archive_timeout
        self.parameters = parameters or {}
        self.etcd = Etcd(base)
        self.env = dict(os.environ)  # S3 credentials for wal-push reach postgres through Patroni

    # -- life
    def __enter__(self) -> "HACluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 180) -> "HACluster":
        """Start etcd and every node; return when there is one leader and every other node
        streams from it. Tears everything down if that fails."""
        try:
            self.etcd.start()
            first, *rest = self.nodes.values()
            self._start_node(first)  # the first bootstraps (initdb); the others clone from it
            self.wait_leader(timeout)
            for node in rest:
                self._start_node(node)
            self.wait_streaming(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node (also paused ones) and etcd. Idempotent; never raises for a part that
        is already gone."""
        for node in self.nodes.values():
            self.resume(node.name)
            _end(node.proc, 30)
            # Patroni stops PostgreSQL when it exits; a postmaster left behind (Patroni killed,
            # or it died) is stopped here so no instance outlives the cluster.
            if node.postmaster_pid():
                subprocess.run([f"{PG_BIN}/pg_ctl", "stop", "-D", str(node.pgdata), "-m", "immediate"],
                               user=pg.run_user(), capture_output=True, check=False)
        self.etcd.stop()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def _archive_command(self, node: Node) -> str | None:
        if self.policies is None:
            return None
        policy = self.policies[node.name] if isinstance(self.policies, dict) else self.policies
        return pgvault_command(policy) + " wal-push %p"

    def _config(self, node: Node) -> dict:
        dcs_params = {"wal_level": "replica", "hot_standby": "on", "wal_log_hints": "on",
                      "max_wal_senders": 10, "max_replication_slots": 10, "wal_keep_size": "256MB",
                      "archive_mode": self.archive_mode if self.policies is not None else "off",
                      "archive_timeout": self.archive_timeout, "fsync": "off",
                      "shared_buffers": "32MB", "max_connections": 50}
        dcs_params.update(self.parameters)
        local = {"unix_socket_directories": str(node.socket_dir), "unix_socket_permissions": "0777",
                 "log_min_messages": "warning"}
        command = self._archive_command(node)
        if command:
            local["archive_command"] = command  # per node: each node may push with its own policy
        hba = ["local all all trust", "host all all 127.0.0.1/32 trust",
               "host replication all 127.0.0.1/32 trust"]
        return {
            "scope": self.scope, "namespace": "/pgvault/", "name": node.name,
            "restapi": {"listen": f"127.0.0.1:{node.rest_port}", "connect_address": f"127.0.0.1:{node.rest_port}"},
            "etcd3": {"hosts": f"127.0.0.1:{self.etcd.client_port}"},
            "bootstrap": {
                "dcs": {"ttl": 10, "loop_wait": 1, "retry_timeout": 4, "primary_start_timeout": 0,
                        "maximum_lag_on_failover": 64 * 1024 * 1024,
                        "postgresql": {"use_pg_rewind": True, "use_slots": True,
                                       "remove_data_directory_on_rewind_failure": True,
                                       "remove_data_directory_on_diverged_timelines": True,
                                       "parameters": dcs_params}},
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, "data-checksums"],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{node.pg_port}", "connect_address": f"127.0.0.1:{node.pg_port}",
                "data_dir": str(node.pgdata), "bin_dir": PG_BIN, "pgpass": str(node.base / node.name / "pgpass"),
                "authentication": {"superuser": {"username": "postgres"},
                                   "replication": {"username": "postgres"},
                                   "rewind": {"username": "postgres"}},
                "parameters": local, "pg_hba": hba,
                # A re-clone (patronictl reinit) under load would otherwise wait for a spread
                # checkpoint on the leader: most of checkpoint_timeout.
                "basebackup": [{"checkpoint": "fast"}],
            },
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
        }

    def _start_node(self, node: Node) -> None:
        owned_dir(node.base / node.name, 0o755)
        owned_dir(node.socket_dir, 0o755)
        node.config.write_text(yaml.safe_dump(self._config(node), sort_keys=False))
        os.chmod(node.config, 0o644)
        user = pg.run_user()
        kw = {}
        if user:
            import pwd

            pw = pwd.getpwnam(user)
            kw = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        with open(node.log, "ab") as out:
            node.proc = subprocess.Popen(["patroni", str(node.config)], stdout=out, stderr=subprocess.STDOUT,
                                         env=self.env, cwd=str(node.base / node.name),
                                         start_new_session=True, **kw)

    # -- what Patroni says
    def cluster(self) -> dict:
        """GET /cluster from the first node that answers ({} if none does)."""
        for node in self.nodes.values():
            if node.paused:
                continue
            status, body = _http_json(node.rest + "/cluster")
            if status == 200 and isinstance(body, dict):
                return body
        return {}

    def members(self) -> list[dict]:
        return self.cluster().get("members", [])

    def leader(self) -> str | None:
        """The running leader's name per Patroni (through etcd), or None."""
        for m in self.members():
            if m.get("role") in ("leader", "master", "primary") and m.get("state") == "running":
                return m["name"]
        return None

    def replicas(self) -> list[str]:
        """Names of running replicas per Patroni."""
        return sorted(m["name"] for m in self.members()
                      if m.get("role") in ("replica", "sync_standby") and m.get("state") in ("running", "streaming"))

    def timeline(self, name: str | None = None) -> int:
        """The leader's (or the named node's) current timeline, read from PostgreSQL: on a
        primary the timeline of the WAL it writes (pg_control_checkpoint() keeps the old one
        until the first checkpoint after a promotion), on a replica the one it receives."""
        node = self.nodes[name or self._need_leader()]
        with pg.connect(node.conninfo()) as conn:
            return int(pg.scalar(conn, """
                SELECT CASE WHEN pg_is_in_recovery()
                       THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver),
                                     (SELECT timeline_id FROM pg_control_checkpoint()))
                       ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END"""))

    def _need_leader(self) -> str:
        return wait_until(self.leader, 60, "a Patroni leader", interval=0.2)

    def wait_leader(self, timeout: float = 120, *, other_than: str | None = None) -> str:
        """Poll Patroni's REST API until a leader (other than ``other_than``) accepts writes."""
        def ready():
            name = self.leader()
            if not name or name == other_than:
                return None
            status, _ = _http_json(self.nodes[name].rest + "/primary")
            if status != 200:
                return None
            # Patroni names the leader as it asks for the promotion; PostgreSQL ends recovery later.
            try:
                with pg.connect(self.nodes[name].conninfo()) as conn:
                    return None if pg.scalar(conn, "SELECT pg_is_in_recovery()") else name
            except Exception:
                return None
        return wait_until(ready, timeout, f"a Patroni leader{' other than ' + other_than if other_than else ''}",
                          interval=0.2)

    def streaming(self) -> set[str] | None:
        """The nodes streaming from the leader now, by its pg_stat_replication (None: no leader
        answers). Patroni may call a node "running" replica that streams from nobody (a
        demoted leader ahead on a dead timeline: "highest timeline of the primary is behind")."""
        leader = self.leader()
        if not leader:
            return None
        try:
            with pg.connect(self.nodes[leader].conninfo()) as conn:
                rows = pg.query(conn, "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'")
        except Exception:
            return None
        return {r[0] for r in rows}

    def wait_streaming(self, names: list[str] | None = None, timeout: float = 180) -> None:
        """Until every named node (default: every node but the leader) streams from the leader."""
        def ok():
            leader = self.leader()
            got = self.streaming()
            if not leader or got is None:
                return False
            want = set(names or [n for n in self.nodes if n != leader])
            # Patroni's own view too: tick and the tests choose replicas from it.
            return want <= got and want <= set(self.replicas())
        wait_until(ok, timeout, "every replica to stream from the leader", interval=0.3)

    # -- connections
    def conninfo(self, name: str | None = None, dbname: str = "postgres", *,
                 target_session_attrs: str | None = None) -> str:
        """One node's conninfo, or (name None) libpq multi-host over every node, with
        ``target_session_attrs`` (read-write, standby, prefer-standby, ...) when given."""
        if name:
            return self.nodes[name].conninfo(dbname)
        hosts = ",".join("127.0.0.1" for _ in self.nodes)
        ports = ",".join(str(n.pg_port) for n in self.nodes.values())
        s = f"host={hosts} port={ports} user=postgres dbname={dbname}"
        return s + (f" target_session_attrs={target_session_attrs}" if target_session_attrs else "")

    def patroni_url(self, name: str) -> str:
        return self.nodes[name].rest

    def psql(self, sql: str, name: str | None = None, dbname: str = "postgres") -> str:
        node = self.nodes[name or self._need_leader()]
        return subprocess.run([f"{PG_BIN}/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                               "-d", node.conninfo(dbname), "-c", sql],
                              capture_output=True, text=True, check=True).stdout

    # -- failovers
    def patronictl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        node = next(n for n in self.nodes.values() if not n.paused)
        return subprocess.run(["patronictl", "-c", str(node.config), *args], capture_output=True, text=True,
                              timeout=timeout, check=True)

    def switchover(self, candidate: str | None = None, timeout: float = 120) -> tuple[str, str]:
        """``patronictl switchover`` to ``candidate`` (default: the first replica); returns
        (old leader, new leader) once the new one accepts writes."""
        old = self._need_leader()
        candidate = candidate or self.replicas()[0]
        self.patronictl("switchover", self.scope, "--leader", old, "--candidate", candidate, "--force")
        new = self.wait_leader(timeout, other_than=old)
        return old, new

    def kill9_leader(self, timeout: float = 120) -> tuple[str, str]:
        """``kill -9`` of the leader's postmaster; returns (old, new) once another node leads."""
        old = self._need_leader()
        pid = self.nodes[old].postmaster_pid()
        if not pid:
            raise RuntimeError(f"leader {old} has no postmaster.pid")
        os.kill(pid, signal.SIGKILL)
        new = self.wait_leader(timeout, other_than=old)
        return old, new

    def pause(self, name: str, *, patroni_only: bool = False) -> None:
        """SIGSTOP the node: its Patroni and (unless ``patroni_only``) its postmaster and every
        backend. ``patroni_only`` makes a zombie: PostgreSQL keeps serving and archiving as a
        primary while the leader key expires and another node is promoted."""
        node = self.nodes[name]
        pids = [node.proc.pid] if node.proc else []
        pm = node.postmaster_pid()
        if pm and not patroni_only:
            pids += _descendants(pm)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGSTOP)
                node.paused.append(pid)
            except ProcessLookupError:
                pass

    def resume(self, name: str) -> None:
        node = self.nodes[name]
        for pid in node.paused:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        node.paused.clear()

    def kill_patroni(self, name: str) -> None:
        """SIGKILL only the node's Patroni: its PostgreSQL runs on, unmanaged (a zombie when it
        was the leader and another node is promoted)."""
        node = self.nodes[name]
        if node.proc and node.proc.poll() is None:
            os.kill(node.proc.pid, signal.SIGCONT)
            node.proc.kill()
            node.proc.wait()

    def restart_patroni(self, name: str) -> None:
        """Start a stopped node's Patroni again (it rejoins, rewinding if it must)."""
        self._start_node(self.nodes[name])

