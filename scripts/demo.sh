#!/usr/bin/env bash
# Sets everything up (idempotently) and runs pgvault end to end in a sandbox.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/setup.sh"
VENV=${PGVAULT_VENV:-/opt/pgvault/venv}
export PATH="$VENV/bin:$PATH"
exec "$VENV/bin/pgvault" demo "$@"
