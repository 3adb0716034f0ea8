from __future__ import annotations

import pytest

from covey.core import ConfigError, CoveyConfig, Reason


def test_defaults_need_no_settings() -> None:
    config = CoveyConfig.from_env({})
    assert config.database_url == "sqlite:///covey.db"
    assert config.shards == 300
    assert config.storage.schema == "covey"


def test_environment_is_read_including_nested_groups() -> None:
    config = CoveyConfig.from_env({
        "COVEY_DATABASE_URL": "postgresql://db/app",
        "COVEY_SHARDS": "64",
        "COVEY_RUNNER_PORT": "7000",
        "COVEY_CLUSTER_SECRET": "s3cret",
        "COVEY_STORAGE_BATCH_MAX_SIZE": "128",
        "COVEY_STORAGE_LOCK_TIMEOUT": "2.5",
        "UNRELATED": "x",
    })
    assert config.database_url == "postgresql://db/app"
    assert config.shards == 64 and config.runner_port == 7000
    assert config.cluster_secret == "s3cret"
    assert config.storage.batch_max_size == 128 and config.storage.lock_timeout == 2.5


def test_overrides_win() -> None:
    assert CoveyConfig.from_env({"COVEY_SHARDS": "64"}, shards=8).shards == 8


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"COVEY_SHARDS": "many"}, "COVEY_SHARDS"),
        ({"COVEY_STORAGE_LOCK_TIMEOUT": "soon"}, "COVEY_STORAGE_LOCK_TIMEOUT"),
    ],
)
def test_malformed_values_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError) as info:
        CoveyConfig.from_env(env)
    assert info.value.reason is Reason.CONFIG_INVALID
    assert name in str(info.value)


@pytest.mark.parametrize(
    "env", [{"COVEY_SHARDS": "0"}, {"COVEY_RUNNER_PORT": "70000"},
            {"COVEY_STORAGE_SCHEMA": "drop table"}],
)
def test_out_of_range_values_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        CoveyConfig.from_env(env)


def test_every_variable_is_listed() -> None:
    names = CoveyConfig.variables()
    assert names["COVEY_SHARDS"] == "300"
    assert "COVEY_STORAGE_BATCH_MAX_WAIT" in names
    assert "COVEY_CLUSTER_SECRET" in names
