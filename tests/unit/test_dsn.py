"""postgres.dsn is parsed by libpq's own parser (pitr/pg/conn.py), URIs included."""

from __future__ import annotations

import pytest

from pitr.errors import ConfigError
from pitr.pg.conn import dsn_user, dsn_without_password, parse_dsn


@pytest.mark.parametrize(("dsn", "user"), [
    ("host=/run/pg user=postgres", "postgres"),
    ("user='app owner' host=db", "app owner"),
    (r"user='a\'b' dbname=x", "a'b"),
    ("postgresql://app:secret@db:5432/x", "app"),
    ("postgres://db/x?user=fromquery&sslmode=require", "fromquery"),
    ("postgresql://%61pp@db/x", "app"),
    ("host=db dbname=x", None),
    ("", None),
])
def test_dsn_user(dsn: str, user: str | None) -> None:
    assert dsn_user(dsn) == user


@pytest.mark.parametrize(("dsn", "password"), [
    ("host=/run/pg user=postgres", None),
    ("host=db password=s3cr3t user=x", "s3cr3t"),
    ("password='a b' host=db", "a b"),
    ("postgresql://app:p%40ss@db:5432/x", "p@ss"),
    ("postgres://db/x?sslmode=require&password=qs3", "qs3"),
    ("postgres://db/x?password=qs3&sslmode=require", "qs3"),
])
def test_dsn_without_password_keeps_every_other_setting(dsn: str, password: str | None) -> None:
    clean, found = dsn_without_password(dsn)
    assert found == password
    expected = {k: v for k, v in parse_dsn(dsn).items() if k != "password"}
    assert parse_dsn(clean) == expected
    assert password is None or password not in clean
    if password is None:
        assert clean == dsn  # nothing to remove: passed on as written


def test_uri_and_key_value_forms_mean_the_same() -> None:
    assert parse_dsn("postgresql://app@db:5433/x?sslmode=require") == parse_dsn(
        "host=db port=5433 user=app dbname=x sslmode=require")


def test_a_bare_word_is_a_database_name() -> None:
    assert parse_dsn("appdb") == {"dbname": "appdb"}
    assert dsn_without_password("appdb") == ("appdb", None)


@pytest.mark.parametrize("dsn", ["host=db garbage", "host='unterminated", "postgresql://db/x?bogus=1"])
def test_a_malformed_dsn_is_a_config_error(dsn: str) -> None:
    with pytest.raises(ConfigError, match=r"postgres\.dsn"):
        parse_dsn(dsn)
