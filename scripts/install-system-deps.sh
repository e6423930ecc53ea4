#!/usr/bin/env bash
# Installs the real servers the integration tests start: redis-server, mosquitto,
# prosody and ejabberd (each with its SQLite driver, for room archives), PostgreSQL and
# Debian's chromium; docker-compose (v1, Debian's) to validate docker-compose.yml without a
# Docker engine (make compose-check); nginx-light for the compose file's proxy locally. Runs apt-get only for what is missing.
set -euo pipefail

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null || need+=(mosquitto-clients)
command -v prosody >/dev/null || need+=(prosody)
# Prosody's SQLite driver: the shipped config keeps message archives in SQLite.
dpkg -s lua-dbi-sqlite3 >/dev/null 2>&1 || need+=(lua-dbi-sqlite3)
[ -x /usr/sbin/ejabberdctl ] || need+=(ejabberd)
ls -d /usr/lib/erlang/lib/p1_sqlite3-* >/dev/null 2>&1 || need+=(erlang-p1-sqlite3)
command -v chromium >/dev/null || need+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v docker-compose >/dev/null || need+=(docker-compose)
# nginx: the compose file's proxy, run by make stack and the topology test.
[ -x /usr/sbin/nginx ] || need+=(nginx-light)

if [ ${#need[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO=sudo; else
    echo "missing system packages: ${need[*]} (run as root, or install them with apt-get)" >&2
    exit 1
  fi
else
  SUDO=
fi
echo "installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q "${need[@]}"
