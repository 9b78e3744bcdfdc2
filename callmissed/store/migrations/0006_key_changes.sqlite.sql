-- SQLite only: one number that every change to what a key may do bumps (revocation, limits,
-- allow-list, top-up, deletion), so that after another process's commit a gateway process can
-- tell with one read whether the keys it holds in memory may be stale (store/sqlite.py).
-- Settlements and wallet top-ups change only credits and spent: they do not bump it.
CREATE TABLE key_changes (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL
);
INSERT INTO key_changes (id, generation) VALUES (1, 0);
CREATE TRIGGER api_keys_changed
    AFTER UPDATE OF revoked_at, rpm, tpm, max_concurrent, models, granted ON api_keys
BEGIN
    UPDATE key_changes SET generation = generation + 1 WHERE id = 1;
END;
CREATE TRIGGER api_keys_deleted AFTER DELETE ON api_keys
BEGIN
    UPDATE key_changes SET generation = generation + 1 WHERE id = 1;
END;
