-- PostgreSQL only: announce a key's revocation to every gateway process (LISTEN callmissed_keys),
-- so that a process that serves requests from memory stops serving a revoked key at once.
CREATE OR REPLACE FUNCTION callmissed_key_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('callmissed_keys', NEW.id::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER api_keys_revoked AFTER UPDATE OF revoked_at ON api_keys
    FOR EACH ROW WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at)
    EXECUTE FUNCTION callmissed_key_changed();
