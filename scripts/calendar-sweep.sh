#!/usr/bin/env bash
# The calendar sweep (docs/development.md): run the tests of calendar logic once for
# every date in tests/support/dates.py's SWEPT_DATES.
#   - pure tests (retention, targets, planner, health, catalog) run with the process's
#     wall clock moved to noon of that date by libfaketime (Debian package `faketime`);
#   - the expire tests against SeaweedFS get the date injected (PITR_TEST_TODAY), since
#     S3 signatures must carry the real time.
# Usage: scripts/calendar-sweep.sh [VENV]   (default /opt/pitr-venv, made by `bash scripts/dev.sh setup`)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-/opt/pitr-venv}
command -v faketime >/dev/null || {
  echo "calendar-sweep: needs libfaketime: apt-get install faketime" >&2; exit 2; }
dates=$("$venv/bin/python" -c 'import sys; sys.path.insert(0, "tests")
from support.dates import SWEPT_DATES
print(" ".join(d.isoformat() for d in sorted(SWEPT_DATES)))')
pure=(tests/unit/test_retention.py tests/unit/test_retention_props.py
      tests/unit/test_retention_calendar.py tests/unit/test_targets.py
      tests/unit/test_planner.py tests/unit/test_planner_props.py tests/unit/test_health.py
      tests/unit/test_health_alerts.py tests/unit/test_health_verify_judge.py
      tests/unit/test_catalog.py)
# the expire tests whose expectations follow the calendar (the others are date-free)
integration=(tests/integration/test_expire.py -k "tiers or interrupted or dry_run")
failed=()
for d in $dates; do
  echo "== $d"
  PITR_TEST_TODAY=$d faketime "$d 12:00:00" "$venv/bin/pytest" -q -p no:cacheprovider \
    "${pure[@]}" | grep -E '^(FAILED|ERROR)|passed|failed' || failed+=("$d (pure)")
  PITR_TEST_TODAY=$d PITR_TEST_PGUSER=${PITR_TEST_PGUSER:-pgtest} "$venv/bin/pytest" -q \
    -p no:cacheprovider "${integration[@]}" | grep -E '^(FAILED|ERROR)|passed|failed' \
    || failed+=("$d (expire)")
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "calendar-sweep: FAILED on ${failed[*]}" >&2; exit 1
fi
echo "calendar-sweep: every date passed"
