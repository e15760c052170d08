"""Where identities (age private keys) come from at read time: ``--identity FILE`` or
``PGVAULT_IDENTITY`` (a file path, or the key text itself). Never from a policy, never on a
command line, never logged.

The CLI's ``--identity FILE`` reads the file once and puts the key text into
``PGVAULT_IDENTITY`` of this process, so the programs it starts inherit it: the restored
PostgreSQL runs ``pgvault wal-fetch`` as its restore_command as the postgres user, who cannot
read a root-only key file. An environment is readable only by its owner and root
(/proc/PID/environ), unlike a command line.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import UsageError
from . import age

ENV = "PGVAULT_IDENTITY"
_cache: dict[str, list[bytes]] = {}


def parse(text: str, where: str) -> list[bytes]:
    """Every ``AGE-SECRET-KEY-1…`` line of an age identity file (comments ignored)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.upper().startswith("AGE-SECRET-KEY-"):
            try:
                out.append(age.parse_identity(line))
            except ValueError as exc:
                raise UsageError(f"{where}: an identity line is not a valid age key ({exc})",
                                 "give the file age-keygen wrote") from None
    if not out:
        raise UsageError(f"{where} holds no age identity (no AGE-SECRET-KEY-1… line)", "give the file age-keygen wrote")
    return out


def read_file(path: str | os.PathLike) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read the identity file {path}: {exc.strerror}",
                         "give a readable age identity file with --identity FILE or PGVAULT_IDENTITY") from None


def use_file(path: str | os.PathLike) -> None:
    """``--identity FILE``: check it and hand the key to this process and its children."""
    text = read_file(path)
    parse(text, f"identity file {path}")
    os.environ[ENV] = text


def identities() -> list[bytes]:
    """The identities this process was given (empty when none)."""
    value = os.environ.get(ENV, "")
    if not value.strip():
        return []
    if value in _cache:
        return _cache[value]
    if "AGE-SECRET-KEY-" in value.upper():
        ids = parse(value, ENV)
    else:
        ids = parse(read_file(value.strip()), f"identity file {value.strip()} ({ENV})")
    _cache[value] = ids
    return ids


def recipients_opened() -> set[str]:
    """The recipients (public keys) the given identities open."""
    return {age.identity_recipient(s) for s in identities()}


def short(recipient: str) -> str:
    """A recipient as messages quote it: its first and last characters (enough to tell keys apart).

    >>> short("age1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqxyz123")
    'age1qqqqqqqq…xyz123'
    """
    return recipient if len(recipient) <= 24 else f"{recipient[:12]}…{recipient[-6:]}"


def missing_key(recipients: list[str] | None, what: str) -> "KeyRequired | None":
    """Why the identities given cannot open something encrypted to ``recipients`` (None: they can)."""
    from ..errors import KeyRequired

    if not recipients:
        return None
    need = ", ".join(recipients)
    ids = identities()
    if not ids:
        return KeyRequired(f"{what} is encrypted; no identity was given (it opens with the private key of one of: {need})",
                           f"pass the age identity file with --identity FILE, or set {ENV} to its path; "
                           "`age-keygen -y FILE` prints the recipient a key file opens")
    mine = recipients_opened()
    if mine & set(recipients):
        return None
    return KeyRequired(f"{what} is encrypted to {need}; the identity given is for {', '.join(sorted(mine))}",
                       "pass the identity of one of those recipients (an old backup needs the key of its time, "
                       "or the break-glass key)")
