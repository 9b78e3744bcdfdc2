"""Timeouts and resilience settings: the environment, per-model overrides, and what is refused."""

from __future__ import annotations

import pytest

from callmissed.settings import Resilience, SettingsError, Timeouts, load_settings


def _load(tmp_path, config: str = "", **env: str):
    path = tmp_path / "c.toml"
    path.write_text(config)
    return load_settings(env=env, config_path=str(path))


def test_defaults_suit_reasoning_models(tmp_path):
    settings = _load(tmp_path)
    assert settings.timeouts == Timeouts(connect=10, first_token=120, idle=120, total=1800)
    assert settings.resilience == Resilience()
    assert settings.connect_timeout == 10
    assert settings.models["gpt-oss-120b"].timeouts is None


def test_the_environment_sets_the_global_values(tmp_path):
    settings = _load(
        tmp_path,
        CALLMISSED_CONNECT_TIMEOUT="2",
        CALLMISSED_FIRST_TOKEN_TIMEOUT="30",
        CALLMISSED_STREAM_IDLE_TIMEOUT="15",
        CALLMISSED_TOTAL_TIMEOUT="300",
        CALLMISSED_MAX_ATTEMPTS="5",
        CALLMISSED_KEEPALIVE_AFTER="2.5",
        CALLMISSED_WARM_CONNECTIONS="0",
    )
    assert settings.timeouts == Timeouts(connect=2, first_token=30, idle=15, total=300)
    assert settings.resilience.max_attempts == 5
    assert settings.resilience.keepalive_after == 2.5
    assert settings.resilience.warm_connections == 0


def test_a_model_overrides_some_timeouts_and_inherits_the_rest(tmp_path):
    config = """
[models.m]
routes = ["sim:a", "sim:b"]
strategy = "fastest"
hedge_after_ms = 250
timeouts = { first_token = 300, total = 3600 }
"""
    settings = _load(tmp_path, config, CALLMISSED_STREAM_IDLE_TIMEOUT="60")
    model = settings.models["m"]
    assert model.timeouts == Timeouts(connect=10, first_token=300, idle=60, total=3600)
    assert (model.strategy, model.hedge_after_ms) == ("fastest", 250)
    assert settings.read_timeout == 3601  # the transports' backstop outlasts every limit


@pytest.mark.parametrize(
    ("config", "env", "message"),
    [
        ("", {"CALLMISSED_FIRST_TOKEN_TIMEOUT": "soon"}, "must be a number"),
        ("", {"CALLMISSED_TOTAL_TIMEOUT": "0"}, "must be positive"),
        ("", {"CALLMISSED_MAX_ATTEMPTS": "-1"}, "must be positive"),
        ('[models.m]\nroutes = ["sim:a"]\nstrategy = "random"\n', {}, "unknown strategy"),
        ('[models.m]\nroutes = ["sim:a"]\nhedge_after_ms = 100\n', {}, "at least two routes"),
        ('[models.m]\nroutes = ["sim:a", "sim:b"]\nhedge_after_ms = -1\n', {}, "positive"),
        ('[models.m]\nroutes = ["sim:a"]\ntimeouts = { first = 3 }\n', {}, "unknown timeout"),
        ('[models.m]\nroutes = ["sim:a"]\ntimeouts = { idle = "x" }\n', {}, "positive number"),
        ('[models.m]\nroutes = ["sim:a"]\ntimeouts = 5\n', {}, "table of seconds"),
    ],
)
def test_bad_values_are_refused_with_a_reason(tmp_path, config, env, message):
    with pytest.raises(SettingsError, match=message):
        _load(tmp_path, config, **env)
