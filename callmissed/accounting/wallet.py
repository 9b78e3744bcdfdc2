"""Wallets: a process spends a metered key's credit from memory, taken from its balance in batches.

A request holds its worst case in this process's wallet for its key: integer arithmetic, no
database. The store is asked only to top a wallet up (`Store.fund`, one atomic statement into
the wallet's own hold row): in the background when the wallet runs low, and on the request's
path only when it cannot cover the request. When the request ends, what it did not use goes
back to the wallet at once; its ledger entry names the wallet, whose row pays the cost when the
entry is settled. A wallet idle for `IDLE` seconds gives its credit back to the key's balance
(the ledger writer calls `give_back_idle`); so does a clean shutdown, and recovery does it for a
process that died (`Store.release_holds`). docs/credits.md has the guarantees.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from callmissed.store import Funding, Store

__all__ = ["BATCH", "IDLE", "Wallet", "Wallets"]

log = logging.getLogger("callmissed")

BATCH = 16  # a top-up asks for this many worst cases (the store caps it at a fair share)
MAX_BATCH = 1024  # ...doubling up to this many while top-ups come less than a second apart
REFILL_BELOW = 4  # a wallet with less than a quarter of a batch left is topped up in the background
IDLE = 2.0  # seconds without a request after which a wallet goes back to the key's balance


class Wallet:
    """One key's credit in this process.

    `free` is what no request holds. It is an underestimate, never an overestimate, of what the
    store's row will hold once this process's finished requests are settled: a request that cost
    more than its hold takes the difference out of `free` (below zero if need be), while the
    store may have taken part of it from the key's balance instead. `flying` counts the requests
    and top-ups holding or waiting for part of it; a wallet is given back only when there are
    none.
    """

    __slots__ = (
        "batch", "flying", "free", "funded", "funded_at", "funding", "hold_id", "key_id",
        "refilling", "used_at",
    )  # fmt: skip

    def __init__(self, key_id: int, hold_id: str) -> None:
        self.key_id = key_id
        self.hold_id = hold_id
        self.free = 0
        self.flying = 0
        self.funded = False  # the store has a row for it
        self.funded_at = 0.0
        self.batch = BATCH  # worst cases the next top-up asks for
        self.funding = asyncio.Lock()  # held by the top-up on its way, if any
        self.refilling = False  # a background top-up is on its way
        self.used_at = time.monotonic()

    def take(self, amount: int) -> None:
        self.free -= amount
        self.flying += 1

    def put_back(self, held: int, cost: int) -> None:
        """A request that held `held` ended, having used `cost`."""
        self.free += held - cost
        self.flying -= 1
        self.used_at = time.monotonic()


class Wallets:
    """This process's wallets, one per metered key it has served lately."""

    def __init__(self, store: Store, instance: str | None = None) -> None:
        """`instance` names this process in the store's hold rows (a new one if None)."""
        self._store = store
        self.instance = instance or uuid.uuid4().hex
        self._open: dict[int, Wallet] = {}
        self._opened = 0
        self._stranded: list[str] = []  # wallets whose give-back failed: retried by the sweep
        self._refills: set[asyncio.Task[None]] = set()
        self.closed = False  # after shutdown nothing may be funded (holds.py refuses first)

    def __len__(self) -> int:
        return len(self._open)

    def take(self, key_id: int, amount: int) -> Wallet | None:
        """Hold `amount` from the key's wallet if it covers it: the common case, no I/O."""
        wallet = self._open.get(key_id)
        if wallet is None or wallet.free < amount:
            return None
        wallet.take(amount)
        if wallet.free * REFILL_BELOW < wallet.batch * amount and not wallet.refilling:
            wallet.refilling = True
            refill = asyncio.get_running_loop().create_task(self._refill(wallet, amount))
            self._refills.add(refill)
            refill.add_done_callback(self._refills.discard)
        return wallet

    def free(self, key_id: int) -> int:
        wallet = self._open.get(key_id)
        return max(wallet.free, 0) if wallet is not None else 0

    async def top_up(self, key_id: int, amount: int) -> Wallet | Funding:
        """Hold `amount` after topping the wallet up from the store; the store's refusal if the
        key's balance cannot make up the difference."""
        wallet = self._open.get(key_id)
        if wallet is None:
            self._opened += 1
            wallet = Wallet(key_id, f"wallet:{self.instance}:{key_id}:{self._opened}")
            self._open[key_id] = wallet
        wallet.flying += 1  # not given back while this waits
        try:
            # One top-up at a time per wallet, so that each sees what the one before brought:
            # concurrent ones could each be refused while together they had covered them all.
            async with wallet.funding:
                while wallet.free < amount:
                    funding = await self._fund(wallet, amount - wallet.free, amount)
                    if not funding.taken:
                        return funding
                wallet.take(amount)
                return wallet
        finally:
            wallet.flying -= 1
            if not (wallet.funded or wallet.flying) and self._open.get(key_id) is wallet:
                del self._open[key_id]  # refused before it held anything: nothing to give back

    async def _refill(self, wallet: Wallet, amount: int) -> None:
        wallet.flying += 1
        try:
            async with wallet.funding:
                low = wallet.free * REFILL_BELOW < wallet.batch * amount
                if low and self._open.get(wallet.key_id) is wallet:
                    await self._fund(wallet, amount, amount)
        except Exception as exc:  # the next request that finds the wallet short tries again
            log.warning("wallet: topping up key %d failed: %s", wallet.key_id, exc)
        finally:
            wallet.flying -= 1
            wallet.refilling = False

    async def _fund(self, wallet: Wallet, need: int, amount: int) -> Funding:
        """Top up by at least `need`, asking for a batch of `amount`-sized worst cases."""
        want = max(need, wallet.batch * amount)
        funding = await self._store.fund(wallet.key_id, wallet.hold_id, need, want, self.instance)
        if self.closed and funding.taken:  # shut down meanwhile: nobody would give it back
            await self._store.give_back(wallet.hold_id)
            return Funding(0, None)
        if funding.taken:
            wallet.free += funding.taken
            wallet.funded = True
            now = time.monotonic()
            if now - wallet.funded_at < 1.0:  # a busy key: fewer, larger top-ups
                wallet.batch = min(wallet.batch * 2, MAX_BATCH)
            wallet.funded_at = now
        return funding

    async def retire(self, key_id: int) -> bool:
        """Give the key's wallet back if nothing holds part of it, so that the next top-up starts
        from the store's exact figures; the caller has settled this process's entries first."""
        wallet = self._open.get(key_id)
        if wallet is None or wallet.flying:
            return False
        del self._open[key_id]
        await self._give_back([wallet.hold_id])
        return True

    async def release(self, key_id: int, settled: bool) -> int:
        """Give back the key's credit that no request here holds, because another process
        cannot fund a request of it: the whole wallet if nothing holds part of it and `settled`
        (this process's entries are all in the store, so its row is exact), else its free
        credit. The amount given back.

        Giving back `free` leaves the row enough for every request in flight and every entry
        not settled yet: `free` never counts more than the row holds beyond them."""
        wallet = self._open.get(key_id)
        if wallet is None or self.closed:
            return 0
        if settled and not wallet.flying:
            del self._open[key_id]
            return await self._give_back([wallet.hold_id])
        amount = wallet.free
        if amount <= 0:
            return 0
        wallet.free = 0  # before the await: no request here may hold it meanwhile
        given = 0
        try:
            given = await self._store.give_back(wallet.hold_id, amount)
        finally:
            wallet.free += amount - given
        return given

    def retirable(self, key_id: int) -> bool:
        wallet = self._open.get(key_id)
        return wallet is not None and not wallet.flying

    async def give_back_idle(self) -> int:
        """Give back the wallets no request has used for IDLE seconds; call it only when every
        journaled entry is settled (an unsettled one may still draw on its wallet's row)."""
        deadline = time.monotonic() - IDLE
        idle = [w for w in self._open.values() if not w.flying and w.used_at <= deadline]
        for wallet in idle:
            del self._open[wallet.key_id]  # the key's next request opens a new one
        ids, self._stranded = [*self._stranded, *(w.hold_id for w in idle)], []
        await self._give_back(ids)
        return len(idle)

    async def _give_back(self, ids: list[str]) -> int:
        given = 0
        for index, hold_id in enumerate(ids):
            try:
                given += await self._store.give_back(hold_id)
            except Exception:
                self._stranded.extend(ids[index:])
                raise
        return given

    async def close(self) -> None:
        """Fund nothing more and forget every wallet: the store's release_holds() gives their
        rows back once the top-ups still on their way have landed (or been given back)."""
        self.closed = True
        if self._refills:
            await asyncio.gather(*self._refills, return_exceptions=True)
        self._open.clear()
        self._stranded.clear()
