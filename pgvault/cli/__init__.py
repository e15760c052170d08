"""The command line. This root is the only place errors become exit codes and messages.

Commands are loaded lazily from an explicit table, so `pgvault wal-push` and `pgvault tick`
import only what they use."""
from __future__ import annotations

import importlib
import logging
import os
import sys
import tempfile
import traceback

import click

from ..errors import EXIT_BUG, PgvaultError

# name -> "module:function". Adding a command is one line.
COMMANDS = {
    "check": "pgvault.cli.check:check",
    "backup": "pgvault.cli.backup:backup",
    "list": "pgvault.cli.catalog:list_cmd",
    "verify": "pgvault.cli.catalog:verify",
    "restore": "pgvault.cli.restore:restore",
    "drill": "pgvault.cli.drill:drill",
    "status": "pgvault.cli.status:status",
    "demo": "pgvault.cli.demo:demo",
    "lab": "pgvault.cli.lab:lab",
    "wal-push": "pgvault.cli.wal:wal_push",
    "wal-fetch": "pgvault.cli.wal:wal_fetch",
    "wal-ship": "pgvault.cli.wal:wal_ship",
    "wal-status": "pgvault.cli.wal:wal_status",
    "tick": "pgvault.cli.tick:tick",
    "schedule": "pgvault.cli.schedule:schedule",
    "state": "pgvault.cli.state:state",
    "expire": "pgvault.cli.expire:expire",
    "pin": "pgvault.cli.expire:pin",
    "unpin": "pgvault.cli.expire:unpin",
    "snapshot": "pgvault.cli.snapshot:snapshot",
    "find": "pgvault.cli.find:find",
    "relations": "pgvault.cli.find:relations_cmd",
    "windows": "pgvault.cli.windows:windows_cmd",
    "report": "pgvault.cli.report:report",
    "standby": "pgvault.cli.standby:standby",
    "quarantine": "pgvault.cli.quarantine:quarantine",
}


# Commands that, once they return, have nothing left to do: every write is durable and every
# thread joined. main() ends the process for them without the interpreter's teardown, which
# frees every imported module's objects one by one (0.1-0.15 s for `backup`, boto3's are many).
FAST_EXIT = {"backup"}
_invoked: list[str] = []


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        _invoked.append(name)
        mod, attr = target.split(":")
        cmd = getattr(importlib.import_module(mod), attr)
        if not any(p.name == "sub_policy" for p in cmd.params):
            # `pgvault check --policy FILE` reads as naturally as `pgvault --policy FILE check`.
            cmd.params.append(click.Option(["--policy", "-p", "sub_policy"], metavar="FILE", expose_value=False,
                                           callback=_set_policy, help="policy file (same as the global --policy)"))
        if not any(p.name == "sub_identity" for p in cmd.params):
            cmd.params.append(click.Option(["--identity", "sub_identity"], metavar="FILE", expose_value=False,
                                           callback=_set_identity, help="age identity file (same as the global --identity)"))
        return cmd


def _set_identity(_ctx, _param, value):
    if value:
        from ..crypt.keys import use_file

        use_file(value)


def _set_policy(ctx, _param, value):
    if value:
        ctx.find_root().obj["policy_file"] = value


class JsonFormatter(logging.Formatter):
    def format(self, record):
        import json
        from datetime import datetime, timezone

        doc = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
               "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        for k in ("job", "site", "backup_id", "event"):
            if hasattr(record, k):
                doc[k] = getattr(record, k)
        return json.dumps(doc)


def setup_logging(verbose: int, fmt: str) -> None:
    level = logging.WARNING - 10 * verbose
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger("pgvault")
    root.handlers[:] = [handler]
    root.setLevel(max(level, logging.DEBUG))
    root.propagate = False
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--policy", "-p", "policy_file", envvar="PGVAULT_POLICY", metavar="FILE",
              help="policy file (default $PGVAULT_POLICY, then /etc/pgvault/policy.yaml)")
@click.option("--identity", "identity_file", metavar="FILE", callback=_set_identity, expose_value=False,
              help="age identity (private key) file to decrypt encrypted backups and WAL; or set $PGVAULT_IDENTITY "
                   "to its path (never the key on a command line)")
@click.option("-v", "--verbose", count=True, help="more log output (-vv for debug)")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="log line format on stderr")
@click.version_option(package_name="pgvault")
@click.pass_context
def cli(ctx, policy_file, verbose, log_format):
    """pgvault: backups you can prove restore."""
    setup_logging(verbose, log_format)
    ctx.obj = {"policy_file": policy_file, "log_format": log_format}


def load(ctx):
    """The policy for this invocation (loaded once)."""
    from ..policy import load_policy

    obj = ctx.find_root().obj
    if "policy" not in obj:
        obj["policy"] = load_policy(obj["policy_file"])
    return obj["policy"]


def _exit_now(code: int) -> None:
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _gave_up_on_a_site() -> bool:
    """Whether a read-only command abandoned a site probe that still runs (its answer came
    too late to be wanted; the interpreter's teardown would only wait on its socket)."""
    mod = sys.modules.get("pgvault.sites.readonly")
    return bool(mod and mod.abandoned())


def main(argv=None) -> None:
    try:
        rv = cli.main(args=argv, prog_name="pgvault", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
        if _invoked and set(_invoked) <= FAST_EXIT:
            _exit_now(code)
        if _gave_up_on_a_site():
            _exit_now(code)  # a read-only command's probe thread still hangs on a dead site: not waited for
        sys.exit(code)
    except PgvaultError as exc:
        click.echo(exc.render(), err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except BaseException:
        fd, path = tempfile.mkstemp(prefix="pgvault-crash-", suffix=".txt")
        with os.fdopen(fd, "w") as fh:
            traceback.print_exc(file=fh)
        click.echo(f"ERROR: unexpected internal error (this is a bug in pgvault): {sys.exc_info()[1]!r}\n"
                   f"HINT: details were written to {path}; please report them", err=True)
        sys.exit(EXIT_BUG)
