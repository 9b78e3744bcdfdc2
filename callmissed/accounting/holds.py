"""Holds: a request's worst case taken from its key's credit before the upstream call.

The hold comes from this process's wallet for the key (wallet.py), in memory; only when the
wallet cannot cover it is the wallet topped up from the store. Refused a top-up, it first gives
the wallet back once this process's finished requests are settled (the wallet may undercount),
then asks the server's other workers, over peers.py, to give back what their wallets hold of the
key and no request of theirs does; only then is the request refused with a 402. The same module
answers the other workers' asks (`give_back`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from callmissed.accounting.ledger import Ledger
from callmissed.accounting.pricing import format_credits
from callmissed.accounting.wallet import Wallet, Wallets
from callmissed.auth import Principal
from callmissed.errors import InsufficientCredits, ShuttingDown
from callmissed.peers import Peers
from callmissed.store import Funding

__all__ = ["GIVE_BACK", "Holds"]

GIVE_BACK = "give_back"  # what one worker asks the others (peers.py) for a key's idle credit
# Longer than a scrape's bound: a peer settles its finished requests first, and a 402 that a
# moment's wait would have avoided is worse than the wait.
RECLAIM_WAIT = 2.0


class Holds:
    """Holds from this process's wallets; `peers` (None: a process alone) share idle credit."""

    def __init__(
        self,
        ledger: Ledger,
        wallets: Wallets,
        revoked: Callable[[], NoReturn],
        peers: Peers | None,
    ) -> None:
        """`revoked` raises the error of a key the store says is revoked (Admission.revoked)."""
        self._ledger = ledger
        self._wallets = wallets
        self._revoked = revoked
        self._peers = peers
        if peers is not None:
            peers.serve(GIVE_BACK, self._asked_to_give_back)

    async def take(self, principal: Principal, hold: int) -> Wallet | None:
        """Hold `hold` from the key's wallet; None if it holds nothing (free, or unmetered)."""
        if hold <= 0 or not principal.metered:
            return None
        wallet = self._wallets.take(principal.key_id, hold)
        return wallet if wallet is not None else await self._top_up(principal.key_id, hold)

    async def _top_up(self, key_id: int, hold: int) -> Wallet:
        wallets = self._wallets
        held = await wallets.top_up(key_id, hold) if not wallets.closed else Funding(0, None)
        if isinstance(held, Wallet):
            return held
        # The wallet may undercount what its row holds (a request that cost more than its hold):
        # once this process's entries are settled, giving it back makes the next top-up exact.
        settled = not held.revoked and wallets.retirable(key_id)
        settled = settled and await self._ledger.flush(at_most=1.0) and not self._ledger.pending
        if settled and await wallets.retire(key_id):
            held = await wallets.top_up(key_id, hold)
            if isinstance(held, Wallet):
                return held
        # Other workers' wallets may hold the credit this request needs: once they gave back
        # what no request of theirs holds, the balance is all the key has left.
        if not held.revoked and not wallets.closed and await self._reclaim(key_id):
            held = await wallets.top_up(key_id, hold)
            if isinstance(held, Wallet):
                return held
        if held.revoked:
            self._revoked()
        if wallets.closed:  # after shutdown nothing may be funded: nobody would give it back
            raise ShuttingDown("The server is shutting down; send the request again.")
        left = (held.balance or 0) + wallets.free(key_id)
        raise InsufficientCredits(
            f"Insufficient credits: this key has ${format_credits(left):.6f} "
            f"left, and this request could cost up to ${format_credits(hold):.6f}. "
            "Top the key up, or lower max_tokens."
        )

    async def _reclaim(self, key_id: int) -> int:
        """Ask the server's other workers to give back what their wallets hold of a key; how
        much they did (alone, there is nobody to ask)."""
        if self._peers is None:
            return 0
        answers = await self._peers.ask(GIVE_BACK, key_id, within=RECLAIM_WAIT)
        return sum(answers.values)

    async def give_back(self, key_id: int) -> int:
        """Another worker cannot fund a request of this key: give back what this process's
        wallet holds of it and no request here does (all of it if idle); the amount."""
        wallets = self._wallets
        settled = wallets.retirable(key_id)
        settled = settled and await self._ledger.flush(at_most=0.5) and not self._ledger.pending
        return await wallets.release(key_id, settled)

    async def _asked_to_give_back(self, key_id: Any) -> int:
        return await self.give_back(key_id) if isinstance(key_id, int) else 0
