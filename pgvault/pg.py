"""The only door to SQL (psycopg 3), plus control of local PostgreSQL instances (initdb,
pg_ctl) for restores, drills, the demo and tests. PostgreSQL refuses to run as root, so when
pgvault runs as root every instance runs as the data directory's owner (``postgres``)."""
from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from . import proc
from .errors import DatabaseError, PgvaultError, RestoreRefused
from .lsn import parse_lsn

DEFAULT_BIN_ROOT = "/usr/lib/postgresql"
RUN_AS = "postgres"


def bin_dir(major: int | None = None, configured: str | None = None) -> str:
    """The PostgreSQL bin directory: configured, else the newest (or given major) under /usr/lib."""
    if configured:
        return configured
    root = Path(DEFAULT_BIN_ROOT)
    if major is not None and (root / str(major) / "bin").is_dir():
        return str(root / str(major) / "bin")
    majors = sorted((int(p.name) for p in root.glob("*") if p.name.isdigit()), reverse=True)
    for m in majors:
        if (root / str(m) / "bin" / "pg_dump").exists():
            return str(root / str(m) / "bin")
    return "/usr/bin"


def tool(name: str, major: int | None = None, configured: str | None = None) -> str:
    path = Path(bin_dir(major, configured)) / name
    return proc.which(str(path) if path.exists() else name)


_VERSIONS: dict[str, str] = {}


def tool_version(path: str) -> str:
    """``PATH --version`` (e.g. "pg_dump (PostgreSQL) 15.8"), run once per program per process."""
    if path not in _VERSIONS:
        _VERSIONS[path] = proc.output([path, "--version"]).strip()
    return _VERSIONS[path]


def connect(conninfo: str, *, autocommit: bool = True, dbname: str | None = None, connect_timeout: int = 10, **kw):
    """Open a psycopg connection; failures become DatabaseError with a hint."""
    import psycopg

    try:
        params = {"dbname": dbname} if dbname else {}
        return psycopg.connect(conninfo, autocommit=autocommit, connect_timeout=connect_timeout, **params, **kw)
    except psycopg.OperationalError as exc:
        raise DatabaseError(
            f"cannot connect to PostgreSQL ({redact_conninfo(conninfo)}): {str(exc).strip()}",
            "check cluster.conninfo in the policy and that the server is running",
        ) from exc


def redact_conninfo(conninfo: str) -> str:
    """Drop any password from a conninfo string before it is shown or stored.

    >>> redact_conninfo("host=/tmp port=5432 password=secret user=x")
    'host=/tmp port=5432 password=*** user=x'
    >>> redact_conninfo("postgresql://u:pw@h/db")
    'postgresql://u:***@h/db'
    """
    s = re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", conninfo)
    return re.sub(r"(postgres(?:ql)?://[^:/@]+:)[^@]*@", r"\1***@", s)


def query(conn, sql: str, params=None) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


def scalar(conn, sql: str, params=None):
    rows = query(conn, sql, params)
    return rows[0][0] if rows else None


def replay_pause_state(conn) -> str | None:
    """'not paused' | 'pause requested' | 'paused' while in recovery; None once recovery has
    ended. Recovery can end between any two statements (a promotion at the target), and the
    recovery control functions then raise instead of answering: that is read as "ended"."""
    import psycopg

    try:
        return scalar(conn, "SELECT CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() END")
    except psycopg.errors.ObjectNotInPrerequisiteState:
        return None


@dataclass(frozen=True)
class ServerInfo:
    version_num: int          # e.g. 150018
    version: str              # e.g. "15.18"
    system_identifier: str    # as text: it exceeds JavaScript's safe integers
    timeline: int
    current_lsn: str | None
    in_recovery: bool
    wal_segment_size: int
    data_directory: str | None

    @property
    def major(self) -> int:
        return self.version_num // 10000


def server_info(conn) -> ServerInfo:
    row = query(conn, """
        SELECT current_setting('server_version_num')::int,
               current_setting('server_version'),
               (SELECT system_identifier::text FROM pg_control_system()),
               (SELECT timeline_id FROM pg_control_checkpoint()),
               pg_is_in_recovery(),
               CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text
                    ELSE pg_current_wal_lsn()::text END,
               current_setting('wal_segment_size'),
               (SELECT setting FROM pg_settings WHERE name = 'data_directory')
    """)[0]
    seg = row[6]
    seg_bytes = parse_size(seg)
    return ServerInfo(row[0], row[1].split()[0], row[2], row[3], row[5], row[4], seg_bytes, row[7])


def parse_size(text: str) -> int:
    """PostgreSQL's size notation to bytes.

    >>> parse_size("16MB")
    16777216
    >>> parse_size("8kB")
    8192
    """
    m = re.fullmatch(r"\s*(\d+)\s*(B|kB|MB|GB|TB)?\s*", text)
    if not m:
        raise ValueError(f"not a size: {text!r}")
    mult = {"B": 1, None: 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}[m.group(2)]
    return int(m.group(1)) * mult


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_user() -> str | None:
    """The user PostgreSQL processes run as: ``postgres`` when we are root, else ourselves."""
    return RUN_AS if os.geteuid() == 0 else None


def chown_to_run_user(path: str | os.PathLike, recursive: bool = False) -> None:
    user = run_user()
    if not user:
        return
    pw = pwd.getpwnam(user)
    paths = [Path(path)]
    if recursive:
        paths += list(Path(path).rglob("*"))
    for p in paths:
        os.lchown(p, pw.pw_uid, pw.pw_gid)


class Instance:
    """A local PostgreSQL instance in a data directory: initdb, configure, start, stop.

    Used by restores (the recovered cluster), drills (scratch instances), the demo and tests.
    Sockets live in ``socket_dir`` so instances never collide with a system cluster.
    """

    def __init__(self, pgdata: str | os.PathLike, port: int, *, socket_dir: str | os.PathLike | None = None,
                 bindir: str | None = None, listen_addresses: str = ""):
        self.listen_addresses = listen_addresses   # "" = the socket only (no TCP, no clash with the host's cluster)
        self.pgdata = Path(pgdata)
        self.port = port
        self.socket_dir = Path(socket_dir) if socket_dir else self.pgdata.parent
        self.bindir = bindir or bin_dir()
        self.user = run_user()

    # -- helpers
    def _bin(self, name: str) -> str:
        return str(Path(self.bindir) / name)

    def conninfo(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"host={self.socket_dir} port={self.port} user={user} dbname={dbname}"

    def connect(self, dbname: str = "postgres", **kw):
        return connect(self.conninfo(dbname), **kw)

    def initdb(self, *, extra_args: list[str] | None = None) -> None:
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        chown_to_run_user(self.pgdata)
        proc.run([self._bin("initdb"), "-D", str(self.pgdata), "-U", "postgres", "-A", "trust",
                  "--no-sync", "-E", "UTF8", "--locale=C", *(extra_args or [])], user=self.user)

    def configure(self, **settings) -> None:
        """Append settings to postgresql.auto.conf (later lines win)."""
        lines = []
        for key, value in settings.items():
            if isinstance(value, bool):
                value = "on" if value else "off"
            sval = str(value).replace("'", "''")
            lines.append(f"{key} = '{sval}'\n")
        conf = self.pgdata / "postgresql.auto.conf"
        with open(conf, "a") as fh:
            fh.writelines(lines)
        chown_to_run_user(conf)

    def is_running(self) -> bool:
        cp = proc.run([self._bin("pg_ctl"), "status", "-D", str(self.pgdata)], user=self.user, check=False)
        return cp.returncode == 0

    def start(self, *, wait: bool = True, timeout: int = 300, overrides: dict | None = None) -> None:
        """Start it; ``overrides`` are settings given on the command line for this run only
        (they beat every configuration file and vanish at the next plain start)."""
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        log = self.pgdata.parent / f"{self.pgdata.name}.log"
        log.touch()
        chown_to_run_user(log)
        opts = f"-p {self.port} -k {self.socket_dir} -c listen_addresses='{self.listen_addresses}'"
        for key, value in (overrides or {}).items():
            # pg_ctl hands -o to a shell: only plain tokens (LSNs, xids, numbers, on/off) pass.
            if not re.fullmatch(r"[a-z_]+", key) or not re.fullmatch(r"[A-Za-z0-9/._:-]+", str(value)):
                raise ValueError(f"unsafe setting for the command line: {key}={value!r}")
            opts += f" -c {key}={value}"
        argv = [self._bin("pg_ctl"), "start", "-D", str(self.pgdata), "-l", str(log), "-o", opts,
                "-t", str(timeout)]
        argv.append("-w" if wait else "-W")
        try:
            proc.run(argv, user=self.user)
        except PgvaultError as exc:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise DatabaseError(f"PostgreSQL in {self.pgdata} did not start: {exc.message}\n{tail}",
                                f"see the server log {log}") from exc

    @property
    def logfile(self) -> Path:
        return self.pgdata.parent / f"{self.pgdata.name}.log"

    def stop(self, mode: str = "fast") -> None:
        if (self.pgdata / "postmaster.pid").exists():
            proc.run([self._bin("pg_ctl"), "stop", "-D", str(self.pgdata), "-m", mode, "-w", "-t", "120"],
                     user=self.user, check=False)

    def promote(self) -> None:
        proc.run([self._bin("pg_ctl"), "promote", "-D", str(self.pgdata), "-w"], user=self.user)

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        return proc.output([self._bin("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                            "-d", self.conninfo(dbname), "-c", sql])

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.pgdata, ignore_errors=True)


def running_postmaster(pgdata: str | os.PathLike) -> int | None:
    """PID of a live postmaster using ``pgdata``, from postmaster.pid, or None."""
    pidfile = Path(pgdata) / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def ensure_empty_target(path: str | os.PathLike, *, force: bool = False) -> None:
    """Refuse to restore into a running cluster, or a non-empty directory unless forced."""
    p = Path(path)
    pid = running_postmaster(p)
    if pid:
        raise RestoreRefused(f"{p} holds a running PostgreSQL cluster (postmaster pid {pid})",
                             "stop that cluster or choose another --target-dir; pgvault never restores over a running cluster")
    if p.exists() and any(p.iterdir()):
        if not force:
            raise RestoreRefused(f"target directory {p} is not empty",
                                 "choose an empty or new directory, or pass --force to replace its contents")
        shutil.rmtree(p)
    p.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(p, 0o700)


@contextlib.contextmanager
def backup_session(conninfo: str):
    conn = connect(conninfo)
    try:
        yield conn
    finally:
        conn.close()


def controldata(pgdata: str | os.PathLike, bindir: str | None = None) -> dict[str, str]:
    """pg_controldata of a (stopped) data directory, as {field: value}."""
    out = proc.output([str(Path(bin_dir(None, bindir)) / "pg_controldata"), "-D", str(pgdata)],
                      extra_env={"LC_ALL": "C"})
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if v}


# -- PostgreSQL 15's non-exclusive base backup API (one held session; pgvault.methods.basebackup)


def backup_start(conn, label: str, fast: bool) -> str:
    """``pg_backup_start`` in this session; returns the start LSN. The backup stays open until
    ``backup_stop`` in the SAME session, or ends harmlessly when the session ends (a killed
    pgvault leaves nothing behind on the server)."""
    return scalar(conn, "SELECT pg_backup_start(%s, %s)::text", (label, fast))


def backup_stop(conn, wait_for_archive: bool, timeout: float = 300) -> tuple[str, str, str]:
    """``pg_backup_stop``: (stop LSN, backup_label text, tablespace_map text). Waiting for the
    archiver is bounded by ``timeout`` seconds: a broken archive_command must fail the backup
    with a hint, not hang it (the backup itself has ended before the wait begins)."""
    import psycopg

    try:
        query(conn, f"SET statement_timeout = {int(timeout * 1000)}")
        try:
            row = query(conn, "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(%s)", (wait_for_archive,))[0]
        except psycopg.errors.QueryCanceled as exc:
            raise DatabaseError(f"the backup's last WAL segment was not archived within {timeout:.0f}s",
                                "check archive_command and the server log (pgvault check shows the WAL archive's state)") from exc
        query(conn, "SET statement_timeout = 0")
    except psycopg.OperationalError as exc:
        # The held session is gone (server restarted or crashed, connection cut, backend killed):
        # the server ended the backup with it, and what was read has no stop point — no base.
        raise DatabaseError(f"the server ended the backup's session before pg_backup_stop ({str(exc).strip()}): "
                            "the files read have no consistent stop point and were not kept",
                            "take the backup again once the server is up (pgvault check shows its state)") from exc
    return row[0], row[1], row[2] or ""


def recovery_stop_timeline(conn) -> int | None:
    """On a standby, the timeline of its minimum recovery point — the timeline of a standby
    backup's stop LSN (``pg_backup_stop`` there returns ``minRecoveryPoint``), which differs
    from the start timeline when the upstream was promoted meanwhile. None on a primary."""
    tli = scalar(conn, "SELECT CASE WHEN pg_is_in_recovery() THEN min_recovery_end_timeline END "
                       "FROM pg_control_recovery()")
    return int(tli) if tli else None


def close_segment(conn, segno: int, seg_size: int) -> bool:
    """On a primary: ``pg_switch_wal()`` if WAL is still being inserted into segment ``segno``
    (or an earlier one), so that segment is completed and archived without waiting for
    ``archive_timeout`` — what a standby's ``pg_backup_stop`` cannot do. True if it switched."""
    if scalar(conn, "SELECT pg_is_in_recovery()"):
        return False
    if parse_lsn(scalar(conn, "SELECT pg_current_wal_insert_lsn()::text")) // seg_size > segno:
        return False
    scalar(conn, "SELECT pg_switch_wal()::text")
    return True
