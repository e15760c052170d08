"""The command PostgreSQL runs (archive_command, the restore_command a restore writes): the
installed `pgvault`, so a restored instance does not break when a checkout moves (issue 12
item 6); the harness points it at the checkout under test through $PGVAULT_COMMAND."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODE = "from pgvault.proc import pgvault_command; print(pgvault_command('/etc/p q.yaml'))"


def command(env: dict) -> str:
    base = {k: v for k, v in os.environ.items() if k != "PGVAULT_COMMAND"}
    return subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True,
                          env=dict(base, PYTHONPATH=str(ROOT), **env)).stdout.strip()


def test_postgres_runs_the_installed_pgvault_not_a_checkout_path():
    got = command({})
    if os.access("/usr/local/bin/pgvault", os.X_OK):
        assert got == "/usr/local/bin/pgvault --policy '/etc/p q.yaml'"
        assert "PYTHONPATH" not in got
    else:  # nothing installed: this checkout is all there is
        assert got.startswith(f"env PYTHONPATH={ROOT} ") and got.endswith(" -m pgvault --policy '/etc/p q.yaml'")


def test_the_harness_chooses_the_checkout_under_test():
    assert command({"PGVAULT_COMMAND": f"env PYTHONPATH={ROOT} python3 -m pgvault"}) == \
        f"env PYTHONPATH={ROOT} python3 -m pgvault --policy '/etc/p q.yaml'"
