"""callmissed.settings: the catalog, the environment and the config file, validated once."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from callmissed.providers import REGISTRY
from callmissed.settings import SettingsError, load_settings


def test_builtin_catalog_loads_and_providers_say_what_is_missing():
    settings = load_settings(env={})
    assert settings.models["gpt-oss-120b"].routes[0].upstream_model == "@cf/openai/gpt-oss-120b"
    missing = settings.providers["cloudflare"].missing
    assert missing is not None
    assert "CLOUDFLARE_ACCOUNT_ID" in missing
    assert "CLOUDFLARE_API_TOKEN" in missing
    assert settings.providers["sim"].missing is None


def test_cloudflare_url_has_the_account(monkeypatch):
    settings = load_settings(env={"CLOUDFLARE_ACCOUNT_ID": "abc", "CLOUDFLARE_API_TOKEN": "t"})
    cloudflare = settings.providers["cloudflare"]
    assert cloudflare.base_url == "https://api.cloudflare.com/client/v4/accounts/abc/ai/v1"
    assert cloudflare.missing is None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('[models.x]\nroutes = ["nowhere:m"]\n', "unknown provider"),
        ('[models.x]\nroutes = ["sim:m"]\nreasoning = "psychic"\n', "unknown reasoning policy"),
        ('[models.x]\nroutes = ["no-colon"]\n', "provider:upstream-model"),
        ('[providers.p]\ntype = "carrier-pigeon"\nbase_url = "http://x"\n', "unknown type"),
        ("[models.x\n", "not valid TOML"),
    ],
)
def test_bad_config_files_are_refused_with_a_reason(tmp_path, config, message):
    path = tmp_path / "bad.toml"
    path.write_text(config)
    with pytest.raises(SettingsError, match=message):
        load_settings(env={}, config_path=str(path))


def test_missing_config_file(tmp_path):
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(env={}, config_path=str(tmp_path / "nope.toml"))


def test_the_access_log_and_traces_come_from_the_environment():
    default = load_settings({}).observability
    assert (default.access_log, default.otlp_endpoint, default.service_name) == (
        "stderr",
        None,
        "callmissed",
    )
    traced = load_settings(
        {
            "CALLMISSED_ACCESS_LOG": "/var/log/callmissed.jsonl",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
            "OTEL_EXPORTER_OTLP_HEADERS": "x-token=a%20b, tenant=7",
            "OTEL_SERVICE_NAME": "gateway-eu",
        }
    ).observability
    assert traced.access_log == "/var/log/callmissed.jsonl"
    assert traced.otlp_endpoint == "http://collector:4318/v1/traces"  # the signal's path
    assert traced.otlp_headers == {"x-token": "a b", "tenant": "7"}
    assert traced.service_name == "gateway-eu"
    own = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://traces.example/v1/t"}
    assert load_settings(own).observability.otlp_endpoint == "https://traces.example/v1/t"
    disabled = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}
    assert load_settings(disabled).observability.otlp_endpoint is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "must be an http(s) URL"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_EXPORTER_OTLP_HEADERS": "nonsense"},
            "name=value",
        ),
    ],
)
def test_bad_otel_settings_are_refused(env, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings(env)


def test_embedding_models_say_what_they_make():
    models = load_settings(env={}).models
    bge, qwen, sim = (
        models[n].embedding for n in ("bge-m3", "qwen3-embedding-0.6b", "sim/embedding")
    )
    assert bge is not None and (bge.dimensions, bge.shorten) == (1024, False)
    assert qwen is not None and (qwen.batch, qwen.shorten) == (32, True)
    assert sim is not None and sim.shorten
    assert models["gpt-oss-120b"].embedding is None


def test_the_catalog_prices_workers_ai_embeddings_from_its_pricing_page():
    models = load_settings(env={}).models
    prices = {
        name: (model.prices.input if model.prices else None)
        for name, model in models.items()
        if model.embedding is not None and not name.startswith("sim/")
    }
    assert prices == {
        "bge-m3": 0.012,
        "bge-large-en-v1.5": 0.204,
        "bge-base-en-v1.5": 0.067,
        "bge-small-en-v1.5": 0.020,
        "embeddinggemma-300m": None,  # not on the page: never an invented price
        "qwen3-embedding-0.6b": 0.012,
        "plamo-embedding-1b": 0.019,
    }


@pytest.mark.parametrize(
    ("embedding", "message"),
    [
        ('"yes"', "must be true or a table"),
        ("{ dims = 3 }", "unknown embedding setting 'dims'"),
        ("{ dimensions = 0 }", "embedding.dimensions must be a positive integer"),
        ("{ batch = true }", "embedding.batch must be a positive integer"),
        ('{ dimensions = 8, shorten = "yes" }', "embedding.shorten must be true or false"),
        ("{ shorten = true }", "shorten needs embedding.dimensions"),
    ],
)
def test_bad_embedding_settings_are_refused(tmp_path, embedding, message):
    path = tmp_path / "bad.toml"
    path.write_text(f'[models.x]\nroutes = ["sim:m"]\nembedding = {embedding}\n')
    with pytest.raises(SettingsError, match=message):
        load_settings(env={}, config_path=str(path))


def test_embedding_true_is_an_embedding_model_of_any_size(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text('[models.x]\nroutes = ["sim:m"]\nembedding = true\n')
    embedding = load_settings(env={}, config_path=str(path)).models["x"].embedding
    assert embedding is not None
    assert (embedding.dimensions, embedding.shorten, embedding.batch) == (None, False, None)


def test_prices_take_a_cache_write_rate_that_defaults_to_input(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text(
        "[prices.a]\ninput = 3.0\ncached_input = 0.3\ncache_write = 3.75\noutput = 15.0\n"
        "[prices.b]\ninput = 1.0\noutput = 2.0\n"
    )
    prices = load_settings(env={"CALLMISSED_CONFIG": str(path)}).accounting.prices
    assert (prices["a"].cached_input, prices["a"].cache_write) == (0.3, 3.75)
    assert (prices["b"].cached_input, prices["b"].cache_write) == (1.0, None)
    catalog = load_settings(env={}).models["anthropic/claude-sonnet-4.6"].prices
    assert catalog is not None and catalog.cache_write == 3.75  # Anthropic: 1.25x input
    path.write_text("[prices.a]\ninput = 1.0\noutput = 2.0\ncache_write = -1\n")
    with pytest.raises(SettingsError, match="cache_write must be a number from 0 to 1000000"):
        load_settings(env={"CALLMISSED_CONFIG": str(path)})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"CALLMISSED_MAX_BODY_BYTES": "-1"},
            "CALLMISSED_MAX_BODY_BYTES must be a number from 1024",
        ),
        ({"CALLMISSED_PORT": "70000"}, "CALLMISSED_PORT must be a number from 1 to 65535"),
        ({"CALLMISSED_WORKERS": "0"}, "CALLMISSED_WORKERS must be at least 1"),
        ({"CALLMISSED_TOTAL_TIMEOUT": "inf"}, "CALLMISSED_TOTAL_TIMEOUT must be a finite number"),
        ({"CALLMISSED_CONNECT_TIMEOUT": "nan"}, "must be a finite number"),
        (
            {"CALLMISSED_CONNECT_TIMEOUT": "1e300"},
            "CALLMISSED_CONNECT_TIMEOUT must be a number from 0.001 to 86400, got 1e\\+300",
        ),
        ({"CALLMISSED_WARM_CONNECTIONS": "100000"}, "CALLMISSED_WARM_CONNECTIONS must be"),
        ({"CALLMISSED_MAX_ATTEMPTS": "1000"}, "CALLMISSED_MAX_ATTEMPTS must be"),
        ({"CALLMISSED_SSE_EVENT_BYTES": "100"}, "CALLMISSED_SSE_EVENT_BYTES must be"),
        ({"CALLMISSED_UPSTREAM_BODY_BYTES": "-5"}, "CALLMISSED_UPSTREAM_BODY_BYTES must be"),
        ({"CALLMISSED_UPSTREAM_ERROR_BODY_BYTES": "0"}, "ERROR_BODY_BYTES must be"),
        ({"CALLMISSED_METRICS_MAX_MODELS": "-1"}, "CALLMISSED_METRICS_MAX_MODELS must be"),
        ({"CALLMISSED_MAX_CONNECTIONS": "1e7"}, "CALLMISSED_MAX_CONNECTIONS must be a whole"),
        ({"CALLMISSED_MAX_CONNECTIONS": "10000000"}, "CALLMISSED_MAX_CONNECTIONS must be"),
        ({"CALLMISSED_WRITE_TIMEOUT": "inf"}, "CALLMISSED_WRITE_TIMEOUT must be a finite number"),
        ({"CALLMISSED_RESPONSES_MAX_BYTES": "99999999999"}, "CALLMISSED_RESPONSES_MAX_BYTES"),
    ],
)
def test_numbers_out_of_range_are_refused_naming_the_setting(env, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(env=env)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("[limits]\nsse_event_bytes = 1.5\n", "must be a whole number"),
        ("[limits]\nevent_bytes = 100000\n", "unknown limit 'event_bytes'"),
        ("[limits]\nupstream_body_bytes = 10\n", "CALLMISSED_UPSTREAM_BODY_BYTES must be"),
        ('[models.x]\nroutes = ["sim:x"]\nprices = { input = nan, output = 1 }\n', "price input"),
        ('[models.x]\nroutes = ["sim:x"]\nprices = { input = 1e30, output = 1 }\n', "price input"),
        ('[models.x]\nroutes = ["sim:x", "sim:y"]\nhedge_after_ms = inf\n', "hedge_after_ms"),
        ('[models.x]\nroutes = ["sim:x"]\ntimeouts = { idle = nan }\n', "timeouts.idle"),
        ('[models.x]\nroutes = ["sim:x"]\nmax_output = -1\n', "max_output must be"),
        ('[models.x]\nroutes = ["sim:x"]\nsimulate = { ttfb_ms = 0 }\n', "simulate needs"),
        (
            '[models.x]\nroutes = ["sim:x"]\n'
            'simulate = { ttfb_ms = "0", total_ms = 0, tokens = 1 }\n',
            "simulate.ttfb_ms must be",
        ),
    ],
)
def test_config_file_numbers_out_of_range_are_refused(tmp_path, config, message):
    path = tmp_path / "bad.toml"
    path.write_text(config)
    with pytest.raises(SettingsError, match=message):
        load_settings(env={}, config_path=str(path))


def test_limits_come_from_the_config_file_and_the_environment_overrides_them(tmp_path):
    path = tmp_path / "limits.toml"
    path.write_text("[limits]\nsse_event_bytes = 1048576\nmetrics_max_models = 5\n")
    settings = load_settings(env={"CALLMISSED_METRICS_MAX_MODELS": "7"}, config_path=str(path))
    assert settings.limits.sse_event_bytes == 1048576
    assert settings.limits.metrics_max_models == 7
    assert settings.limits.upstream_error_body_bytes == 65536  # the default


@pytest.mark.parametrize(
    ("blocked", "env", "extra"),
    [
        ("asyncpg", {"CALLMISSED_DATABASE_URL": "postgresql://127.0.0.1/x"}, "postgres"),
        ("redis", {"CALLMISSED_REDIS_URL": "redis://127.0.0.1:6379/0"}, "redis"),
    ],
)
@pytest.mark.parametrize("command", [["config", "check"], ["serve", "--port", "9"]])
def test_a_store_without_its_package_is_one_clear_line(tmp_path, blocked, env, extra, command):
    """As if the extra were not installed: importing its package fails."""
    script = (
        f"import sys; sys.modules[{blocked!r}] = None; "
        "from callmissed.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *command],
        env={**_clean_env(), **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line, no traceback
    assert f"pip install 'callmissed[{extra}]'" in result.stderr


def _clean_env() -> dict[str, str]:
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CALLMISSED_") and key not in _PROVIDER_VARIABLES
    }


_PROVIDER_VARIABLES = {
    name
    for provider in REGISTRY.values()
    if provider.environment
    for name in (
        *provider.environment.required,
        provider.environment.base_url_env,
        provider.environment.api_key_env,
    )
}


def test_pricing_takes_a_markup_and_a_refresh_each_overridden_by_its_variable(tmp_path):
    config = tmp_path / "pricing.toml"
    config.write_text("[pricing]\nmarkup = 1.25\nrefresh = 0\n")
    pricing = load_settings({}, str(config)).accounting.pricing
    assert (pricing.markup, pricing.refresh) == (1.25, 0.0)  # 0: never fetch, use the stored copy
    env = {"CALLMISSED_PRICE_MARKUP": "2", "CALLMISSED_PRICE_REFRESH": "60"}
    pricing = load_settings(env, str(config)).accounting.pricing
    assert (pricing.markup, pricing.refresh) == (2.0, 60.0)
    assert load_settings({}).accounting.pricing.markup == 1.0


@pytest.mark.parametrize(
    ("table", "env", "message"),
    [
        ("markup = 0", {}, "markup must be a number above 0"),
        ("markup = 1000", {}, "markup must be a number above 0"),
        ("", {"CALLMISSED_PRICE_MARKUP": "nan"}, "markup must be a number above 0"),
        ("markup = true", {}, "markup must be a number above 0"),
        ("refresh = -1", {}, "refresh must be 0"),
        ("", {"CALLMISSED_PRICE_REFRESH": "soon"}, "CALLMISSED_PRICE_REFRESH"),
        ("discount = 0.5", {}, "[pricing] takes markup"),
    ],
)
def test_bad_pricing_settings_are_refused(tmp_path, table, env, message):
    config = tmp_path / "pricing.toml"
    config.write_text(f"[pricing]\n{table}\n")
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings(env, str(config))
