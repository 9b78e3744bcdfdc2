-- SQLite only (the other has its own file): the console's rollup tables (store/rollup.py).
-- Per model and route: requests, failures, money, tokens and a first-token histogram (bucket
-- upper bounds in ms: 1, 2.5, 5, 10, 25, 50, 75, 100, 150, 200, 300, 400, 500, 650, 800, 1000,
-- 1300, 1600, 2000, 2500, 3000, 4000, 5000, 7500, 10000, 20000, then the rest: TTFB_BOUNDS_MS).
CREATE TABLE usage_by_route (
    period            INTEGER NOT NULL,   -- 60, 3600, 21600 or 86400 seconds
    bucket            BIGINT  NOT NULL,   -- the bucket's start, seconds since the epoch (UTC)
    tag               TEXT    NOT NULL,   -- '' for every request, else the requests with this tag
    model             TEXT    NOT NULL,
    route             TEXT    NOT NULL,   -- provider:upstream_model; a failure's last one; ''
    requests          BIGINT  NOT NULL,
    errors            BIGINT  NOT NULL,   -- status >= 400, except 499
    cancelled         BIGINT  NOT NULL,   -- status 499: the client went away
    cost              BIGINT  NOT NULL,   -- micro-credits charged
    uncharged         BIGINT  NOT NULL,
    prompt_tokens     BIGINT  NOT NULL,
    completion_tokens BIGINT  NOT NULL,
    reasoning_tokens  BIGINT  NOT NULL,
    cached_tokens     BIGINT  NOT NULL,
    ttfb_sum          DOUBLE PRECISION NOT NULL,   -- ms, over the requests with a first token
    total_sum         DOUBLE PRECISION NOT NULL,   -- ms
    h00 BIGINT NOT NULL DEFAULT 0,
    h01 BIGINT NOT NULL DEFAULT 0,
    h02 BIGINT NOT NULL DEFAULT 0,
    h03 BIGINT NOT NULL DEFAULT 0,
    h04 BIGINT NOT NULL DEFAULT 0,
    h05 BIGINT NOT NULL DEFAULT 0,
    h06 BIGINT NOT NULL DEFAULT 0,
    h07 BIGINT NOT NULL DEFAULT 0,
    h08 BIGINT NOT NULL DEFAULT 0,
    h09 BIGINT NOT NULL DEFAULT 0,
    h10 BIGINT NOT NULL DEFAULT 0,
    h11 BIGINT NOT NULL DEFAULT 0,
    h12 BIGINT NOT NULL DEFAULT 0,
    h13 BIGINT NOT NULL DEFAULT 0,
    h14 BIGINT NOT NULL DEFAULT 0,
    h15 BIGINT NOT NULL DEFAULT 0,
    h16 BIGINT NOT NULL DEFAULT 0,
    h17 BIGINT NOT NULL DEFAULT 0,
    h18 BIGINT NOT NULL DEFAULT 0,
    h19 BIGINT NOT NULL DEFAULT 0,
    h20 BIGINT NOT NULL DEFAULT 0,
    h21 BIGINT NOT NULL DEFAULT 0,
    h22 BIGINT NOT NULL DEFAULT 0,
    h23 BIGINT NOT NULL DEFAULT 0,
    h24 BIGINT NOT NULL DEFAULT 0,
    h25 BIGINT NOT NULL DEFAULT 0,
    h26 BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (period, tag, bucket, model, route)
) WITHOUT ROWID;
CREATE INDEX usage_by_route_age ON usage_by_route (period, bucket);

-- Per key: what "the biggest spenders" and the keys page sum.
CREATE TABLE usage_by_key (
    period            INTEGER NOT NULL,
    bucket            BIGINT  NOT NULL,
    tag               TEXT    NOT NULL,
    key_id            INTEGER NOT NULL,
    requests          BIGINT  NOT NULL,
    errors            BIGINT  NOT NULL,
    cost              BIGINT  NOT NULL,
    prompt_tokens     BIGINT  NOT NULL,
    completion_tokens BIGINT  NOT NULL,
    PRIMARY KEY (period, tag, bucket, key_id)
) WITHOUT ROWID;
CREATE INDEX usage_by_key_age ON usage_by_key (period, bucket);

-- Rows settled before this migration, summed once (later ones add up as they settle).
INSERT INTO usage_by_route
SELECT 60, CAST(created_at / 60 AS INTEGER) * 60, '', model,
       CASE WHEN route = '' THEN '' ELSE route || ':' || upstream_model END,
       count(*), sum(CASE WHEN status >= 400 AND status <> 499 THEN 1 ELSE 0 END),
       sum(CASE WHEN status = 499 THEN 1 ELSE 0 END), sum(cost), sum(uncharged),
       sum(prompt_tokens), sum(completion_tokens), sum(reasoning_tokens), sum(cached_tokens),
       sum(COALESCE(ttfb_ms, 0)), sum(total_ms),
       sum(CASE WHEN ttfb_ms < 1 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 1 AND ttfb_ms < 2.5 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 2.5 AND ttfb_ms < 5 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 5 AND ttfb_ms < 10 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 10 AND ttfb_ms < 25 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 25 AND ttfb_ms < 50 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 50 AND ttfb_ms < 75 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 75 AND ttfb_ms < 100 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 100 AND ttfb_ms < 150 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 150 AND ttfb_ms < 200 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 200 AND ttfb_ms < 300 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 300 AND ttfb_ms < 400 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 400 AND ttfb_ms < 500 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 500 AND ttfb_ms < 650 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 650 AND ttfb_ms < 800 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 800 AND ttfb_ms < 1000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 1000 AND ttfb_ms < 1300 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 1300 AND ttfb_ms < 1600 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 1600 AND ttfb_ms < 2000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 2000 AND ttfb_ms < 2500 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 2500 AND ttfb_ms < 3000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 3000 AND ttfb_ms < 4000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 4000 AND ttfb_ms < 5000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 5000 AND ttfb_ms < 7500 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 7500 AND ttfb_ms < 10000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 10000 AND ttfb_ms < 20000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 20000 THEN 1 ELSE 0 END)
  FROM ledger
 GROUP BY 2, 4, 5;
INSERT INTO usage_by_key
SELECT 60, CAST(created_at / 60 AS INTEGER) * 60, '', key_id, count(*),
       sum(CASE WHEN status >= 400 AND status <> 499 THEN 1 ELSE 0 END), sum(cost),
       sum(prompt_tokens), sum(completion_tokens)
  FROM ledger
 GROUP BY 2, 4;
INSERT INTO usage_by_route
SELECT 3600, CAST(created_at / 3600 AS INTEGER) * 3600, '', model,
       CASE WHEN route = '' THEN '' ELSE route || ':' || upstream_model END,
       count(*), sum(CASE WHEN status >= 400 AND status <> 499 THEN 1 ELSE 0 END),
       sum(CASE WHEN status = 499 THEN 1 ELSE 0 END), sum(cost), sum(uncharged),
       sum(prompt_tokens), sum(completion_tokens), sum(reasoning_tokens), sum(cached_tokens),
       sum(COALESCE(ttfb_ms, 0)), sum(total_ms),
       sum(CASE WHEN ttfb_ms < 1 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 1 AND ttfb_ms < 2.5 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 2.5 AND ttfb_ms < 5 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 5 AND ttfb_ms < 10 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 10 AND ttfb_ms < 25 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 25 AND ttfb_ms < 50 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 50 AND ttfb_ms < 75 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 75 AND ttfb_ms < 100 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 100 AND ttfb_ms < 150 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 150 AND ttfb_ms < 200 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 200 AND ttfb_ms < 300 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 300 AND ttfb_ms < 400 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 400 AND ttfb_ms < 500 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 500 AND ttfb_ms < 650 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 650 AND ttfb_ms < 800 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 800 AND ttfb_ms < 1000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 1000 AND ttfb_ms < 1300 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 1300 AND ttfb_ms < 1600 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 1600 AND ttfb_ms < 2000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 2000 AND ttfb_ms < 2500 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 2500 AND ttfb_ms < 3000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 3000 AND ttfb_ms < 4000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 4000 AND ttfb_ms < 5000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 5000 AND ttfb_ms < 7500 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 7500 AND ttfb_ms < 10000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 10000 AND ttfb_ms < 20000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 20000 THEN 1 ELSE 0 END)
  FROM ledger
 GROUP BY 2, 4, 5;
INSERT INTO usage_by_key
SELECT 3600, CAST(created_at / 3600 AS INTEGER) * 3600, '', key_id, count(*),
       sum(CASE WHEN status >= 400 AND status <> 499 THEN 1 ELSE 0 END), sum(cost),
       sum(prompt_tokens), sum(completion_tokens)
  FROM ledger
 GROUP BY 2, 4;
INSERT INTO usage_by_route
SELECT 21600, CAST(created_at / 21600 AS INTEGER) * 21600, '', model,
       CASE WHEN route = '' THEN '' ELSE route || ':' || upstream_model END,
       count(*), sum(CASE WHEN status >= 400 AND status <> 499 THEN 1 ELSE 0 END),
       sum(CASE WHEN status = 499 THEN 1 ELSE 0 END), sum(cost), sum(uncharged),
       sum(prompt_tokens), sum(completion_tokens), sum(reasoning_tokens), sum(cached_tokens),
       sum(COALESCE(ttfb_ms, 0)), sum(total_ms),
       sum(CASE WHEN ttfb_ms < 1 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 1 AND ttfb_ms < 2.5 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 2.5 AND ttfb_ms < 5 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 5 AND ttfb_ms < 10 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 10 AND ttfb_ms < 25 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 25 AND ttfb_ms < 50 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 50 AND ttfb_ms < 75 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 75 AND ttfb_ms < 100 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 100 AND ttfb_ms < 150 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 150 AND ttfb_ms < 200 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 200 AND ttfb_ms < 300 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 300 AND ttfb_ms < 400 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 400 AND ttfb_ms < 500 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 500 AND ttfb_ms < 650 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 650 AND ttfb_ms < 800 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 800 AND ttfb_ms < 1000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 1000 AND ttfb_ms < 1300 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 1300 AND ttfb_ms < 1600 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 1600 AND ttfb_ms < 2000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 2000 AND ttfb_ms < 2500 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 2500 AND ttfb_ms < 3000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 3000 AND ttfb_ms < 4000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 4000 AND ttfb_ms < 5000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 5000 AND ttfb_ms < 7500 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 7500 AND ttfb_ms < 10000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 10000 AND ttfb_ms < 20000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 20000 THEN 1 ELSE 0 END)
  FROM ledger
 GROUP BY 2, 4, 5;
INSERT INTO usage_by_key
SELECT 21600, CAST(created_at / 21600 AS INTEGER) * 21600, '', key_id, count(*),
       sum(CASE WHEN status >= 400 AND status <> 499 THEN 1 ELSE 0 END), sum(cost),
       sum(prompt_tokens), sum(completion_tokens)
  FROM ledger
 GROUP BY 2, 4;
INSERT INTO usage_by_route
SELECT 86400, CAST(created_at / 86400 AS INTEGER) * 86400, '', model,
       CASE WHEN route = '' THEN '' ELSE route || ':' || upstream_model END,
       count(*), sum(CASE WHEN status >= 400 AND status <> 499 THEN 1 ELSE 0 END),
       sum(CASE WHEN status = 499 THEN 1 ELSE 0 END), sum(cost), sum(uncharged),
       sum(prompt_tokens), sum(completion_tokens), sum(reasoning_tokens), sum(cached_tokens),
       sum(COALESCE(ttfb_ms, 0)), sum(total_ms),
       sum(CASE WHEN ttfb_ms < 1 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 1 AND ttfb_ms < 2.5 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 2.5 AND ttfb_ms < 5 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 5 AND ttfb_ms < 10 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 10 AND ttfb_ms < 25 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 25 AND ttfb_ms < 50 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 50 AND ttfb_ms < 75 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 75 AND ttfb_ms < 100 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 100 AND ttfb_ms < 150 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 150 AND ttfb_ms < 200 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 200 AND ttfb_ms < 300 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 300 AND ttfb_ms < 400 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 400 AND ttfb_ms < 500 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 500 AND ttfb_ms < 650 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 650 AND ttfb_ms < 800 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 800 AND ttfb_ms < 1000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 1000 AND ttfb_ms < 1300 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 1300 AND ttfb_ms < 1600 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 1600 AND ttfb_ms < 2000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 2000 AND ttfb_ms < 2500 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 2500 AND ttfb_ms < 3000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 3000 AND ttfb_ms < 4000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 4000 AND ttfb_ms < 5000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 5000 AND ttfb_ms < 7500 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 7500 AND ttfb_ms < 10000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 10000 AND ttfb_ms < 20000 THEN 1 ELSE 0 END),
       sum(CASE WHEN ttfb_ms >= 20000 THEN 1 ELSE 0 END)
  FROM ledger
 GROUP BY 2, 4, 5;
INSERT INTO usage_by_key
SELECT 86400, CAST(created_at / 86400 AS INTEGER) * 86400, '', key_id, count(*),
       sum(CASE WHEN status >= 400 AND status <> 499 THEN 1 ELSE 0 END), sum(cost),
       sum(prompt_tokens), sum(completion_tokens)
  FROM ledger
 GROUP BY 2, 4;
