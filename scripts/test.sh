#!/usr/bin/env bash
# Sets everything up (idempotently) and runs the whole test suite.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/setup.sh"
cd "$here"
VENV=${PGVAULT_VENV:-/opt/pgvault/venv}
export PATH="$VENV/bin:$PATH"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider --doctest-modules pgvault tests "$@"
