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
