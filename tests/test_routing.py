"""Where a model name goes: the catalog, or a provider that serves any vendor/model id."""

from __future__ import annotations

import pytest

from callmissed.errors import ModelNotFound
from callmissed.providers import REGISTRY
from callmissed.routing import Router
from callmissed.settings import Settings, load_settings


def _router(settings: Settings) -> Router:
    providers = {name: REGISTRY[p.type](p) for name, p in settings.providers.items()}
    return Router(settings, providers)


def test_a_vendor_model_outside_the_catalog_goes_on_as_it_is():
    router = _router(load_settings({"OPENROUTER_API_KEY": "k"}))
    model, targets = router.resolve("mistralai/a-model-of-tomorrow")
    assert [(t.route.provider, t.route.upstream_model) for t in targets] == [
        ("openrouter", "mistralai/a-model-of-tomorrow")
    ]
    assert model.reasoning == "passthrough"


def test_it_goes_to_the_provider_that_says_it_serves_any_model_whatever_its_name(tmp_path):
    config = tmp_path / "providers.toml"
    config.write_text(
        '[providers.openrouter]\ntype = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n\n'
        '[providers.router]\ntype = "openrouter"\nbase_url = "http://127.0.0.1:9/api/v1"\n'
    )
    _, targets = _router(load_settings({}, str(config))).resolve("vendor/model")
    assert [t.route.provider for t in targets] == ["router"]


def test_an_unknown_id_under_a_local_providers_prefix_is_not_sent_on():
    router = _router(load_settings({"OPENROUTER_API_KEY": "k"}))
    with pytest.raises(ModelNotFound):
        router.resolve("sim/no-such-model")
