-- Stream lifecycle (docs/lifecycle.md): soft deletion, truncation, archiving, hard deletion.

-- A stream's lifecycle lives on its row, changed under the row lock appends take, so a delete
-- or a truncation is ordered before or after every append to the stream.
-- deleted_at: set by a delete (which also appends a `$StreamDeleted` tombstone event), cleared
--   when the stream is recreated;
-- truncated_before: the first version stream reads return (1: nothing hidden);
-- archived_at: set when maintenance moved the stream's events into events_archive.
-- Constant defaults: adding the columns rewrites nothing.
ALTER TABLE streams
    ADD COLUMN deleted_at timestamptz,
    ADD COLUMN truncated_before bigint NOT NULL DEFAULT 1,
    ADD COLUMN archived_at timestamptz;

-- Events of archived streams, with the columns they had in events: out of the live log, read on
-- request only.
CREATE TABLE events_archive (
    position        bigint      NOT NULL,
    transaction_id  bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL,
    recorded_at     timestamptz NOT NULL,
    correlation_id  uuid        NOT NULL,
    causation_id    uuid,
    metadata        json        NOT NULL,
    payload         json        NOT NULL,
    archived_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT events_archive_pkey PRIMARY KEY (stream_id, stream_version)
);

-- What maintenance removed from the live log, or from the store: one row per operation.
CREATE TABLE maintenance_log (
    id              bigint      GENERATED ALWAYS AS IDENTITY,
    operation       text        NOT NULL CHECK (operation IN ('archive', 'hard_delete')),
    stream_id       text        NOT NULL,
    events          bigint      NOT NULL,
    first_position  bigint,
    last_position   bigint,
    first_version   bigint,
    last_version    bigint,
    reason          text        NOT NULL,
    performed_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The login role that called the function (not the function's owner, whose rights it ran
    -- with).
    performed_by    text        NOT NULL DEFAULT session_user,
    CONSTRAINT maintenance_log_pkey PRIMARY KEY (id)
);
CREATE INDEX maintenance_log_stream ON maintenance_log (stream_id);

-- Stored events stay immutable. The one exception: a DELETE while the transaction-local
-- setting es.maintenance is 'remove_events' AND the current role owns the table, which holds
-- inside the maintenance functions below (SECURITY DEFINER: they run as the owner, set the
-- setting around their own DELETE and reset it). Any role may set the setting; only the
-- owner, who could as well disable the trigger, passes the second test. UPDATE and TRUNCATE
-- are always refused.
CREATE OR REPLACE FUNCTION refuse_event_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP OPERATOR(pg_catalog.=) 'DELETE'
        AND pg_catalog.current_setting('es.maintenance', true) OPERATOR(pg_catalog.=) 'remove_events'
        AND current_user OPERATOR(pg_catalog.=) (
            SELECT pg_catalog.pg_get_userbyid(c.relowner)
            FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) TG_RELID)
    THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'stored events are immutable: % on %.% refused', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'ES001';
END
$$;

CREATE TRIGGER events_archive_is_immutable
    BEFORE UPDATE OR DELETE ON events_archive
    FOR EACH ROW EXECUTE FUNCTION refuse_event_change();

CREATE TRIGGER events_archive_is_not_truncated
    BEFORE TRUNCATE ON events_archive
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_event_change();

-- The log of what was removed is itself append-only.
CREATE FUNCTION refuse_maintenance_log_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the maintenance log is append-only: % on %.% refused', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'ES001';
END
$$;

CREATE TRIGGER maintenance_log_is_append_only
    BEFORE UPDATE OR DELETE ON maintenance_log
    FOR EACH ROW EXECUTE FUNCTION refuse_maintenance_log_change();

CREATE TRIGGER maintenance_log_is_not_truncated
    BEFORE TRUNCATE ON maintenance_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_maintenance_log_change();

-- Moves a stream's events from events into events_archive and marks the stream archived: its
-- reads and appends are refused from then on, and readers of the global log no longer see its
-- events (only this stream's: the live log keeps its order and its other rows). Refuses a
-- stream that does not exist (ES010) or is archived already (ES012).
CREATE FUNCTION archive_stream(p_stream_id text, p_reason text)
RETURNS maintenance_log LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_stream streams%ROWTYPE;
    v_log maintenance_log%ROWTYPE;
BEGIN
    SELECT * INTO v_stream FROM streams WHERE stream_id = p_stream_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'stream % does not exist', p_stream_id USING ERRCODE = 'ES010';
    END IF;
    IF v_stream.archived_at IS NOT NULL THEN
        RAISE EXCEPTION 'stream % is archived already', p_stream_id USING ERRCODE = 'ES012';
    END IF;
    PERFORM pg_catalog.set_config('es.maintenance', 'remove_events', true);
    WITH moved AS (
        DELETE FROM events WHERE stream_id = p_stream_id
        RETURNING position, transaction_id, event_id, stream_id, stream_version, event_type,
            schema_version, recorded_at, correlation_id, causation_id, metadata, payload
    ), kept AS (
        INSERT INTO events_archive (position, transaction_id, event_id, stream_id,
            stream_version, event_type, schema_version, recorded_at, correlation_id,
            causation_id, metadata, payload)
        SELECT * FROM moved
        RETURNING position, stream_version
    )
    INSERT INTO maintenance_log (operation, stream_id, events, first_position, last_position,
        first_version, last_version, reason)
    SELECT 'archive', p_stream_id, count(*), min(position), max(position),
        min(stream_version), max(stream_version), p_reason
    FROM kept
    RETURNING * INTO v_log;
    PERFORM pg_catalog.set_config('es.maintenance', '', true);
    UPDATE streams SET archived_at = clock_timestamp() WHERE stream_id = p_stream_id;
    RETURN v_log;
END
$$;

-- Removes a retired stream (deleted or archived) from the store for good: its events, live or
-- archived, its snapshot and its row (its id may be used again, from version 1), and records
-- what it removed. Refuses a stream that does not exist (ES010) or is live (ES011).
CREATE FUNCTION hard_delete_stream(p_stream_id text, p_reason text)
RETURNS maintenance_log LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_stream streams%ROWTYPE;
    v_log maintenance_log%ROWTYPE;
BEGIN
    SELECT * INTO v_stream FROM streams WHERE stream_id = p_stream_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'stream % does not exist', p_stream_id USING ERRCODE = 'ES010';
    END IF;
    IF v_stream.deleted_at IS NULL AND v_stream.archived_at IS NULL THEN
        RAISE EXCEPTION 'stream % is live: delete or archive it first', p_stream_id
            USING ERRCODE = 'ES011';
    END IF;
    PERFORM pg_catalog.set_config('es.maintenance', 'remove_events', true);
    WITH live AS (
        DELETE FROM events WHERE stream_id = p_stream_id RETURNING position, stream_version
    ), archived AS (
        DELETE FROM events_archive WHERE stream_id = p_stream_id
        RETURNING position, stream_version
    ), removed AS (
        SELECT * FROM live UNION ALL SELECT * FROM archived
    )
    INSERT INTO maintenance_log (operation, stream_id, events, first_position, last_position,
        first_version, last_version, reason)
    SELECT 'hard_delete', p_stream_id, count(*), min(position), max(position),
        min(stream_version), max(stream_version), p_reason
    FROM removed
    RETURNING * INTO v_log;
    PERFORM pg_catalog.set_config('es.maintenance', '', true);
    DELETE FROM snapshots WHERE stream_id = p_stream_id;
    DELETE FROM streams WHERE stream_id = p_stream_id;
    RETURN v_log;
END
$$;

-- Maintenance is for the roles the owner grants it to, and runs with the store's schema
-- first and pg_temp last on its path, so that no caller's object can stand in for the store's.
REVOKE EXECUTE ON FUNCTION archive_stream(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION hard_delete_stream(text, text) FROM PUBLIC;
DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'ALTER FUNCTION archive_stream(text, text) SET search_path = %I, pg_temp',
        current_schema());
    EXECUTE pg_catalog.format(
        'ALTER FUNCTION hard_delete_stream(text, text) SET search_path = %I, pg_temp',
        current_schema());
END
$$;
