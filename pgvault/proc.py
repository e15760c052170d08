"""The only door to subprocesses. argv is always a list (never a shell), the environment is
explicit, the command is logged shell-quoted at debug level, and a non-zero exit raises
ToolFailed with argv, exit code and the tail of stderr."""
from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import ToolFailed, ToolNotFound

log = logging.getLogger("pgvault.proc")

# Where a missing program comes from, for the hint.
INSTALL_HINTS = {
    "pg_dump": "apt-get install postgresql-client-15 (or the client matching the server's major version)",
    "zfs": "apt-get install zfs-fuse (and start the zfs-fuse daemon) or zfsutils-linux",
    "btrfs": "apt-get install btrfs-progs",
    "barman": "pip install 'barman[cloud]' into pgvault's virtualenv (bash scripts/setup.sh does it)",
    "zstd": "apt-get install zstd",
}

STDERR_TAIL = 4000


def which(program: str, path: str | None = None) -> str:
    """Resolve a program to an absolute path or raise ToolNotFound with an install hint."""
    if os.sep in program:
        if os.access(program, os.X_OK):
            return program
        found = None
    else:
        found = shutil.which(program, path=path)
        if not found and path is None:
            # Programs installed with pgvault (barman-cloud-*, moto_server) live beside its
            # interpreter, which need not be on PATH (cron, systemd, archive_command).
            beside = Path(sys.executable).parent / program
            found = str(beside) if os.access(beside, os.X_OK) else None
    if not found:
        base = Path(program).name
        hint = INSTALL_HINTS.get(base)
        for key, value in INSTALL_HINTS.items():
            if base.startswith(key.split("-")[0]) and hint is None:
                hint = value
        if base.startswith("pg_") or base in ("postgres", "initdb", "psql", "pgbench"):
            hint = hint or "install PostgreSQL's binaries or set cluster.bin_dir in the policy"
        if base.startswith("barman"):
            hint = INSTALL_HINTS["barman"]
        raise ToolNotFound(f"required program {program!r} not found", hint)
    return found


def quote(argv: Sequence[str]) -> str:
    """Render argv as a shell-quoted string for logs and messages.

    >>> quote(["pg_dump", "-d", "my db"])
    "pg_dump -d 'my db'"
    """
    return " ".join(shlex.quote(str(a)) for a in argv)


def _env(env: Mapping[str, str] | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    base = dict(os.environ if env is None else env)
    if extra:
        base.update(extra)
    return base


def _user_kwargs(user: str | None) -> dict:
    if user is None or os.geteuid() != 0:
        return {}
    import pwd

    pw = pwd.getpwnam(user)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": [], "cwd_default": pw.pw_dir}


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    cwd: str | os.PathLike | None = None,
    user: str | None = None,
    check: bool = True,
    capture: bool = True,
    timeout: float | None = None,
    hint: str | None = None,
) -> subprocess.CompletedProcess:
    """Run a program to completion. ``user`` (when running as root) drops to that user."""
    argv = [str(a) for a in argv]
    argv[0] = which(argv[0])
    log.debug("run: %s", quote(argv))
    kw = _user_kwargs(user)
    home = kw.pop("cwd_default", None)
    try:
        cp = subprocess.run(
            argv,
            env=_env(env, extra_env),
            input=input,
            cwd=cwd if cwd is not None else (home if kw and not os.access(os.getcwd(), os.R_OK | os.X_OK) else None),
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            timeout=timeout,
            **kw,
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolFailed(argv, -1, f"timed out after {timeout}s", hint) from exc
    if check and cp.returncode != 0:
        tail = (cp.stderr or b"")[-STDERR_TAIL:].decode("utf-8", "replace")
        if not tail.strip() and cp.stdout:
            tail = cp.stdout[-STDERR_TAIL:].decode("utf-8", "replace")
        raise ToolFailed(argv, cp.returncode, tail, hint)
    return cp


def output(argv: Sequence[str], **kw) -> str:
    """Run and return stdout as text."""
    return run(argv, **kw).stdout.decode("utf-8", "replace")


def _grow_pipe(fh, size: int = 1 << 20) -> None:
    """Ask for a 1 MiB pipe buffer: fewer wake-ups between the producer and us (Linux only)."""
    try:
        import fcntl

        fcntl.fcntl(fh.fileno(), 1031, size)  # F_SETPIPE_SZ
    except (OSError, ImportError, AttributeError):
        pass


class _Child:
    """A running program whose stderr goes to a temporary file (so a chatty program never
    blocks on a full pipe); killed on an exception inside ``with``."""

    def _spawn(self, argv: Sequence[str], what: str, *, env, extra_env, user, cwd, hint, **popen) -> None:
        import tempfile

        self.argv = [str(a) for a in argv]
        self.argv[0] = which(self.argv[0])
        self.hint = hint
        log.debug("%s: %s", what, quote(self.argv))
        self._err = tempfile.TemporaryFile()
        kw = _user_kwargs(user)
        home = kw.pop("cwd_default", None)
        popen.setdefault("stderr", self._err)
        if popen.get("stdout") == "stderr":  # what the program prints joins the stderr tail
            popen["stdout"] = self._err
        self.proc = subprocess.Popen(self.argv, env=_env(env, extra_env),
                                     cwd=cwd if cwd is not None else (home if kw else None), **popen, **kw)

    def stderr_tail(self) -> str:
        self._err.seek(0, os.SEEK_END)
        size = self._err.tell()
        self._err.seek(max(0, size - STDERR_TAIL))
        return self._err.read().decode("utf-8", "replace")

    def _wait_checked(self) -> None:
        rc = self.proc.wait()
        if rc != 0:
            raise ToolFailed(self.argv, rc, self.stderr_tail(), self.hint)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.kill()
        self._err.close()
        return False


class Stream(_Child):
    """A running program whose stdout is read as a stream (pg_dump, zfs send...).

    Use as a context manager; ``finish()`` waits and raises ToolFailed on a non-zero exit.
    """

    def __init__(self, argv: Sequence[str], *, env=None, extra_env=None, user=None, stdin=None,
                 cwd=None, hint: str | None = None):
        self._spawn(argv, "stream", env=env, extra_env=extra_env, user=user, cwd=cwd, hint=hint,
                    stdin=stdin if stdin is not None else subprocess.DEVNULL, stdout=subprocess.PIPE)
        self.stdout = self.proc.stdout
        _grow_pipe(self.stdout)

    def finish(self) -> None:
        if self.stdout:
            self.stdout.close()
        self._wait_checked()


def feed(argvs: Sequence[Sequence[str]], reader, *, hint: str | None = None, user: str | None = None) -> None:
    """Run a pipeline ``argvs[0] | argvs[1] | ...`` whose first stdin is fed from ``reader``
    (anything with ``read(n)``) by a thread. An exception raised by the reader (e.g. a checksum
    mismatch) wins over the programs' exit codes; then the first program that failed raises
    ToolFailed with its own stderr tail."""
    import tempfile
    import threading

    procs, errs = [], []
    kw = _user_kwargs(user)
    kw.pop("cwd_default", None)
    try:
        prev = subprocess.PIPE
        for i, argv in enumerate(argvs):
            argv = [str(a) for a in argv]
            argv[0] = which(argv[0])
            log.debug("pipe[%d]: %s", i, quote(argv))
            err = tempfile.TemporaryFile()
            errs.append(err)
            last = i == len(argvs) - 1
            p = subprocess.Popen(argv, stdin=prev, stdout=subprocess.DEVNULL if last else subprocess.PIPE,
                                 stderr=err, **kw)
            if i > 0 and procs[-1].stdout:
                procs[-1].stdout.close()  # the next program owns the read end now
            procs.append(p)
            if not last:
                _grow_pipe(p.stdout)
                prev = p.stdout
        failure: list[BaseException] = []

        def pump() -> None:
            stdin = procs[0].stdin
            try:
                while chunk := reader.read(1 << 20):
                    stdin.write(chunk)
            except BrokenPipeError:
                pass
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                failure.append(exc)
                for q in procs:
                    if q.poll() is None:
                        q.kill()
            finally:
                try:
                    stdin.close()
                except BrokenPipeError:
                    pass

        t = threading.Thread(target=pump, name="proc-feed", daemon=True)
        t.start()
        codes = [p.wait() for p in procs]
        t.join()
        if failure:
            raise failure[0]
        for argv, p, rc, err in zip(argvs, procs, codes, errs):
            if rc != 0:
                err.seek(0, os.SEEK_END)
                err.seek(max(0, err.tell() - STDERR_TAIL))
                raise ToolFailed([str(a) for a in argv], rc, err.read().decode("utf-8", "replace"), hint)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for e in errs:
            e.close()
class Sink(_Child):
    """A running program fed through its stdin (zfs receive, btrfs receive...).

    ``write(data)`` feeds it; ``finish()`` closes stdin, waits and raises ToolFailed on a
    non-zero exit. stdout and stderr go to a temporary file so the program never blocks on them.
    """

    def __init__(self, argv: Sequence[str], *, env=None, extra_env=None, user=None, cwd=None,
                 hint: str | None = None):
        self._spawn(argv, "sink", env=env, extra_env=extra_env, user=user, cwd=cwd, hint=hint,
                    stdin=subprocess.PIPE, stdout="stderr")

    def write(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)
        except BrokenPipeError:
            # The program stopped reading: its exit status and stderr say why.
            self.proc.wait()
            raise ToolFailed(self.argv, self.proc.returncode, self.stderr_tail(), self.hint) from None

    def finish(self) -> None:
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self._wait_checked()


def wait_until(predicate, timeout: float = 60.0, what: str = "condition", interval: float = 0.05):
    """Poll ``predicate`` until it returns a truthy value; raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


COMMAND_ENV = "PGVAULT_COMMAND"
INSTALLED = "/usr/local/bin/pgvault"  # installed by scripts/setup.sh


def checkout_command() -> str:
    """This very checkout's pgvault, by path (the test harness's choice: tests run checkouts
    other than the installed one). Breaks when the checkout moves: not for production."""
    root = Path(__file__).resolve().parent.parent  # the checkout or site-packages holding pgvault
    return quote(["env", f"PYTHONPATH={root}", sys.executable, "-m", "pgvault"])


def pgvault_command(policy_file: str | os.PathLike | None = None) -> str:
    """How PostgreSQL (running as postgres) invokes pgvault, e.g. in archive_command and the
    restore_command a restore writes: ``$PGVAULT_COMMAND`` when set (the test harness sets it
    to the checkout under test), else the installed ``pgvault`` command, else this checkout."""
    base = os.environ.get(COMMAND_ENV) or (INSTALLED if os.access(INSTALLED, os.X_OK) else checkout_command())
    if policy_file:
        base += " " + quote(["--policy", str(policy_file)])
    return base


def spawn_detached(argv: Sequence[str], log_path: Path, *, nice: int = 0) -> int:
    """Start a background process in its own session (it outlives this one), its output
    appended to ``log_path`` (0600), at ``nice`` CPU priority from its first instruction.
    Returns its pid; never waits for it."""
    with open(log_path, "ab") as out:
        os.chmod(out.name, 0o600)
        child = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                 start_new_session=True, close_fds=True, cwd="/")
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, child.pid, nice)
        except OSError:
            pass
    return child.pid
