-- Stored Responses (docs/responses.md): POST /v1/responses with `store` (the default) keeps the
-- response and the input items it answered, owned by the key that made it, until expires_at.
-- `size` is the bytes of both; response_quota sums them per key, so a key's total is bounded
-- without a scan, and its oldest rows make room for new ones.
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    key_id BIGINT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    size BIGINT NOT NULL,
    response TEXT NOT NULL,
    input_items TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_by_key ON responses (key_id, created_at);
CREATE INDEX IF NOT EXISTS responses_by_expiry ON responses (expires_at);
CREATE TABLE IF NOT EXISTS response_quota (
    key_id BIGINT PRIMARY KEY,
    bytes BIGINT NOT NULL
);
