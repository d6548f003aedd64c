#!/usr/bin/env bash
# Print a DATABASE_URL whose server is up, starting one if needed:
#   1. $DATABASE_URL if set;
#   2. the local server on 127.0.0.1:5432 (started with pg_ctlcluster when installed but down);
#   3. a private cluster in .pgdata/ from the system's PostgreSQL binaries (installing Debian's
#      postgresql package if there are none), on port 55432.
# Diagnostics go to stderr; stdout is only the URL.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

if [ -n "${DATABASE_URL:-}" ]; then echo "$DATABASE_URL"; exit 0; fi

ready() { pg_isready -q -h 127.0.0.1 -p "$1" 2>/dev/null; }

if command -v pg_isready >/dev/null && ready 5432; then
  echo "postgresql://postgres@127.0.0.1:5432/broadcaster"; exit 0
fi
if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ] && [ -n "$(ls /etc/postgresql 2>/dev/null)" ]; then
  ver=$(ls /etc/postgresql | sort -n | tail -1)
  echo "starting PostgreSQL $ver cluster 'main'" >&2
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start >&2 || true
  for _ in $(seq 1 30); do ready 5432 && break; sleep 0.5; done
  if ready 5432; then echo "postgresql://postgres@127.0.0.1:5432/broadcaster"; exit 0; fi
fi

# private cluster
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$bindir" ]; then
  echo "installing Debian's postgresql package" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
  bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi
data="$here/.pgdata"
port=55432
run_as() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }
if [ ! -f "$data/PG_VERSION" ]; then
  mkdir -p "$data"; [ "$(id -u)" = 0 ] && chown postgres "$data"
  run_as "$bindir/initdb -D '$data' -U postgres --auth=trust -E UTF8" >&2
fi
if ! ready $port; then
  run_as "$bindir/pg_ctl -D '$data' -o '-p $port -k /tmp -c listen_addresses=127.0.0.1' -l '$data/log' -w start" >&2
fi
echo "postgresql://postgres@127.0.0.1:$port/broadcaster"
