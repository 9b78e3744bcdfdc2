"""Retention: old ledger rows are deleted in batches, and what they added up to is kept."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import httpx
import pytest

from callmissed.store import open_store
from tests.accounting import ADMIN_TOKEN, BACKENDS, backend_env, query
from tests.conftest import stop_gateway
from tests.console.conftest import admin_get, ask, sdk, start_console_gateway
from tests.store.test_store_contract import entry

DAY = 86400
OLD = 1_200  # more than two of retention's batches


def _settle_old_rows(url: str, key_id: int, days_ago: float) -> None:
    """Rows as a gateway would have settled them `days_ago` days back, tagged, in one go."""
    at = time.time() - days_ago * DAY

    async def main() -> None:
        store = open_store(url)
        await store.start()
        try:
            rows = [
                dataclasses.replace(entry(f"old-{n}", key_id, 10), created_at=at + n, tags=["old"])
                for n in range(OLD)
            ]
            for start in range(0, OLD, 200):
                await store.settle(rows[start : start + 200])
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.parametrize("backend", BACKENDS)
def test_old_rows_go_and_their_daily_totals_stay(upstream, faults, tmp_path, backend):
    with backend_env(backend) as env:
        gateway = start_console_gateway(
            upstream, faults, tmp_path, CALLMISSED_RETENTION_DAYS="10", **env
        )
        try:
            _check_retention(gateway)
        finally:
            stop_gateway(gateway)


def _check_retention(gateway) -> None:
    with sdk(gateway) as client:
        recent = ask(client, "plain")
    _settle_old_rows(gateway.env["CALLMISSED_DATABASE_URL"], 1, days_ago=20)
    before = admin_get(gateway, "/admin/overview", range="30d")["totals"]
    assert before["requests"] == OLD + 1 and before["cost"] > 0
    ran = httpx.post(
        f"{gateway.url}/admin/retention", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
    ).json()
    assert ran["days"] == 10
    assert ran["ran"]["ledger_rows"] == OLD
    assert ran["ran"]["rollup_rows"] > 0  # the old rows' minutes and hours
    assert ran["oldest_request_at"] > time.time() - DAY
    rows = query(gateway, "SELECT request_id FROM ledger")
    assert [request_id for (request_id,) in rows] == [recent]
    assert query(gateway, "SELECT count(*) FROM ledger_tags") == [(0,)]
    old_hours = query(
        gateway,
        "SELECT count(*) FROM usage_by_route WHERE period < 86400 AND bucket < ?",
        int(time.time()) - 10 * DAY,
    )
    assert old_hours == [(0,)]
    # The 30-day view reads the daily totals once hourly ones are past the retention age.
    after = admin_get(gateway, "/admin/overview", range="30d")
    assert after["step"] == DAY
    assert after["totals"]["requests"] == OLD + 1
    assert after["totals"]["cost"] == before["cost"]
    tagged = admin_get(gateway, "/admin/tags", range="30d")["data"]
    assert [(tag["tag"], tag["requests"]) for tag in tagged] == [("old", OLD)]
    again = httpx.post(
        f"{gateway.url}/admin/retention", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
    ).json()
    assert again["ran"]["ledger_rows"] == 0


def test_zero_days_keeps_every_row(upstream, faults, tmp_path):
    gateway = start_console_gateway(upstream, faults, tmp_path, CALLMISSED_RETENTION_DAYS="0")
    try:
        _settle_old_rows(gateway.env["CALLMISSED_DATABASE_URL"], 1, days_ago=400)
        ran = httpx.post(
            f"{gateway.url}/admin/retention", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
        ).json()
        assert ran["days"] == 0 and ran["ran"]["ledger_rows"] == 0
        assert query(gateway, "SELECT count(*) FROM ledger") == [(OLD,)]
    finally:
        stop_gateway(gateway)


@pytest.mark.parametrize(("value", "days"), [(None, 90.0), ("0", 0.0), ("7.5", 7.5)])
def test_the_retention_age_is_a_setting(value, days):
    from callmissed.settings import load_settings

    env = {"CALLMISSED_RETENTION_DAYS": value} if value is not None else {}
    assert load_settings(env).accounting.retention_days == days


@pytest.mark.parametrize("value", ["-1", "forever", "inf", "100000"])
def test_a_bad_retention_age_is_refused(value):
    from callmissed.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="CALLMISSED_RETENTION_DAYS"):
        load_settings({"CALLMISSED_RETENTION_DAYS": value})
