"""What users deploy: systemd units, docker/, conf/. No Docker engine or systemd
manager runs here, so this checks everything that can be checked without one:
units pass `systemd-analyze verify` and name real pitr commands, the compose file
parses and references files that exist, the image installs pitr the way
`scripts/dev.sh setup` does, and conf/ matches what the code really does."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
DOCKER = ROOT / "docker"
CONF = ROOT / "conf"
PITR = Path(sys.executable).parent / "pitr"
INSTALLED_PITR = "/usr/local/bin/pitr"
EXPECTED_UNITS = {"pitr-agent.service", "pitr-backup.service", "pitr-backup.timer",
                  "pitr-expire.service", "pitr-expire.timer", "pitr-verify.service",
                  "pitr-verify.timer"}


# -- systemd ---------------------------------------------------------------------

def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections -> [(key, value)] in order; repeated keys kept (systemd allows them)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {raw!r}"
        sections.setdefault(current, []).append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def unit_files() -> list[Path]:
    return sorted(p for p in SYSTEMD.glob("pitr-*") if p.suffix in (".service", ".timer"))


def services() -> list[Path]:
    return [p for p in unit_files() if p.suffix == ".service"]


def test_every_unit_the_runbook_names_exists() -> None:
    missing = EXPECTED_UNITS - {p.name for p in unit_files()}
    assert not missing, f"systemd/ lacks {sorted(missing)}"


def test_every_timer_starts_an_existing_service() -> None:
    for timer in (p for p in unit_files() if p.suffix == ".timer"):
        unit = parse_unit(timer)
        target = (values(unit, "Timer", "Unit") or [timer.stem + ".service"])[0]
        assert (SYSTEMD / target).exists(), f"{timer.name} starts missing {target}"
        assert values(unit, "Timer", "OnCalendar"), timer.name
        assert values(unit, "Timer", "Persistent") == ["true"], \
            f"{timer.name}: Persistent=true, so a run missed while down happens at boot"
        assert values(unit, "Install", "WantedBy") == ["timers.target"], timer.name


def exec_start_argv(path: Path) -> list[str]:
    starts = values(parse_unit(path), "Service", "ExecStart")
    assert len(starts) == 1, f"{path.name}: expected one ExecStart, got {starts}"
    argv = shlex.split(starts[0].lstrip("-@:+!"))
    return argv


@pytest.mark.parametrize("path", services(), ids=lambda p: p.name)
def test_exec_start_names_a_real_pitr_command(path: Path) -> None:
    argv = exec_start_argv(path)
    assert argv[0] == INSTALLED_PITR, f"{path.name}: run {INSTALLED_PITR} (docs/setup.md)"
    # `--help` after the real arguments: click rejects an unknown command or option
    # before it prints help, so this proves the whole command line parses.
    proc = subprocess.run([str(PITR), *argv[1:], "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, f"{path.name}: `pitr {' '.join(argv[1:])}` is not a " \
                                 f"valid command line:\n{proc.stdout}{proc.stderr}"


HARDENING = {
    "User": "postgres",
    "Group": "postgres",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "PrivateTmp": "yes",
    "ProtectHome": "yes",
    "UMask": "0077",
}


@pytest.mark.parametrize("path", services(), ids=lambda p: p.name)
def test_services_run_as_postgres_and_are_hardened(path: Path) -> None:
    unit = parse_unit(path)
    yes = {"yes", "true", "on", "1"}
    for key, want in HARDENING.items():
        got = values(unit, "Service", key)[-1:]
        ok = got and (got[0] == want or (want == "yes" and got[0] in yes))
        assert ok, f"{path.name}: {key}={want}, got {got}"
    assert "-/etc/pitr/pitr.env" in values(unit, "Service", "EnvironmentFile"), \
        f"{path.name}: optional credentials file EnvironmentFile=-/etc/pitr/pitr.env"
    # Under ProtectSystem=strict only these are writable: pitr's state (spool,
    # local repository) must be among them.
    writable = " ".join(values(unit, "Service", "ReadWritePaths") +
                        ["/var/lib/" + d for d in
                         " ".join(values(unit, "Service", "StateDirectory")).split()])
    assert "/var/lib/pitr" in writable.split() or "-/var/lib/pitr" in writable.split(), \
        f"{path.name}: /var/lib/pitr must be writable (StateDirectory=pitr)"
    argv = exec_start_argv(path)
    env = values(unit, "Service", "Environment")
    assert ("PITR_CONFIG=/etc/pitr/pitr.toml" in " ".join(env)
            or argv[1:3] == ["--config", "/etc/pitr/pitr.toml"]), \
        f"{path.name}: config must come from /etc/pitr/pitr.toml"


def test_systemd_analyze_verify_accepts_every_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # scripts/setup-host.sh installs it; genuinely missing elsewhere
        pytest.skip("systemd-analyze not installed")
    # The units name /usr/local/bin/pitr (where docs/setup.md installs it); point the
    # copies at this virtualenv's pitr so verify checks a real executable.
    copies = []
    for path in unit_files():
        dest = tmp_path / path.name
        dest.write_text(path.read_text().replace(INSTALLED_PITR, str(PITR)))
        copies.append(str(dest))
    assert copies
    proc = subprocess.run([analyze, "verify", *copies], capture_output=True, text=True,
                          timeout=120)
    ours = [ln for ln in (proc.stdout + proc.stderr).splitlines()
            if str(tmp_path) in ln or "pitr" in ln]
    assert proc.returncode == 0 and not ours, proc.stdout + proc.stderr


# -- docker ----------------------------------------------------------------------

def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def entrypoint_modes() -> set[str]:
    text = (DOCKER / "entrypoint.sh").read_text()
    return set(re.findall(r"^\s{2}([a-z][a-z-]*)\)\s*$", text, re.M))


def test_compose_services_and_their_files() -> None:
    doc = compose()
    svcs = doc["services"]
    assert {"s3", "postgres", "agent", "backup"} <= set(svcs)
    declared_volumes = set(doc.get("volumes") or {})
    for name, svc in svcs.items():
        build = svc.get("build")
        if build:
            context = (DOCKER / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), f"{name}: dockerfile missing"
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0]
            if src.startswith((".", "/")):
                assert (DOCKER / src).exists(), f"{name}: bind mount {src} does not exist"
            else:
                assert src in declared_volumes, f"{name}: volume {src} not declared"
        deps = svc.get("depends_on") or []
        for dep in deps:
            assert dep in svcs, f"{name} depends on unknown service {dep}"
        if build:
            mode = (svc.get("command") or ["postgres"])[0]
            assert mode in entrypoint_modes(), f"{name}: entrypoint has no mode {mode!r}"


def test_compose_runs_the_same_weed_mini_as_the_tests(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from support.s3server import S3Server

    server = S3Server(tmp_path, weed="weed")  # not started: only its command line is used
    server.ports = {"master.port": 1, "master.port.grpc": 2, "volume.port": 3,
                    "volume.port.grpc": 4, "filer.port": 5, "filer.port.grpc": 6,
                    "s3.port": 7, "s3.port.grpc": 8, "admin.port": 9}

    def flags(argv: list[str]) -> set[str]:
        return {a.split("=", 1)[0] for a in argv if a.startswith("-")}

    test_argv = server._argv()
    cmd = compose()["services"]["s3"]["command"]
    assert test_argv[1] == cmd[0] == "mini"
    # Tests pin -volume.preStopSeconds=0 for fast shutdown; a long-running server keeps
    # the default. Every other flag is the same.
    assert flags(cmd) == flags(test_argv) - {"-volume.preStopSeconds"}


def test_compose_credentials_match_the_s3_identity() -> None:
    env = compose()["x-pitr"]["environment"]
    ident = json.loads((DOCKER / "s3.json").read_text())["identities"][0]["credentials"][0]
    assert env["PITR_REPOSITORY_ACCESS_KEY_ID"] == ident["accessKey"]
    assert env["PITR_REPOSITORY_SECRET_ACCESS_KEY"] == ident["secretKey"]


def test_docker_pitr_config_is_valid() -> None:
    from pitr.config import load

    cfg = load(DOCKER / "pitr.toml", env={})
    assert cfg.repository.url.startswith("s3://") and cfg.repository.path_style
    assert cfg.postgres.pgdata == "/var/lib/postgresql/data"


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def test_dockerfile_copies_files_that_exist_and_installs_like_dev_setup() -> None:
    ins = dockerfile_instructions()
    assert ins[0] == ("FROM", "debian:bookworm-slim")
    for word, rest in ins:
        if word == "COPY":
            *sources, _dest = rest.split()
            for src in sources:
                assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
    # What `pip install` needs to build pitr (checked by hand: a wheel builds from exactly
    # these; CI cannot reach an index to repeat that).
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    copied = {src for word, rest in ins if word == "COPY" for src in rest.split()[:-1]}
    assert {"pyproject.toml", project["readme"], "pitr"} <= copied
    runs = " && ".join(rest for word, rest in ins if word == "RUN")
    dev = (ROOT / "scripts" / "dev.sh").read_text()
    # The host recipe and the image run the same setup script with the same venv path...
    assert './scripts/setup-host.sh "$venv"' in dev and "venv=${VENV:-/opt/pitr-venv}" in dev
    assert "/scripts/setup-host.sh /opt/pitr-venv postgres" in runs
    # ...and the same pip install (dev.sh adds the test extras and an editable mode).
    pip = "-m pip install --quiet --disable-pip-version-check"
    assert pip in dev and pip in runs
    assert "pitr --version" in runs, "the build proves the installed pitr runs"
    entry = [rest for word, rest in ins if word == "ENTRYPOINT"]
    assert entry == ['["/usr/local/bin/pitr-entrypoint"]']


def test_entrypoint_is_valid_bash_and_calls_real_commands() -> None:
    script = DOCKER / "entrypoint.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert script.stat().st_mode & 0o111, "entrypoint.sh must be executable"
    code = "\n".join(ln for ln in script.read_text().splitlines()
                     if not ln.lstrip().startswith("#"))
    used = set(re.findall(r"(?:as_pg|exec_pg|--) pitr ([a-z][a-z-]+)", code))
    assert {"setup", "check", "agent", "backup"} <= used
    for cmd in sorted(used):
        proc = subprocess.run([str(PITR), cmd, "--help"], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, f"entrypoint.sh runs `pitr {cmd}`, which does not exist"


# -- conf/ -----------------------------------------------------------------------

# boto3 client method -> the IAM action it needs (multipart parts are PutObject).
S3_ACTIONS = {
    "put_object": "s3:PutObject",
    "create_multipart_upload": "s3:PutObject",
    "upload_part": "s3:PutObject",
    "complete_multipart_upload": "s3:PutObject",
    "abort_multipart_upload": "s3:AbortMultipartUpload",
    "get_object": "s3:GetObject",
    "head_object": "s3:GetObject",
    "list_objects_v2": "s3:ListBucket",
    "delete_objects": "s3:DeleteObject",
    "delete_object": "s3:DeleteObject",
    "list_multipart_uploads": "s3:ListBucketMultipartUploads",
    "list_parts": "s3:ListMultipartUploadParts",
    # storage tiers (docs/storage-tiers.md)
    "get_object_tagging": "s3:GetObjectTagging",
    "put_object_tagging": "s3:PutObjectTagging",
    "restore_object": "s3:RestoreObject",
    "get_bucket_lifecycle_configuration": "s3:GetLifecycleConfiguration",
    "put_bucket_lifecycle_configuration": "s3:PutLifecycleConfiguration",
}


def test_iam_policy_grants_exactly_what_the_s3_driver_calls() -> None:
    source = (ROOT / "pitr" / "storage" / "s3.py").read_text()
    called = set(re.findall(r"_client\.(\w+)\b", source)) | set(
        re.findall(r"get_paginator\(\"(\w+)\"\)", source))
    called -= {"get_paginator", "meta", "exceptions", "close"}
    unknown = called - set(S3_ACTIONS)
    assert not unknown, f"pitr/storage/s3.py calls {unknown}: add their IAM actions here " \
                        "and to conf/iam-policy.json"
    needed = {S3_ACTIONS[c] for c in called}
    policy = json.loads((CONF / "iam-policy.json").read_text())
    granted: set[str] = set()
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow"
        acts = st["Action"]
        granted |= {acts} if isinstance(acts, str) else set(acts)
    assert not any("*" in a for a in granted), "no wildcard actions"
    assert granted == needed, f"extra: {granted - needed}, missing: {needed - granted}"


def test_lifecycle_aborts_stale_uploads_and_never_expires_objects() -> None:
    rules = json.loads((CONF / "s3-lifecycle.json").read_text())["Rules"]
    enabled = [r for r in rules if r["Status"] == "Enabled"]
    assert any("AbortIncompleteMultipartUpload" in r for r in enabled)
    # Deleting is `pitr expire`'s job: a bucket rule would remove WAL a backup needs.
    assert not any("Expiration" in r for r in rules)


def test_postgresql_snippet_sets_what_pitr_setup_sets() -> None:
    from pitr.setup import REASONS, archive_commands

    conf: dict[str, str] = {}
    for line in (CONF / "postgresql.pitr.conf").read_text().splitlines():
        line = line.split("#", 1)[0].strip() if not line.lstrip().startswith(
            ("archive_command", "restore_command")) else line.strip()
        if "=" in line:
            k, v = line.split("=", 1)
            conf[k.strip()] = v.strip().strip("'")
    # summarize_wal is commented out: a PostgreSQL 15/16 server refuses unknown settings
    assert set(conf) == set(REASONS) - {"summarize_wal"}
    assert "\n#summarize_wal = on\n" in (CONF / "postgresql.pitr.conf").read_text()
    arch, rest = archive_commands(INSTALLED_PITR, "/etc/pitr/pitr.toml")
    assert conf["archive_command"] == arch and conf["restore_command"] == rest
    assert conf["wal_level"] == "replica" and conf["archive_mode"] == "on"


def test_every_pitr_variable_the_deploy_files_set_is_a_real_setting() -> None:
    # pitr rejects unknown PITR_* variables (a typo must not pass silently), so a
    # helper variable with that prefix in a unit or container would break every command.
    from pitr.config import schema

    known = {k.env for k in schema()} | {"PITR_CONFIG"}
    files = [*unit_files(), *DOCKER.iterdir(), ROOT / "scripts" / "setup-host.sh"]
    for path in files:
        if path.is_file():
            for name in set(re.findall(r"\bPITR_[A-Z0-9_]+", path.read_text())):
                assert name in known, f"{path.relative_to(ROOT)}: {name} is not a pitr setting"
