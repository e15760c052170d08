#!/usr/bin/env bash
# Installs everything pgvault's demo, tests and benchmarks need on Debian 12, idempotently.
# Usage: bash scripts/setup.sh        (as root; safe to run again)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
VENV=${PGVAULT_VENV:-/opt/pgvault/venv}
APT_PKGS=(postgresql-15 btrfs-progs zfs-fuse zstd lz4 pgbackrest rsync chromium
          python3-venv python3-dev util-linux procps iproute2 sudo
          patroni etcd-server etcd-client  # the HA tests' real Patroni cluster (pgvault/sandbox/ha.py)
          age gnupg)   # age: the stock CLI the encryption tests and README use; gnupg: bench/encryption_choice.py

need_apt=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  filtered=("${need_apt[@]}")
  if true; then
    echo "setup: installing apt packages: ${filtered[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Debian's postgresql-common would create and start a 'main' cluster; we never use it.
    mkdir -p /etc/postgresql-common
    grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf 2>/dev/null || \
      echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf
    apt-get install -y -qq --no-install-recommends "${filtered[@]}" >/dev/null
  fi
fi

# The virtualenv lives outside the checkout and is built on Debian's python3, so that the
# postgres user (which runs archive_command / restore_command) can execute it.
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtualenv $VENV"
  mkdir -p "$(dirname "$VENV")"
  /usr/bin/python3 -m venv "$VENV"
fi
stamp="$VENV/.pgvault-installed"
want=$(sha256sum "$here/pyproject.toml" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python dependencies into $VENV"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  "$VENV/bin/pip" install -q -e "$here[test]"
  echo "$want" > "$stamp"
else
  # Re-point the editable install at this checkout (CI clones elsewhere).
  "$VENV/bin/pip" install -q --no-deps -e "$here" >/dev/null
fi
chmod -R a+rX "$(dirname "$VENV")"
# `pgvault` on the PATH of every user (archive_command = 'pgvault wal-push %p' runs as postgres).
ln -sfn "$VENV/bin/pgvault" /usr/local/bin/pgvault
echo "setup: ok ($VENV)"
