"""callmissed.settings: the catalog, the environment and the config file, validated once."""

from __future__ import annotations

import re

import pytest

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
