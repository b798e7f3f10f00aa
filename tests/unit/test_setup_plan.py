"""The pure part of `pitr setup`: which settings change, and which need a restart."""

from __future__ import annotations

import shlex

from hypothesis import given
from hypothesis import strategies as st

from pitr.setup import (
    ServerSetting,
    archive_commands,
    conf_snippet,
    plan_settings,
    replaced_command_warnings,
)

ARCH, REST = archive_commands("/opt/pitr venv/bin/pitr", "/etc/pitr/pitr.toml")


def server(**values: str) -> dict[str, ServerSetting]:
    contexts = {"wal_level": "postmaster", "archive_mode": "postmaster",
                "max_wal_senders": "postmaster"}
    base = {"wal_level": "replica", "archive_mode": "off", "archive_command": "(disabled)",
            "archive_timeout": "0", "max_wal_senders": "10", "restore_command": ""}
    base.update(values)
    return {k: ServerSetting(k, v, contexts.get(k, "sighup")) for k, v in base.items()}


def by_name(changes):  # type: ignore[no-untyped-def]
    return {c.name: c for c in changes}


def test_fresh_initdb_needs_archive_mode_restart_and_commands() -> None:
    plan = by_name(plan_settings(server(), ARCH, REST))
    assert plan["archive_mode"].change and plan["archive_mode"].needs_restart
    assert plan["archive_command"].wanted == ARCH and not plan["archive_command"].needs_restart
    assert plan["archive_timeout"].wanted == "60s"
    assert not plan["wal_level"].change and not plan["max_wal_senders"].change
    assert plan["restore_command"].wanted == REST


def test_minimal_wal_level_gets_replica_and_wal_senders() -> None:
    plan = by_name(plan_settings(server(wal_level="minimal", max_wal_senders="0"), ARCH, REST))
    assert plan["wal_level"].wanted == "replica" and plan["wal_level"].needs_restart
    assert plan["max_wal_senders"].wanted == "10" and plan["max_wal_senders"].needs_restart


def test_settings_that_already_satisfy_pitr_are_kept() -> None:
    cur = server(wal_level="logical", archive_mode="always", archive_command=ARCH,
                 archive_timeout="5min", restore_command=REST)
    assert not [c.name for c in plan_settings(cur, ARCH, REST) if c.change]


def test_commands_are_shell_quoted_absolute_and_carry_no_credentials() -> None:
    argv = shlex.split(ARCH.replace("%p", "PATH"))
    assert argv == ["/opt/pitr venv/bin/pitr", "--config", "/etc/pitr/pitr.toml",
                    "archive-push", "PATH"]
    assert shlex.split(REST)[-3:] == ["archive-get", "%f", "%p"]


def test_snippet_quotes_values_for_postgresql_conf() -> None:
    text = conf_snippet(plan_settings(server(), "/x/pitr --config '/a b' archive-push %p", REST))
    assert "archive_command = '/x/pitr --config ''/a b'' archive-push %p'" in text
    assert "archive_mode = 'on'" in text


@given(st.sampled_from(["minimal", "replica", "logical"]),
       st.sampled_from(["off", "on", "always"]),
       st.sampled_from(["0", "30s", "1min"]),
       st.integers(0, 20))
def test_the_plan_always_ends_in_a_state_check_accepts(level: str, mode: str, timeout: str,
                                                        senders: int) -> None:
    plan = plan_settings(server(wal_level=level, archive_mode=mode, archive_timeout=timeout,
                                max_wal_senders=str(senders)), ARCH, REST)
    after = {c.name: c.wanted for c in plan}
    assert after["wal_level"] in ("replica", "logical")
    assert after["archive_mode"] in ("on", "always")
    assert after["archive_timeout"] != "0" and int(after["max_wal_senders"]) >= 3
    # only server-start settings ever ask for a restart
    assert all(c.needs_restart == (c.change and c.name in
               ("wal_level", "archive_mode", "max_wal_senders")) for c in plan)


def test_replacing_another_tools_archive_command_is_a_warning() -> None:
    plan = plan_settings(server(archive_command="cp %p /mnt/wal/%f"), ARCH, REST)
    warns = replaced_command_warnings(plan)
    assert len(warns) == 1 and "cp %p /mnt/wal/%f" in warns[0]
    assert replaced_command_warnings(plan_settings(server(), ARCH, REST)) == []
    old_pitr = "/old/bin/pitr --config /x archive-push %p"
    assert replaced_command_warnings(plan_settings(server(archive_command=old_pitr),
                                                   ARCH, REST)) == []
