"""Several worker processes behave as one server: /metrics, key changes, credit, the default.

Each test pins one keep-alive connection to each of two workers (a connection stays with the
worker that accepted it; /healthz says which one that is), so it knows that both served.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from callmissed.settings import available_cores
from tests.accounting import (
    ADMIN_TOKEN,
    BACKENDS,
    HELLO_BOUND,
    HELLO_COST,
    backend_env,
    balance,
    new_key,
    query,
    start_billing_gateway,
)
from tests.conftest import Gateway, stop_gateway

HOLD_50 = HELLO_BOUND + 2 * 50  # the worst case of a request with max_tokens=50 on a priced model


@contextlib.contextmanager
def two_workers(gateway: Gateway) -> Iterator[list[httpx.Client]]:
    """Two clients, each with one keep-alive connection to a different worker."""
    clients: dict[int, httpx.Client] = {}
    try:
        for _ in range(100):
            client = httpx.Client(base_url=gateway.url, timeout=30)
            worker = client.get("/healthz").json()["worker"]
            if worker in clients:
                client.close()
            else:
                clients[worker] = client
            if len(clients) == 2:
                break
        assert len(clients) == 2, "every connection went to the same worker"
        yield list(clients.values())
    finally:
        for client in clients.values():
            client.close()


def chat(client: httpx.Client, key: str, model: str = "priced", **body: object) -> httpx.Response:
    payload = {"model": model, "messages": [{"role": "user", "content": "Say hello"}], **body}
    return client.post(
        "/v1/chat/completions", json=payload, headers={"authorization": f"Bearer {key}"}
    )


def admin(client: httpx.Client, method: str, path: str, **body: object) -> httpx.Response:
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    return client.request(method, f"/admin/keys{path}", json=body or None, headers=headers)


def scrape(client: httpx.Client) -> dict[str, float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_count_every_worker_s_requests(upstream, tmp_path):
    running = start_billing_gateway(upstream, tmp_path, "--workers", "2")
    try:
        with two_workers(running) as clients:
            for round_, requests in enumerate((10, 7), start=1):
                for n in range(requests):
                    assert chat(clients[n % 2], running.key).status_code == 200
                total = 10 if round_ == 1 else 17
                for client in clients * 2:  # whichever worker answers the scrape
                    samples = scrape(client)
                    assert (
                        samples['callmissed_requests_total{model="priced",outcome="ok"}'] == total
                    )
                    assert samples[
                        'callmissed_attempts_total{route="local:hello",outcome="ok"}'
                    ] == (total)
                    assert samples['callmissed_ttfb_seconds_count{route="local:hello"}'] == total
                    assert samples["callmissed_workers"] == 2
                    assert samples["callmissed_workers_unanswered"] == 0
                    assert samples["callmissed_inflight_requests"] == 0
    finally:
        stop_gateway(running)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_admin_change_reaches_every_worker_at_once(upstream, tmp_path, backend):
    with backend_env(backend) as env:
        running = start_billing_gateway(upstream, tmp_path, "--workers", "2", **env)
        try:
            with two_workers(running) as (one, other):
                key, key_id = new_key(running, credits=1)
                for client in (one, other):  # both workers have the key in their caches
                    assert chat(client, key, max_tokens=10).status_code == 200
                assert admin(one, "PATCH", f"/{key_id}", models=["sim/instant"]).status_code == 200
                for client in (other, one, other):
                    refused = chat(client, key, max_tokens=10)
                    assert refused.status_code == 403, refused.text
                    assert refused.json()["error"]["code"] == "model_not_allowed"
                assert admin(other, "PATCH", f"/{key_id}", models=None, rpm=1).status_code == 200
                for client in (one, other):  # 429 from the second on SQLite: limits are shared
                    limited = chat(client, key, max_tokens=10)
                    assert limited.status_code in (200, 429)
                    assert limited.headers["x-ratelimit-limit-requests"] == "1"
                assert admin(other, "POST", f"/{key_id}/revoke").status_code == 200
                for client in (one, other):
                    assert chat(client, key, max_tokens=10).status_code == 401
        finally:
            stop_gateway(running)


def test_a_key_change_from_another_process_reaches_every_worker_at_once(upstream, tmp_path):
    """Not through this server's admin API: through the database, as another replica or the
    CLI would (the workers learn it from the store, not from each other)."""
    running = start_billing_gateway(upstream, tmp_path, "--workers", "2")
    try:
        with two_workers(running) as clients:
            key, key_id = new_key(running, credits=1)
            for client in clients:
                assert chat(client, key, max_tokens=10).status_code == 200
            query(running, "UPDATE api_keys SET models = 'sim/instant' WHERE id = ?", key_id)
            for client in [*clients, *clients]:
                assert chat(client, key, max_tokens=10).status_code == 403
    finally:
        stop_gateway(running)


def settled_everywhere(running: Gateway, key_id: int, requests: int) -> None:
    """Wait until the key's `requests` are in the ledger: GET /v1/key settles only the worker
    that answers it, and the other settles its own a linger later."""
    deadline = time.monotonic() + 10
    count = "SELECT count(*) FROM ledger WHERE key_id = ?"
    while query(running, count, key_id) != [(requests,)]:
        assert time.monotonic() < deadline, "the workers did not settle"
        time.sleep(0.02)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_nearly_drained_key_gets_every_request_it_can_pay_for(upstream, tmp_path, backend):
    """A balance of four costs plus one worst case buys five requests, as on one worker, though
    each worker's wallet keeps what its last request did not use."""
    with backend_env(backend) as env:
        running = start_billing_gateway(upstream, tmp_path, "--workers", "2", **env)
        try:
            with two_workers(running) as clients:
                key, key_id = new_key(running, credits=(HELLO_COST * 4 + HOLD_50) / 1_000_000)
                responses = [chat(clients[n % 2], key, max_tokens=50) for n in range(7)]
                assert [r.status_code for r in responses] == [200] * 5 + [402] * 2
                left = HOLD_50 - HELLO_COST  # less than one worst case
                assert f"${left / 1_000_000:.6f} left" in responses[-1].json()["error"]["message"]
                fits = (left - HELLO_BOUND) // 2  # the most output tokens `left` can hold
                assert chat(clients[1], key, max_tokens=fits).status_code == 200
            settled_everywhere(running, key_id, requests=6)
            assert balance(running, key_id) == left - HELLO_COST
            assert query(
                running, "SELECT count(*), sum(cost) FROM ledger WHERE key_id = ?", key_id
            ) == [(6, 6 * HELLO_COST)]
        finally:
            stop_gateway(running)


def test_by_default_a_worker_per_core_and_a_dead_worker_is_replaced(upstream, tmp_path):
    running = start_billing_gateway(upstream, tmp_path, CALLMISSED_WORKERS="")
    try:
        cores = available_cores()
        assert f"{cores} worker(s)" in running.log.read_text()
        journals = tmp_path / "gateway.sqlite3.ledger"
        deadline = time.monotonic() + 10
        while len(list(journals.glob("*.journal"))) < cores:  # each worker is up and serving
            assert time.monotonic() < deadline, "not every worker started"
            time.sleep(0.05)
        if cores < 2:
            pytest.skip("one core: nothing more to see")
        with two_workers(running) as (_, other):
            victim = other.get("/healthz").json()["worker"]
            assert chat(other, running.key, model="local-model").status_code == 200
        os.kill(victim, signal.SIGKILL)
        workers: set[int] = set()
        deadline = time.monotonic() + 20
        while len(workers - {victim}) < cores:  # its successor answers too
            assert time.monotonic() < deadline, f"no worker replaced {victim}"
            with (
                httpx.Client(base_url=running.url, timeout=5) as client,
                contextlib.suppress(httpx.HTTPError),
            ):
                workers.add(client.get("/healthz").json()["worker"])
            time.sleep(0.02)
        assert running.process.poll() is None
        with httpx.Client(base_url=running.url, timeout=5) as client:
            samples = scrape(client)
        assert samples["callmissed_workers"] == cores  # the dead one's socket is gone
        assert samples["callmissed_workers_unanswered"] == 0
        assert re.search(r"replayed \d+ entries", running.log.read_text())
    finally:
        stop_gateway(running)
        with contextlib.suppress(subprocess.TimeoutExpired):
            running.process.wait(5)


def test_workers_stop_when_the_server_process_is_gone(upstream, tmp_path):
    """A worker left behind by its server process (killed, or stopped while that worker was
    still starting) must not serve on, unsupervised, for good."""
    running = start_billing_gateway(upstream, tmp_path, "--workers", "2")
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 10
        while len(workers := _children(running.process.pid)) < 2:
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.05)
        with two_workers(running):  # both are up and serving
            pass
        running.process.kill()
        running.process.wait(5)
        deadline = time.monotonic() + 15
        while alive := [pid for pid in workers if _running(pid)]:
            assert time.monotonic() < deadline, f"orphaned workers still run: {alive}"
            time.sleep(0.1)
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        stop_gateway(running)


def test_a_worker_started_as_its_server_is_killed_stops_too(upstream, tmp_path):
    """The race the suite used to lose: the server respawns a dead worker and is SIGKILLed
    before that worker's app has started. The new worker is an orphan from its first moment and
    must still notice that its server is gone."""
    running = start_billing_gateway(upstream, tmp_path)  # one worker
    [worker] = _children(running.process.pid)
    respawned: list[int] = []
    try:
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not (respawned := [pid for pid in _children(running.process.pid) if pid != worker]):
            assert time.monotonic() < deadline, "the dead worker was not replaced"
            time.sleep(0.005)
        running.process.kill()  # the new worker is still importing: its app has not started
        running.process.wait(5)
        deadline = time.monotonic() + 15
        while alive := [pid for pid in respawned if _running(pid)]:
            assert time.monotonic() < deadline, f"an orphaned worker still runs: {alive}"
            time.sleep(0.1)
    finally:
        for pid in respawned:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        stop_gateway(running)


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid`, from /proc (no pgrep needed)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                children.append(int(stat.parent.name))
    return children


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def _route_health(client: httpx.Client, key: str, model: str) -> dict[str, Any]:
    listing = client.get("/v1/models", headers={"authorization": f"Bearer {key}"}).json()
    [health] = next(entry for entry in listing["data"] if entry["id"] == model)["health"]
    return dict(health)


def _eventually(check: Callable[[], bool], limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, "the workers did not agree in time"
        time.sleep(0.02)


def test_a_route_s_breaker_opens_and_closes_for_every_worker(upstream, tmp_path):
    """One failure at each worker opens a two-failure breaker for both; neither then sends the
    route anything, and both say the route is resting (503, Retry-After), not the old error."""
    running = start_billing_gateway(
        upstream,
        tmp_path,
        "--workers",
        "2",
        CALLMISSED_BREAKER_FAILURES="2",
        CALLMISSED_BREAKER_OPEN="30",
        CALLMISSED_MAX_ATTEMPTS="1",
    )
    try:
        with two_workers(running) as (one, other):
            sent = len([r for r in upstream.requests if r.body.get("model") == "error-500"])
            assert chat(one, running.key, model="priced-fails").status_code == 502
            assert chat(other, running.key, model="priced-fails").status_code == 502

            def both_resting() -> bool:
                states = [_route_health(c, running.key, "priced-fails") for c in (one, other)]
                return all(state["state"] == "open" for state in states)

            _eventually(both_resting)
            for client in (one, other, one, other):
                refused = chat(client, running.key, model="priced-fails")
                assert refused.status_code == 503, refused.text
                error = refused.json()["error"]
                assert error["code"] == "routes_resting"
                assert "resting" in error["message"] and "fake failure" not in error["message"]
                assert 25 <= int(refused.headers["retry-after"]) <= 30
            now = len([r for r in upstream.requests if r.body.get("model") == "error-500"])
            assert now - sent == 2  # nothing more reached the upstream
            rates = [
                _route_health(c, running.key, "priced-fails")["error_rate"] for c in (one, other)
            ]
            assert rates[0] == rates[1] > 0
    finally:
        stop_gateway(running)


def test_first_token_times_measured_at_one_worker_are_known_to_the_other(upstream, tmp_path):
    running = start_billing_gateway(upstream, tmp_path, "--workers", "2")
    try:
        with two_workers(running) as (one, other):
            assert _route_health(other, running.key, "priced")["ttfb_ms"] is None
            assert chat(one, running.key).status_code == 200
            mine = _route_health(one, running.key, "priced")["ttfb_ms"]
            assert mine is not None
            _eventually(lambda: _route_health(other, running.key, "priced")["ttfb_ms"] == mine)
    finally:
        stop_gateway(running)


def test_a_worker_started_again_learns_the_routes_state_from_the_others(upstream, tmp_path):
    running = start_billing_gateway(
        upstream,
        tmp_path,
        "--workers",
        "2",
        CALLMISSED_BREAKER_FAILURES="1",
        CALLMISSED_BREAKER_OPEN="60",
        CALLMISSED_MAX_ATTEMPTS="1",
    )
    try:
        with two_workers(running) as (one, other):
            survivor = one.get("/healthz").json()["worker"]
            victim = other.get("/healthz").json()["worker"]
            assert chat(one, running.key, model="priced-fails").status_code == 502
            _eventually(
                lambda: _route_health(other, running.key, "priced-fails")["state"] == "open"
            )
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while True:  # a connection to the victim's successor
            assert time.monotonic() < deadline, f"no worker replaced {victim}"
            with (
                httpx.Client(base_url=running.url, timeout=5) as client,
                contextlib.suppress(httpx.HTTPError),
            ):
                if client.get("/healthz").json()["worker"] not in (victim, survivor):
                    assert _route_health(client, running.key, "priced-fails")["state"] == "open"
                    break
            time.sleep(0.02)
    finally:
        stop_gateway(running)
