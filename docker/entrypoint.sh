#!/usr/bin/env bash
# Entry point of the pitr image. Every mode runs pitr and PostgreSQL as the
# `postgres` user (pitr refuses root over postgres's data directory).
#
#   postgres       initdb on first start, `pitr setup --apply`, restart, `pitr check`,
#                  then run PostgreSQL in the foreground (the default)
#   agent          `pitr agent`: pushes .ready segments ahead of the archiver
#   backup-loop    `pitr backup` now and then every $BACKUP_INTERVAL_SECONDS seconds
#   make-bucket    create the repository's S3 bucket if it does not exist
#   pitr ARGS...   any pitr command, e.g. `pitr list`, `pitr restore --to ...`
set -euo pipefail

PGDATA=${PGDATA:-/var/lib/postgresql/data}
PGBIN=${ENTRYPOINT_PGBIN:-/usr/lib/postgresql/15/bin}
# The image's layout; the overrides exist so tests/integration can run this very
# script on a host (another OS user, socket directory and port).
PGUSER_OS=${ENTRYPOINT_OS_USER:-postgres}
SOCKDIR=${ENTRYPOINT_SOCKDIR:-/var/run/postgresql}
STATEDIR=${ENTRYPOINT_STATE_DIR:-/var/lib/pitr}
PGPORT=${PGPORT:-5432}
LISTEN=${ENTRYPOINT_LISTEN:-*}
export PGPORT

as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u "$PGUSER_OS" -- "$@"; else "$@"; fi
}

exec_pg() {
  if [ "$(id -u)" -eq 0 ]; then exec runuser -u "$PGUSER_OS" -- "$@"; else exec "$@"; fi
}

own_dirs() {
  # Named volumes start out root-owned; pitr and PostgreSQL need them private to postgres.
  if [ "$(id -u)" -eq 0 ]; then
    install -d -o "$PGUSER_OS" -g "$PGUSER_OS" -m 0700 "$(dirname "$PGDATA")" "$STATEDIR"
    install -d -o "$PGUSER_OS" -g "$PGUSER_OS" -m 0755 "$SOCKDIR"
  fi
}

wait_for_postgres() {
  until as_pg "$PGBIN/pg_isready" -q -h "$SOCKDIR" -p "$PGPORT"; do sleep 1; done
}

init_cluster() {
  echo "pitr-entrypoint: initdb $PGDATA"
  # Superuser named like the OS user: peer authentication over the socket.
  as_pg "$PGBIN/initdb" -D "$PGDATA" -U "$PGUSER_OS" -E UTF8 --locale=C.UTF-8 \
    --auth-local=peer --auth-host=scram-sha-256
  # The other containers of compose.yaml reach the server through the shared socket.
  printf "\nlisten_addresses = '%s'\nport = %s\nunix_socket_directories = '%s'\n" \
    "$LISTEN" "$PGPORT" "$SOCKDIR" >>"$PGDATA/postgresql.conf"
  as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -w -l "$PGDATA/setup.log" start
  # Writes archive_mode, archive_command, ... with ALTER SYSTEM and claims the stanza.
  as_pg pitr setup --apply
  as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -w -m fast restart -l "$PGDATA/setup.log"
  as_pg pitr check
  as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -w -m fast stop
}

mode=${1:-postgres}
if [ $# -gt 0 ]; then shift; fi
case "$mode" in
  postgres)
    own_dirs
    [ -s "$PGDATA/PG_VERSION" ] || init_cluster
    exec_pg "$PGBIN/postgres" -D "$PGDATA" "$@"
    ;;
  agent)
    own_dirs
    wait_for_postgres
    exec_pg pitr agent "$@"
    ;;
  backup-loop)
    own_dirs
    interval=${BACKUP_INTERVAL_SECONDS:-86400}
    wait_for_postgres
    while true; do
      # A failed backup is reported (and alerted on by pitr) and retried next round.
      as_pg pitr backup "$@" || echo "pitr-entrypoint: backup failed (exit $?)" >&2
      sleep "$interval"
    done
    ;;
  make-bucket)
    exec /opt/pitr-venv/bin/python - <<'PY'
import time
import boto3
from pitr import config

cfg = config.load()
r = cfg.repository
bucket = r.url[len("s3://"):].split("/", 1)[0]
client = boto3.client("s3", endpoint_url=r.endpoint_url or None, region_name=r.region or None,
                      aws_access_key_id=r.access_key_id or None,
                      aws_secret_access_key=r.secret_access_key or None)
for attempt in range(60):
    try:
        names = [b["Name"] for b in client.list_buckets().get("Buckets", [])]
        if bucket not in names:
            client.create_bucket(Bucket=bucket)
        print(f"bucket {bucket} ready")
        break
    except Exception as exc:  # S3 still starting
        print(f"waiting for S3 ({type(exc).__name__})")
        time.sleep(1)
else:
    raise SystemExit("S3 did not come up")
PY
    ;;
  pitr)
    own_dirs
    exec_pg pitr "$@"
    ;;
  *)
    exec "$mode" "$@"
    ;;
esac
