"""Each built-in provider brings its own variables and default URL (providers/environment.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from callmissed.providers import REGISTRY
from callmissed.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
BUILT_IN = sorted(kind for kind, provider in REGISTRY.items() if provider.environment)


def _environment(kind: str):
    environment = REGISTRY[kind].environment
    assert environment is not None
    return environment


def test_every_vendor_of_the_readme_is_built_in():
    assert {"cloudflare", "openrouter", "sarvam", "sim"} <= set(BUILT_IN)
    assert "openai" not in BUILT_IN  # an OpenAI-compatible server is named in the config file


@pytest.mark.parametrize("kind", BUILT_IN)
def test_without_its_variables_a_provider_names_each_one_to_set(kind):
    settings = load_settings({}).providers[kind]
    environment = _environment(kind)
    assert settings.type == kind
    assert settings.base_url.startswith(environment.base_url)
    assert settings.api_key is None
    for variable in environment.required:
        assert settings.missing is not None and variable in settings.missing
    assert (settings.missing is None) == (not environment.required)


@pytest.mark.parametrize("kind", BUILT_IN)
def test_its_variables_configure_it(kind):
    environment = _environment(kind)
    env = {variable: f"value-of-{variable}" for variable in environment.required}
    if environment.base_url_env:
        env[environment.base_url_env] = "http://127.0.0.1:9/v1/"
    settings = load_settings(env).providers[kind]
    assert settings.missing is None
    if environment.api_key_env:
        assert settings.api_key == env[environment.api_key_env]
    if environment.base_url_env:
        assert settings.base_url.startswith("http://127.0.0.1:9/v1")
        assert "//" not in settings.base_url.removeprefix("http://")


def test_cloudflares_url_carries_the_account():
    env = {"CLOUDFLARE_ACCOUNT_ID": "acct", "CLOUDFLARE_API_TOKEN": "token"}
    settings = load_settings(env).providers["cloudflare"]
    assert settings.base_url == "https://api.cloudflare.com/client/v4/accounts/acct/ai/v1"


@pytest.mark.parametrize("document", ["README.md", "docs/config.md"])
def test_every_declared_variable_is_documented(document):
    text = (ROOT / document).read_text()
    for kind in BUILT_IN:
        environment = _environment(kind)
        names = {*environment.required, environment.base_url_env, environment.api_key_env}
        for name in names - {None}:
            assert f"`{name}`" in text, f"{document} does not name {name} ({kind})"
