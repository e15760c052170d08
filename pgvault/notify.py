"""Tell someone: on a failed job, a failed drill, or a broken objective, run the policy's
notify command (JSON payload on stdin) and/or POST the payload to its webhook.

Notifying is best effort by contract: a failure to notify is logged and never raised, so it can
never turn a successful backup into a failed one or hide the original error. Credentials come
from the environment (``${VAR}`` in the webhook URL or header values) and are never logged:
messages are scrubbed of every substituted value before they reach a log line.

Callers: the engine after a failed run (``job_failed``), the drill runner after a failed drill
(``drill_failed``), and ``pgvault status --notify`` / ``pgvault check --notify`` on a change of
state of any item (``objective_broken`` when it becomes CRITICAL, ``objective_restored`` when it
is OK again)."""
from __future__ import annotations

import json
import logging
import os
import re
import socket
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("pgvault.notify")

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Missing(Exception):
    pass


def expand(template: str, env: dict | None = None) -> tuple[str, list[str]]:
    """Replace ${VAR} from the environment; return the text and the substituted values (secrets).

    >>> expand("Bearer ${T}", {"T": "s3cr3t"})
    ('Bearer s3cr3t', ['s3cr3t'])
    """
    env = os.environ if env is None else env
    secrets: list[str] = []

    def sub(m):
        if m.group(1) not in env:
            raise _Missing(m.group(1))
        secrets.append(env[m.group(1)])
        return env[m.group(1)]

    return _VAR.sub(sub, template), secrets


def scrub(text: str, secrets: list[str]) -> str:
    """Hide secrets in a message.

    >>> scrub("401 for token abc", ["abc"])
    '401 for token ***'
    """
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


def payload(policy, event: dict) -> dict:
    """The JSON document every target receives."""
    from . import __version__

    doc = {"source": "pgvault", "version": __version__, "cluster": policy.cluster.name, "host": socket.gethostname(),
           "time": datetime.now(timezone.utc).isoformat()}
    doc.update(event)
    return doc


def _run_command(cfg, body: bytes) -> None:
    from . import proc
    from .errors import PgvaultError

    try:
        proc.run(cfg.command, input=body, timeout=cfg.command_timeout.total_seconds())
    except PgvaultError as exc:
        log.warning("notify command %s failed: %s", proc.quote(cfg.command), exc.message)
        return
    log.info("notify command %s ran", proc.quote(cfg.command[:1]))


def _post_webhook(hook, body: bytes) -> None:
    import urllib.error
    import urllib.request

    secrets: list[str] = []
    try:
        url, s = expand(hook.url)
        secrets += s
        headers = {"Content-Type": "application/json", "User-Agent": "pgvault"}
        for name, value in hook.headers.items():
            headers[name], s = expand(value)
            secrets += s
    except _Missing as exc:
        log.warning("notify webhook %s not sent: environment variable %s is not set", hook.url, exc.args[0])
        return
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=hook.timeout.total_seconds()) as resp:
            log.info("notify webhook %s answered %s", hook.url, resp.status)
    except urllib.error.HTTPError as exc:
        log.warning("notify webhook %s answered HTTP %s", hook.url, exc.code)
    except Exception as exc:  # noqa: BLE001 — any failure to notify is logged, never raised
        log.warning("notify webhook %s failed: %s", hook.url, scrub(f"{type(exc).__name__}: {exc}", secrets))


def notify(policy, event: dict) -> bool:
    """Send one event ({"event": "job_failed" | "drill_failed" | "objective_broken" |
    "objective_restored", "message": ..., ...}) to the configured targets. Never raises;
    returns whether the event was of a configured kind (so something was attempted)."""
    cfg = policy.notify
    if event.get("event") not in cfg.events or not (cfg.command or cfg.webhook):
        return False
    try:
        body = json.dumps(payload(policy, event), default=str).encode()
    except (TypeError, ValueError) as exc:
        log.warning("notify: event could not be encoded: %s", exc)
        return False
    for send, target in ((_run_command, cfg if cfg.command else None), (_post_webhook, cfg.webhook)):
        if target is None:
            continue
        try:
            send(target, body)
        except Exception as exc:  # noqa: BLE001 — never fatal
            log.warning("notify failed: %s", f"{type(exc).__name__}")
    return True


def state_file(policy) -> Path:
    """Where the last notified states are remembered (the engine's state directory)."""
    from .statedir import state_dir

    return state_dir(policy.state_dir, policy.cluster.name) / "notify.json"


def transitions(previous: dict[str, str], items: list[dict]) -> tuple[list[dict], dict[str, str]]:
    """Events for items that became CRITICAL or came back to OK since ``previous`` (key ->
    state); returns them and the new memory. An unchanged problem is reported once, not on
    every run.

    >>> a = {"kind": "wal", "name": "wal", "site": "s3", "state": "CRITICAL", "message": "lag"}
    >>> ev, mem = transitions({}, [a])
    >>> [e["event"] for e in ev], mem
    (['objective_broken'], {'wal/wal/s3': 'CRITICAL'})
    >>> transitions(mem, [a])[0], [e["event"] for e in transitions(mem, [dict(a, state="OK")])[0]]
    ([], ['objective_restored'])
    """
    events, memory = [], {}
    for i in items:
        key = f"{i['kind']}/{i['name']}/{i['site'] or ''}"
        memory[key] = i["state"]
        before = previous.get(key, "OK")
        if i["state"] == "CRITICAL" and before != "CRITICAL" and i["kind"] == "split_brain":
            events.append({"event": "split_brain", "state": i["state"], "item": i, "message": i["message"],
                           "hint": i.get("hint")})
        elif i["state"] == "CRITICAL" and before != "CRITICAL":
            events.append({"event": "objective_broken", "state": i["state"], "item": i, "message": i["message"]})
        elif i["state"] == "OK" and before == "CRITICAL":
            events.append({"event": "objective_restored", "state": i["state"], "item": i, "message": i["message"]})
    return events, memory


def notify_changes(policy, items: list[dict]) -> list[dict]:
    """Compare with the remembered states, notify the transitions, remember the new states.
    A state directory that cannot be written is logged; the events are still sent."""
    path = state_file(policy)
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        previous = {}
    events, memory = transitions(previous if isinstance(previous, dict) else {}, items)
    for e in events:
        notify(policy, e)
    try:
        from .errors import PgvaultError
        from .fsutil import write_atomic
        from .statedir import ensure_dir

        ensure_dir(path.parent)
        write_atomic(path, json.dumps(memory, indent=1).encode())
    except (OSError, PgvaultError) as exc:
        log.warning("notify: cannot remember states in %s: %s", path, exc)
    return events
