"""The one error hierarchy: every error pgvault raises on purpose carries a message, an
optional hint and the exit code the CLI root turns it into. Only ``pgvault.cli`` catches."""
from __future__ import annotations

# Exit codes (documented in README.md). Nagios-style codes for `check`/`status` live in
# pgvault.cli.check; these are the codes of every other command.
EXIT_OK = 0
EXIT_FAILED = 1        # the operation ran and failed (a backup, a restore, a drill, damage found)
EXIT_USAGE = 2         # bad input: invalid policy, unknown job, bad argument
EXIT_ENVIRONMENT = 3   # something outside pgvault is missing or unreachable (tool, site, server)
EXIT_BUG = 70          # an unexpected exception: a bug in pgvault


class PgvaultError(Exception):
    """Base error: ``message`` says what happened to which object, ``hint`` the likely fix."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str | None = None, *, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def render(self) -> str:
        text = f"ERROR: {self.message}"
        if self.hint:
            text += "".join(f"\nHINT: {line}" for line in self.hint.splitlines())
        return text


class UsageError(PgvaultError):
    exit_code = EXIT_USAGE


class PolicyError(UsageError):
    """An invalid policy; ``problems`` holds every problem as (dotted path, message, hint)."""

    def __init__(self, source: str, problems: list[tuple[str, str, str | None]]):
        self.source = source
        self.problems = problems
        lines = [f"{path}: {msg}" + (f" (HINT: {hint})" if hint else "") for path, msg, hint in problems]
        super().__init__(f"invalid policy {source}: {len(problems)} problem(s)\n" + "\n".join(lines))

    def render(self) -> str:
        return f"ERROR: {self.message}"


class ToolNotFound(PgvaultError):
    exit_code = EXIT_ENVIRONMENT


class ToolFailed(PgvaultError):
    """A subprocess exited non-zero: carries argv, exit code and the tail of its stderr."""

    def __init__(self, argv: list[str], returncode: int, stderr_tail: str, hint: str | None = None):
        self.argv = argv
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        prog = argv[0].rsplit("/", 1)[-1] if argv else "?"
        msg = f"{prog} exited with code {returncode}"
        if stderr_tail.strip():
            msg += ":\n  " + "\n  ".join(stderr_tail.strip().splitlines()[-12:])
        super().__init__(msg, hint)


class SiteError(PgvaultError):
    exit_code = EXIT_ENVIRONMENT


class SiteUnreachable(SiteError):
    pass


class ObjectNotFound(SiteError):
    """``Site.get`` of a key that does not exist — the same exception on every driver."""

    exit_code = EXIT_FAILED

    def __init__(self, site: str, key: str):
        self.site = site
        self.key = key
        super().__init__(f"site {site!r}: no object {key!r}")


class ObjectLocked(SiteError):
    """The store refused to delete an object under an Object Lock retention."""

    exit_code = EXIT_FAILED


class ClusterMismatch(PgvaultError):
    exit_code = EXIT_USAGE


class DatabaseError(PgvaultError):
    exit_code = EXIT_ENVIRONMENT


class IntegrityError(PgvaultError):
    """Stored bytes do not match what the manifest promised."""


class RestoreRefused(PgvaultError):
    exit_code = EXIT_USAGE


class NotSupported(PgvaultError):
    exit_code = EXIT_USAGE


class KeyRequired(PgvaultError):
    """Encrypted data and no identity (private key) that opens it: names what and which key."""

    exit_code = EXIT_USAGE
