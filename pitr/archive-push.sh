# archive_command when `pitr agent` runs; `pitr setup` writes it as
#   /bin/sh /path/to/pitr/archive-push.sh PROOF_DIR %p /path/to/pitr --config FILE
#
# PostgreSQL waits for archive_command once per segment, and starting Python
# alone costs ~15 ms here. This answers 0 without Python when the agent left a
# proof that THIS file is stored in the repository PROOF_DIR belongs to: an
# empty file named <name>_<device>_<inode>_<size>_<mtime>_<ctime> (why the
# identity suffices: pitr/wal/spool.py). Anything else, errors included, runs
# `pitr [--config FILE] archive-push %p`, which waits for the agent or pushes
# synchronously, exactly as without this script.
proofs=$1
path=$2
shift 2
name=${path##*/}
if id=$(stat -L -c '%d_%i_%s_%.9Y_%.9Z' -- "$path" 2>/dev/null) &&
    [ -n "$name" ] && [ -f "$proofs/${name}_$id" ]; then
  echo "- $name fast-path-sh" >>"${proofs%/*}/fastpath.log" 2>/dev/null || :
  exit 0
fi
exec "$@" archive-push "$path"
