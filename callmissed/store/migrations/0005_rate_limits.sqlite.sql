-- SQLite only: the rate limiter's sliding log (accounting/ratelimit/sqlite.py), shared by every process that
-- opens the database file. PostgreSQL deployments share limits through Redis instead.
-- Admissions of keys with an rpm limit, and the real tokens of finished requests of keys with a
-- tpm limit: rows older than the window are deleted as the key is used, and all once a window.
CREATE TABLE IF NOT EXISTS rate_requests (key_id INTEGER NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS rate_requests_by_key ON rate_requests (key_id, at);
CREATE TABLE IF NOT EXISTS rate_tokens (
    key_id INTEGER NOT NULL,
    at REAL NOT NULL,
    tokens INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS rate_tokens_by_key ON rate_tokens (key_id, at);
-- Requests in flight, with their reserved tokens and the ledger instance of the process holding
-- them; a dead owner's leases are deleted (its journal's flock is free).
CREATE TABLE IF NOT EXISTS rate_leases (
    id INTEGER PRIMARY KEY,
    key_id INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rate_leases_by_key ON rate_leases (key_id);
CREATE INDEX IF NOT EXISTS rate_leases_by_owner ON rate_leases (owner);
