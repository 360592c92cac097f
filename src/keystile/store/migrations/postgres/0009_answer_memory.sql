-- keystile schema (PostgreSQL only): introspection answers remembered in each AS
-- process stay right across processes (store/postgres/answers.py, decision 0007).
--
-- An answer depends on the token's row and on the registry (clients, resource servers,
-- keys: registry_version, bumped by the triggers of 0001/0002). A transaction that changes
-- either marks itself (keystile.answers_changed, transaction-local) and notifies every
-- process; the writer then waits, before it answers, until every process that holds an
-- answer lease has acknowledged (answer_leases.fence) or has lost its lease.

CREATE TABLE answer_leases (
    instance_id TEXT PRIMARY KEY,
    expires_at  TIMESTAMPTZ NOT NULL,
    fence       BIGINT NOT NULL DEFAULT 0  -- the highest fence number it acknowledged
);

CREATE SEQUENCE answer_fence;

CREATE FUNCTION keystile_answers_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM changed_rows) THEN
        PERFORM set_config('keystile.answers_changed', '1', true);
        PERFORM pg_notify('keystile_answers', current_schema());
    END IF;
    RETURN NULL;
END $$;

-- New tokens change no remembered answer (nobody could ask about a token before it
-- existed); updates (revocation) and deletes do. One trigger per event: a trigger with a
-- transition table may have only one.
CREATE TRIGGER tokens_answers_updated AFTER UPDATE ON tokens
    REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION keystile_answers_changed();
CREATE TRIGGER tokens_answers_deleted AFTER DELETE ON tokens
    REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION keystile_answers_changed();
CREATE TRIGGER registry_answers_changed AFTER UPDATE ON registry_version
    REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION keystile_answers_changed();
