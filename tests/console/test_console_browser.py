"""The console in a real headless Chromium against a real 2-worker gateway: sign in, make a key,
use it with the OpenAI SDK, watch the requests arrive, open one, revoke the key.

Every page is saved as a screenshot in the test's tmp directory (for review); with
CALLMISSED_CONSOLE_SCREENSHOTS=<folder> they are written there too (docs/console/ holds a set).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import time
from pathlib import Path

import openai
import pytest

from callmissed.store import LedgerEntry, open_store
from tests.accounting import ADMIN_TOKEN, admin
from tests.browser import Page
from tests.conftest import stop_gateway
from tests.console.conftest import MESSAGES, ask, sdk, start_console_gateway

READY = (
    "document.body.dataset.state === 'ready'"
    " && document.getElementById('view').dataset.loaded === '1'"
)


@pytest.fixture(scope="module")
def console(upstream, faults, tmp_path_factory):
    running = start_console_gateway(
        upstream, faults, tmp_path_factory.mktemp("browser"), CALLMISSED_WORKERS="2"
    )
    try:
        _seed_history(running)
        yield running
    finally:
        stop_gateway(running)


# (model, route, first-token median ms, share of traffic, tags)
_HISTORY = [
    ("plain", "fa:console/ok", 180, 0.45, ["team:search", "env:prod"]),
    ("falls-back", "fb:console-fallback/ok", 420, 0.25, ["team:support", "env:prod"]),
    ("thinker", "fa:console-think/ok", 900, 0.2, ["team:research"]),
    ("hedged", "fb:console-hedge/ok", 260, 0.1, ["team:search", "env:staging"]),
]


def _seed_history(gateway) -> None:
    """Two thousand requests of three keys over the past month, settled as a gateway settles
    them (rollups included), so every page has a history to draw."""
    made = [
        admin(gateway, "POST", "", name=name, credits=50) for name in ("search", "support", "batch")
    ]
    keys = [response.json()["data"]["id"] for response in made]
    chance = random.Random(15)
    now = time.time() - 120
    entries = []
    for n in range(2000):
        model, route, median, _, tags = chance.choices(
            _HISTORY, weights=[row[3] for row in _HISTORY]
        )[0]
        ago = chance.expovariate(1 / 4000) if n % 3 else chance.uniform(0, 30 * 86400)
        status = chance.choices([200, 502, 499], weights=[96, 3, 1])[0]
        ttfb = median * chance.lognormvariate(0, 0.35)
        prompt, completion = chance.randint(200, 3000), chance.randint(50, 900)
        provider, upstream = route.split(":") if status == 200 else ("", "")
        completion = completion if status == 200 else 0
        at = now - ago
        entries.append(LedgerEntry(
            f"req_{int(at * 1000):012x}{chance.getrandbits(48):012x}", chance.choice(keys), at,
            model, provider, upstream, True, status, None if status == 200 else "upstream_error",
            prompt, completion, 0, 0, prompt + 2 * completion if status == 200 else 0,
            ttfb if status == 200 else None, ttfb + completion * 9, None, tags=tags,
        ))  # fmt: skip

    async def settle() -> None:
        store = open_store(gateway.env["CALLMISSED_DATABASE_URL"])
        await store.start()
        try:
            for start in range(0, len(entries), 200):
                await store.settle(entries[start : start + 200])
        finally:
            await store.close()

    asyncio.run(settle())


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder: Path = tmp_path_factory.mktemp("console-screenshots")
    return folder


def _save(page: Page, shots: Path, name: str) -> None:
    page.evaluate("document.getElementById('toasts')?.replaceChildren()")  # passing notes
    path = page.screenshot(shots / f"{name}.png")
    folder = os.environ.get("CALLMISSED_CONSOLE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / path.name)


def _show(page: Page, hash_: str, view: str) -> None:
    """Go to a page of the console and wait until its data is drawn."""
    page.evaluate(f"location.hash = {json.dumps(hash_)}")
    page.wait(f"document.body.dataset.view === {json.dumps(view)} && {READY}")


def _click(page: Page, selector: str) -> None:
    page.wait(f"!!document.querySelector({json.dumps(selector)})")
    page.evaluate(f"document.querySelector({json.dumps(selector)}).click()")


def _type(page: Page, selector: str, text: str) -> None:
    page.evaluate(
        f"(() => {{ const field = document.querySelector({json.dumps(selector)});"
        f" field.value = {json.dumps(text)}; field.dispatchEvent(new Event('input')); }})()"
    )


def test_an_operator_runs_a_key_from_creation_to_revocation(console, browser, shots):
    with browser.page() as page:
        page.goto(f"{console.url}/console")
        page.wait("document.body.dataset.state === 'signin'")
        assert page.evaluate("localStorage.length + sessionStorage.length") == 0
        _save(page, shots, "sign-in")
        _type(page, "#token", ADMIN_TOKEN)
        _click(page, "#signin-button")
        page.wait(f"document.body.dataset.view === 'overview' && {READY}")
        assert ADMIN_TOKEN not in page.evaluate("location.href + document.cookie")

        key = _create_key(page, shots)
        request_ids = _use_key(console, key)
        _watch_requests_arrive(page, shots, request_ids)
        _open_a_request(page, shots, request_ids)
        _revoke(page, shots, console, key)
        _tour(page, shots)
        assert page.errors == []


def _create_key(page: Page, shots: Path) -> str:
    _show(page, "#/keys", "keys")
    _click(page, "#create-key")
    page.wait("document.getElementById('dialog').open && !!document.getElementById('key-name')")
    _type(page, "#key-name", "browser-test")
    _type(page, "#key-credits", "5")
    _type(page, "#key-rpm", "600")
    _type(page, "#key-limit-reset", "monthly")
    _click(page, "#dialog button.primary")
    page.wait("!!document.getElementById('new-key')")
    key: str = page.evaluate("document.getElementById('new-key').textContent")
    assert key.startswith("cm_")
    _save(page, shots, "keys-new-key")
    _click(page, "#dialog button.primary")  # Done
    page.wait("!document.getElementById('dialog').open")
    page.wait("document.getElementById('keys').textContent.includes('browser-test')")
    listing = page.evaluate("document.getElementById('keys').textContent")
    assert "600 rpm" in listing and "resets monthly" in listing
    _change_key(page)
    return key


_ROW = (
    "[...document.querySelectorAll('#keys tr')].find(r => r.textContent.includes('browser-test'))"
)


def _key_row(action: str) -> str:
    return f"{_ROW}.querySelector('button[data-action={action}]')"


def _change_key(page: Page) -> None:
    """Top it up and narrow its allow-list, as `callmissed keys topup/update` would."""
    page.evaluate(f"{_key_row('topup')}.click()")
    page.wait("!!document.getElementById('topup-amount')")
    _type(page, "#topup-amount", "2.5")
    _click(page, "#dialog button.primary")
    page.wait("document.getElementById('keys').textContent.includes('of $7.50')")
    page.evaluate(f"{_key_row('edit')}.click()")
    page.wait("!!document.getElementById('key-models')")
    _type(page, "#key-models", "plain, falls-back, thinker")
    _type(page, "#key-tpm", "90000")
    _click(page, "#dialog button.primary")
    page.wait("document.getElementById('keys').textContent.includes('90K tpm')")
    assert "falls-back" in page.evaluate("document.getElementById('keys').textContent")


def _use_key(console, key: str) -> list[str]:
    with sdk(console, key, **{"x-callmissed-tags": "team:web"}) as client:
        return [
            ask(client, "plain", stream=True),
            ask(client, "falls-back"),
            ask(client, "thinker", reasoning_effort="none"),
        ]


def _watch_requests_arrive(page: Page, shots: Path, request_ids: list[str]) -> None:
    _show(page, "#/requests", "requests")
    # The page is already open: the rows arrive by themselves (it refreshes every second).
    rows = " && ".join(
        f"!!document.querySelector('#requests tr[data-id={json.dumps(i)}]')" for i in request_ids
    )
    took = page.wait(rows, seconds=2.0)
    assert took < 2.0
    _save(page, shots, "requests")


def _open_a_request(page: Page, shots: Path, request_ids: list[str]) -> None:
    fallback = request_ids[1]
    _click(page, f"#requests tr[data-id={json.dumps(fallback)}]")
    page.wait(f"document.body.dataset.view === 'requests-detail' && {READY}")
    facts = page.facts()
    assert facts["detail-id"] == fallback
    assert facts["detail-route"] == "fb:console-fallback/ok"
    assert facts["detail-model"] == "falls-back"
    assert facts["detail-ttfb"].endswith(("ms", " s")) and facts["detail-total"].endswith(
        ("ms", " s")
    )
    assert facts["detail-tags"] == "team:web"
    assert facts["detail-attempts"].startswith("2 attempts")
    timeline = page.evaluate("document.querySelector('svg.timeline').textContent")
    assert "fa:console-fallback/error-500" in timeline and "fb:console-fallback/ok" in timeline
    _save(page, shots, "request")
    _show(page, f"#/requests/{request_ids[2]}", "requests-detail")
    facts = page.facts()
    assert (facts["detail-effort-received"], facts["detail-effort-sent"]) == ("none", "low")


def _revoke(page: Page, shots: Path, console, key: str) -> None:
    _show(page, "#/keys", "keys")
    page.evaluate(f"{_key_row('revoke')}.click()")
    page.wait("document.getElementById('dialog').open")
    _click(page, "#dialog button.danger")
    page.wait(f"{_ROW}.textContent.includes('revoked')")
    with sdk(console, key) as client, pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="plain", messages=MESSAGES)
    _save(page, shots, "keys")


def _tour(page: Page, shots: Path) -> None:
    for hash_, view, name in [
        ("#/overview?range=1h", "overview", "overview"),
        ("#/routes", "routes", "routes"),
        ("#/tags?range=24h", "tags", "tags"),
        ("#/retention", "retention", "retention"),
    ]:
        _show(page, hash_, view)
        time.sleep(0.3)  # let the charts lay out before the picture
        _save(page, shots, name)
    _show(page, "#/overview?range=1h", "overview")
    facts = page.facts()
    assert int(facts["kpi-requests"]) >= 3
    assert "team:web" in page.evaluate("document.getElementById('overview-tag').textContent")
    _show(page, "#/tags?range=24h", "tags")
    assert "team:web" in page.evaluate("document.getElementById('tags').textContent")
    _show(page, "#/routes", "routes")
    assert "fb:console-fallback/ok" in page.evaluate(
        "document.getElementById('routes').textContent"
    )
    assert page.facts()["routes-workers"] == "2"


def test_the_console_turned_off_explains_itself(gateway, browser, tmp_path):
    with browser.page() as page:
        page.goto(f"{gateway.url}/console")
        page.wait("document.body.dataset.state === 'disabled'")
        assert "CALLMISSED_ADMIN_TOKEN" in page.evaluate("document.body.textContent")
        _save(page, tmp_path, "disabled")
