-- Upstream price lists (accounting/price_list.py): the last good copy of each, so that a restart without the
-- network still prices, and who is fetching it now, so that one process of the deployment does.
CREATE TABLE IF NOT EXISTS price_lists (
    source        TEXT PRIMARY KEY,            -- the provider the list came from
    fetched_at    DOUBLE PRECISION NOT NULL,   -- when the copy in `body` was fetched; 0: none yet
    body          TEXT,                        -- the checked list (price_list.encode_prices)
    claimed_until DOUBLE PRECISION NOT NULL    -- a process is fetching it until then
);

-- The upstream's own id for the answer (OpenRouter's `gen-…`): a bill can be checked against the
-- upstream's record of the same request (docs/credits.md).
ALTER TABLE ledger ADD COLUMN upstream_id TEXT;
