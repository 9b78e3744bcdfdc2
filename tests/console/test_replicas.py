"""Two replicas on one PostgreSQL database: either one's console sees the other's requests, and a
session made on one works on the other."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.accounting import ADMIN_TOKEN, new_key, postgres_schema, settle
from tests.conftest import stop_gateway
from tests.console.conftest import admin_get, ask, sdk, start_console_gateway

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def replicas(upstream, faults, tmp_path_factory):
    with postgres_schema() as url:
        first = start_console_gateway(
            upstream, faults, tmp_path_factory.mktemp("replica-a"), CALLMISSED_DATABASE_URL=url
        )
        try:
            second = start_console_gateway(
                upstream, faults, tmp_path_factory.mktemp("replica-b"), CALLMISSED_DATABASE_URL=url
            )
            try:
                yield first, second
            finally:
                stop_gateway(second)
        finally:
            stop_gateway(first)


def test_one_replica_sees_the_others_requests(replicas):
    first, second = replicas
    key, key_id = new_key(second, credits=1)
    with sdk(second, key, **{"x-callmissed-tags": "replica"}) as client:
        made = [ask(client, "plain"), ask(client, "falls-back", stream=True)]
    settle(second, key)
    listed = [row["id"] for row in admin_get(first, "/admin/requests", key=key_id)["data"]]
    assert listed == made[::-1]
    detail = admin_get(first, f"/admin/requests/{made[1]}")["data"]
    assert len(detail["attempts"]) == 2
    totals = admin_get(first, "/admin/overview", range="1h", tag="replica")["totals"]
    assert totals["requests"] == 2


def test_a_session_from_one_replica_works_on_the_other(replicas):
    first, second = replicas
    with httpx.Client(base_url=first.url) as client:
        signed = client.post("/console/session", json={"token": ADMIN_TOKEN}).json()
        cookie = client.cookies["callmissed_console"]
    headers = {"cookie": f"callmissed_console={cookie}", "x-csrf-token": signed["csrf"]}
    made = httpx.post(f"{second.url}/admin/keys", json={"name": "across"}, headers=headers)
    assert made.status_code == 201
    key, key_id = made.json()["key"], made.json()["data"]["id"]
    # Revoked through the first replica's console API, refused by the second at once.
    revoked = httpx.post(f"{first.url}/admin/keys/{key_id}/revoke", headers=headers)
    assert revoked.status_code == 200
    with sdk(second, key) as client, pytest.raises(openai.AuthenticationError):
        ask(client, "plain")
