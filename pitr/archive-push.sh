# archive_command; `pitr setup` writes it as
#   /bin/sh /path/to/pitr/archive-push.sh PROOF_DIR %p /path/to/pitr --config FILE
#
# PostgreSQL waits for archive_command once per segment, and starting Python
# alone costs ~15 ms here. This answers 0 without Python when the agent left a
# proof that THIS file is stored in the repository PROOF_DIR belongs to: an
# empty file named <name>_<device>_<inode>_<size>_<mtime>_<ctime>, the one proof
# pitr itself checks (why it suffices: docs/design-fast-path.md). When the agent
# runs but has not stored the segment yet, it polls for the proof for at most
# about a second (50 x 20 ms) before it starts Python. Anything else, errors
# included, runs `pitr [--config FILE] archive-push %p`, which starts an agent
# if none runs, waits for it or pushes synchronously, exactly as without this
# script (docs/archiving-modes.md).
proofs=$1
path=$2
shift 2
name=${path##*/}
spool=${proofs%/*}
if [ -n "$name" ] && id=$(stat -L -c '%d_%i_%s_%.9Y_%.9Z' -- "$path" 2>/dev/null); then
  proof=$proofs/${name}_$id
  pid=
  [ -f "$proof" ] || { read -r pid <"${spool%/*}/agent.lock"; } 2>/dev/null || :
  case $pid in '' | 0 | *[!0-9]*) pid= ;; esac
  # The agent's lock file holds its pid (a stale pid only costs this bounded wait).
  n=0
  while [ -n "$pid" ] && [ ! -f "$proof" ] && [ $n -lt 50 ] &&
      [ ! -f "$spool/$name.error" ] && kill -0 "$pid" 2>/dev/null; do
    sleep 0.02
    n=$((n + 1))
  done
  if [ -f "$proof" ]; then
    echo "- $name fast-path-sh" >>"$spool/fastpath.log" 2>/dev/null || :
    exit 0
  fi
fi
exec "$@" archive-push "$path"
