"""`bash scripts/dev.sh demo` (README quick start): the whole disaster-recovery path on a
throwaway cluster, proven.

1. start a PostgreSQL 15 cluster whose archive_command is `pitr archive-push %p`
   into a local-directory repository;
2. take a base backup with `pitr backup`;
3. commit numbered rows one transaction at a time, noting when each committed;
4. pick a time T between two commits and run `pitr restore --to T --start`;
5. print the rows that came back and check they are exactly the rows committed
   at or before T. Exit 1 if not. Everything is removed afterwards (--keep keeps it).

Runs as root (cluster commands as the unprivileged user $PITR_TEST_PGUSER,
default pgtest; initdb refuses root) or as a normal user.
"""

from __future__ import annotations

import getpass
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = os.geteuid() == 0
USER = os.environ.get("PITR_TEST_PGUSER", "pgtest") if ROOT else getpass.getuser()
BINDIR = Path(os.environ.get("PITR_TEST_PGBIN", "/usr/lib/postgresql/15/bin"))
PITR = Path(sys.executable).parent / "pitr"
ROWS = 10
PAUSE = 0.4


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def as_user(argv: list[str]) -> list[str]:
    if ROOT:
        return [shutil.which("runuser", path="/usr/sbin:/sbin:/usr/bin:/bin") or "runuser",
                "-u", USER, "--", *argv]
    return argv


def run(argv: list[str], *, user: bool = True, show: bool = True) -> str:
    full = as_user(argv) if user else argv
    if show:
        print("$ " + shlex.join(argv), flush=True)
    # PITR_TEST_* variables are for this script; pitr itself rejects unknown PITR_* names
    env = {k: v for k, v in os.environ.items() if not k.startswith("PITR_")}
    proc = subprocess.run(full, capture_output=True, text=True, cwd="/", env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"demo failed: {shlex.join(argv)} exited {proc.returncode}")
    return proc.stdout


def owned_dir(path: Path, mode: int) -> Path:
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    path.chmod(mode)
    if ROOT:
        pw = pwd.getpwnam(USER)
        os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    import psycopg

    keep = "--keep" in sys.argv
    work = owned_dir(Path(tempfile.mkdtemp(prefix="pitr-demo-")), 0o755)
    sock = owned_dir(work / "sock", 0o755)
    src, restored = work / "src", work / "restored"
    port, port2 = free_port(), free_port()
    cfg = work / "pitr.toml"
    repo = owned_dir(work / "repo", 0o700)
    cfg.write_text(f'stanza = "demo"\n[repository]\nurl = "file://{repo}"\n'
                   f'[archive]\nspool_dir = "{owned_dir(work / "spool", 0o700)}"\n'
                   f'[postgres]\nbindir = "{BINDIR}"\nuser = "{USER}"\npgdata = "{src}"\n'
                   f'dsn = "host={sock} port={port} user=postgres dbname=postgres"\n')
    cfg.chmod(0o644)
    pitr = [str(PITR), "--config", str(cfg)]
    ok = False
    try:
        say(f"a cluster archiving through pitr (user {USER}, port {port}, work dir {work})")
        run([str(BINDIR / "initdb"), "-D", str(src), "-U", "postgres", "--auth=trust",
             "--no-sync", "-E", "UTF8", "--locale=C"], show=False)
        with open(src / "postgresql.conf", "a") as fh:
            fh.write(f"port = {port}\nunix_socket_directories = '{sock}'\nlisten_addresses = ''\n"
                     f"fsync = off\nwal_level = replica\narchive_mode = on\n"
                     f"archive_command = '{PITR} --config {cfg} archive-push %p'\n")
        run([str(BINDIR / "pg_ctl"), "-D", str(src), "-l", str(work / "src.log"), "-w", "start"])
        dsn = f"host={sock} port={port} user=postgres dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("create table orders (n int primary key, note text)")

        say("a base backup")
        print(run([*pitr, "backup"]).strip())

        say(f"{ROWS} numbered rows, one transaction each, {PAUSE}s apart")
        marks: list[tuple[int, datetime, datetime]] = []
        with psycopg.connect(dsn, autocommit=True) as conn:
            for n in range(1, ROWS + 1):
                with conn.transaction():
                    row = conn.execute("insert into orders values (%s, 'order ' || %s) "
                                       "returning clock_timestamp()", (n, n)).fetchone()
                after = conn.execute("select clock_timestamp()").fetchone()
                assert row is not None and after is not None
                marks.append((n, row[0], after[0]))
                print(f"  row {n:2d} committed between {row[0]:%H:%M:%S.%f} and "
                      f"{after[0]:%H:%M:%S.%f}")
                time.sleep(PAUSE)
            seg = conn.execute("select pg_walfile_name(pg_switch_wal() - 1)").fetchone()
            assert seg is not None
            for _ in range(600):  # wait until the last segment is archived
                done = conn.execute("select last_archived_wal >= %s from pg_stat_archiver",
                                    (seg[0],)).fetchone()
                if done and done[0]:
                    break
                time.sleep(0.1)
        k = ROWS * 6 // 10
        t = marks[k - 1][2] + (marks[k][1] - marks[k - 1][2]) / 2
        target = t.isoformat()

        say(f"restore to T = {target} (after row {k}, before row {k + 1})")
        print(run([*pitr, "plan", "--to", target]).rstrip())
        print(run([*pitr, "restore", "--to", target, "--pgdata", str(restored), "--start",
                   "--port", str(port2)], user=not ROOT).rstrip())

        say("the rows that came back")
        with psycopg.connect(f"host={sock} port={port2} user=postgres dbname=postgres") as conn:
            got = [r[0] for r in conn.execute("select n from orders order by n").fetchall()]
        expected = [n for n, _, after in marks if after <= t]
        print(f"  restored rows: {got}")
        print(f"  committed at or before T: {expected}")
        ok = got == expected
        print("\nOK: exactly the rows committed at or before T came back." if ok else
              "\nFAIL: the restored rows differ from those committed at or before T.")
    finally:
        for d in (restored, src):
            if (d / "postmaster.pid").exists():
                subprocess.run(as_user([str(BINDIR / "pg_ctl"), "-D", str(d), "-m", "immediate",
                                        "-w", "stop"]), capture_output=True, cwd="/")
        if keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
