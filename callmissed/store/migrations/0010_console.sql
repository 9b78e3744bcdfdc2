-- The operator console (docs/console.md): what one request did, filters that stay fast at
-- millions of rows, and tags.
ALTER TABLE ledger ADD COLUMN effort_in TEXT;    -- reasoning_effort as received; NULL: none sent
ALTER TABLE ledger ADD COLUMN effort_out TEXT;   -- as sent upstream ('dropped': removed)
ALTER TABLE ledger ADD COLUMN attempts TEXT;     -- JSON: every upstream attempt, if more than one
                                                 -- or if it failed (failover.py's Attempt)
ALTER TABLE ledger ADD COLUMN tags TEXT;         -- JSON list; also one ledger_tags row each
ALTER TABLE ledger ADD COLUMN error_message TEXT; -- what a failed request's client was told

-- The Requests page reads newest first, by (created_at, request_id), through one of these:
-- each lets a page of rows start where the last one ended, however deep it is (keyset).
DROP INDEX ledger_by_key;
CREATE INDEX ledger_by_key ON ledger (key_id, created_at, request_id);
CREATE INDEX ledger_by_time ON ledger (created_at, request_id);
CREATE INDEX ledger_by_model ON ledger (model, created_at, request_id);
CREATE INDEX ledger_by_route ON ledger (route, upstream_model, created_at, request_id);
CREATE INDEX ledger_failures ON ledger (created_at, request_id) WHERE status <> 200;

-- A request's tags (x-callmissed-tags, or the body's metadata), one row each, for filtering.
CREATE TABLE IF NOT EXISTS ledger_tags (
    tag         TEXT NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL,
    request_id  TEXT NOT NULL,
    PRIMARY KEY (tag, created_at, request_id)
);
CREATE INDEX IF NOT EXISTS ledger_tags_by_request ON ledger_tags (request_id);
