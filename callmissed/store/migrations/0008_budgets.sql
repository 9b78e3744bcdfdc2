-- Budgets that reset (docs/credits.md, store/budget.py): a metered key's limit may start afresh
-- every UTC day, week (from Monday) or month, as OpenRouter's keys do. For such a key `granted`
-- is its limit per window, `window_start` the start (Unix seconds) of the window its balance
-- belongs to, and `window_spent` what settlements charged it in that window, so that
-- credits + its holds + window_spent = granted. The statements that fund and settle a key roll
-- it into a new window themselves (credits += window_spent; window_spent = 0): atomic with them.
ALTER TABLE api_keys ADD COLUMN limit_reset TEXT
    CHECK (limit_reset IN ('daily', 'weekly', 'monthly'));
ALTER TABLE api_keys ADD COLUMN window_start DOUBLE PRECISION;
ALTER TABLE api_keys ADD COLUMN window_spent BIGINT NOT NULL DEFAULT 0;
