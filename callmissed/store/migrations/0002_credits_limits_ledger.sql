-- Credits, per-key limits, in-flight credit holds and the usage ledger (docs/credits.md).
-- Money is integer micro-credits (1 credit = 1 USD); api_keys.credits stays the spendable balance.
ALTER TABLE api_keys ADD COLUMN granted BIGINT;                 -- credits ever granted; NULL: unlimited
ALTER TABLE api_keys ADD COLUMN spent BIGINT NOT NULL DEFAULT 0; -- settled cost, all time
ALTER TABLE api_keys ADD COLUMN rpm INTEGER;                    -- requests per minute; NULL: no limit
ALTER TABLE api_keys ADD COLUMN tpm INTEGER;                    -- tokens per minute
ALTER TABLE api_keys ADD COLUMN max_concurrent INTEGER;         -- requests in flight at once
ALTER TABLE api_keys ADD COLUMN models TEXT;                    -- comma-separated allow-list; NULL: all
UPDATE api_keys SET granted = credits;

-- One row per request in flight that reserved credits: what it took from the balance, and which
-- gateway process owns it, so a crashed process's holds can be given back. Written on the hot
-- path, so it has no secondary index (it only ever holds the requests in flight).
CREATE TABLE IF NOT EXISTS holds (
    request_id  TEXT    PRIMARY KEY,
    key_id      INTEGER NOT NULL REFERENCES api_keys (id),
    amount      BIGINT  NOT NULL,
    instance    TEXT    NOT NULL,
    model       TEXT    NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL
);

-- One row per request that reached an upstream; cost is what the key was charged.
CREATE TABLE IF NOT EXISTS ledger (
    request_id        TEXT    PRIMARY KEY,
    key_id            INTEGER NOT NULL REFERENCES api_keys (id),
    created_at        DOUBLE PRECISION NOT NULL,
    model             TEXT    NOT NULL,
    route             TEXT    NOT NULL,   -- provider name
    upstream_model    TEXT    NOT NULL,
    stream            BOOLEAN NOT NULL,
    status            INTEGER NOT NULL,   -- HTTP status; 499: the client went away
    error_code        TEXT,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,   -- includes reasoning_tokens
    reasoning_tokens  INTEGER NOT NULL,
    cached_tokens     INTEGER NOT NULL,   -- part of prompt_tokens
    cost              BIGINT  NOT NULL,   -- micro-credits charged
    uncharged         BIGINT  NOT NULL,   -- cost the balance could not cover (0 unless it ran dry)
    ttfb_ms           DOUBLE PRECISION,
    total_ms          DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_by_key ON ledger (key_id, created_at);
