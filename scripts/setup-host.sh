#!/usr/bin/env bash
# Prepare a machine for pitr's demo and tests: PostgreSQL 15, a non-root OS user
# for test clusters (initdb refuses root), and a virtualenv that user can execute
# (a Python under /root, e.g. pyenv, is mode 0700 and unreachable for it).
set -euo pipefail
venv=${1:-/opt/pitr-venv}
pguser=${2:-pgtest}

need_apt=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need_apt+=(postgresql-15 postgresql-client-15)
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
command -v runuser >/dev/null || need_apt+=(util-linux)
# The tests check the systemd units with `systemd-analyze verify`; the demo and images skip
# it (SETUP_HOST_NO_SYSTEMD=1). The tests also run the openssl and zstd command-line tools
# (a TLS S3 server, `zstd -d` on a stored object), which a bare Debian 12 lacks: without
# them those tests would only be skipped (SETUP_HOST_TEST_TOOLS=1 installs them).
[ -n "${SETUP_HOST_NO_SYSTEMD:-}" ] || command -v systemd-analyze >/dev/null || need_apt+=(systemd)
if [ -n "${SETUP_HOST_TEST_TOOLS:-}" ]; then
  command -v openssl >/dev/null || need_apt+=(openssl)
  command -v zstd >/dev/null || need_apt+=(zstd)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: please install ${need_apt[*]} (needs root)" >&2; exit 1
  fi
  echo "setup: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # Debian's package creates and starts a main cluster we do not use.
  if command -v pg_dropcluster >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q '^15 main'; then
    pg_dropcluster --stop 15 main || true
  fi
fi

if [ "$(id -u)" -eq 0 ] && ! id "$pguser" >/dev/null 2>&1; then
  echo "setup: creating OS user $pguser for test clusters"
  useradd --system --create-home --shell /bin/bash "$pguser"
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating virtualenv $venv"
  mkdir -p "$(dirname "$venv")"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
fi
chmod -R a+rX "$venv"
