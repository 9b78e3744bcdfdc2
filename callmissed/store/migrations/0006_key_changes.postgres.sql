-- PostgreSQL only: announce every change to what a key may do (revocation, limits, allow-list,
-- top-up), not only revocations (0004), so that every gateway process drops the key from memory
-- at once. Settlements and wallet top-ups change only credits and spent: they announce nothing.
DROP TRIGGER api_keys_revoked ON api_keys;
CREATE TRIGGER api_keys_changed
    AFTER UPDATE OF revoked_at, rpm, tpm, max_concurrent, models, granted ON api_keys
    FOR EACH ROW WHEN (
        (OLD.revoked_at, OLD.rpm, OLD.tpm, OLD.max_concurrent, OLD.models, OLD.granted)
        IS DISTINCT FROM
        (NEW.revoked_at, NEW.rpm, NEW.tpm, NEW.max_concurrent, NEW.models, NEW.granted)
    )
    EXECUTE FUNCTION callmissed_key_changed();
