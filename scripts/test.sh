#!/usr/bin/env bash
# Sets everything up (idempotently) and runs the whole test suite.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/setup.sh"
cd "$here"
VENV=${PGVAULT_VENV:-/opt/pgvault/venv}
export PATH="$VENV/bin:$PATH"
# Two workers (the machine has two cores; most tests wait on PostgreSQL, Barman or S3), whole
# files per worker so module-scoped scenes (a cluster with its backups) are built once.
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider --doctest-modules -n 2 --dist loadfile --durations=25 pgvault tests "$@"
