"""callmissed.settings: the catalog, the environment and the config file, validated once."""

from __future__ import annotations

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
    with pytest.raises(SettingsError, match="cache_write must be a number >= 0"):
        load_settings(env={"CALLMISSED_CONFIG": str(path)})
