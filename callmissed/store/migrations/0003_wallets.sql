-- Wallets (docs/credits.md): each gateway process moves a key's credit out of its balance in
-- batches, into one hold row of its own per key, and takes each request's worst case from it in
-- memory. A wallet row is not a request, so giving it back writes no ledger row. Holds are now
-- written once per top-up, not per request, so looking them up by key is worth an index: reads
-- of a key's balance add its wallets back.
ALTER TABLE holds ADD COLUMN wallet BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX IF NOT EXISTS holds_by_key ON holds (key_id);
