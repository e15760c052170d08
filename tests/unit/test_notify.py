"""notify(): a real local HTTP server and real commands; every failure is logged, never raised,
and no credential reaches a log line."""
from __future__ import annotations

import http.server
import json
import logging
import socket
import threading

import pytest
import yaml

from pgvault.notify import notify
from pgvault.policy.load import parse_policy


class Answer500(http.server.BaseHTTPRequestHandler):
    bodies: list = []

    def do_POST(self):
        Answer500.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Answer500.bodies = []
    s = http.server.HTTPServer(("127.0.0.1", 0), Answer500)
    threading.Thread(target=s.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{s.server_port}"
    s.shutdown()
    s.server_close()


def policy(notify_section: dict):
    return parse_policy(yaml.safe_dump({
        "version": 1, "cluster": {"name": "main", "conninfo": "host=/tmp"},
        "sites": {"a": {"type": "local", "path": "/srv/a"}}, "notify": notify_section}))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_error_and_refused_connection_are_logged_without_secrets(server, caplog, monkeypatch):
    monkeypatch.setenv("PGVAULT_HOOK_SECRET", "hunter2-path")
    monkeypatch.setenv("PGVAULT_WEBHOOK_TOKEN", "hunter2-token")
    caplog.set_level(logging.INFO, logger="pgvault")
    event = {"event": "job_failed", "job": "nightly", "message": "pg_dump exited with code 1"}
    hook = {"url": server + "/x/${PGVAULT_HOOK_SECRET}", "headers": {"Authorization": "Bearer ${PGVAULT_WEBHOOK_TOKEN}"}}
    assert notify(policy({"webhook": hook}), event) is True
    assert Answer500.bodies[0]["job"] == "nightly" and Answer500.bodies[0]["event"] == "job_failed"
    hook["url"] = f"http://127.0.0.1:{closed_port()}/x/${{PGVAULT_HOOK_SECRET}}"
    assert notify(policy({"webhook": hook}), event) is True
    text = caplog.text
    assert "answered HTTP 500" in text and "failed: URLError" in text
    assert "${PGVAULT_HOOK_SECRET}" in text  # the template is named ...
    assert "hunter2" not in text              # ... never what it expands to


def test_events_not_configured_are_not_sent(server):
    p = policy({"events": ["drill_failed"], "webhook": {"url": server}})
    assert notify(p, {"event": "job_failed", "message": "x"}) is False
    assert Answer500.bodies == []


def test_command_timeout_and_missing_program_are_logged(caplog, tmp_path):
    caplog.set_level(logging.WARNING, logger="pgvault")
    assert notify(policy({"command": ["sleep", "5"], "command_timeout": "0.2s"}), {"event": "job_failed"}) is True
    assert notify(policy({"command": [str(tmp_path / "no-such-pager")]}), {"event": "job_failed"}) is True
    assert "timed out" in caplog.text and "no-such-pager" in caplog.text
