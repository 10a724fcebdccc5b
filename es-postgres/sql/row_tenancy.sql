-- Row tenancy (docs/tenancy.md): tenants share one store's tables, every row carries its
-- tenant, and row-level security shows a session its own tenant's rows only.
--
-- Applied by RowTenancy::install over a migrated store, with search_path set to the store's
-- schema, inside one transaction holding the store's migration lock. The store's statements
-- name no tenant: each row's tenant_id defaults to the session's tenant (the setting
-- es.tenant, set when a tenant's connection starts), the policies filter every read and
-- check every write, and every unique key leads with tenant_id under its old name, so the
-- statements' `ON CONFLICT ON CONSTRAINT` targets hold unchanged.

CREATE TABLE row_tenancy (
    id          boolean     NOT NULL DEFAULT true CHECK (id),
    version     integer     NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT row_tenancy_pkey PRIMARY KEY (id)
);
INSERT INTO row_tenancy (version) VALUES (1);

-- The tenants of the store: what RowTenancy::tenants lists and RowTenancy::open accepts.
CREATE TABLE tenants (
    tenant_id   text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tenants_pkey PRIMARY KEY (tenant_id)
);

-- The session's tenant, refusing a session that names none: a write without a tenant is an
-- error, never a row of nobody's (or everybody's).
CREATE FUNCTION current_tenant() RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_tenant text := pg_catalog.current_setting('es.tenant', true);
BEGIN
    IF v_tenant IS NULL OR v_tenant OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'row tenancy: this session names no tenant (es.tenant is not set)'
            USING ERRCODE = 'ES020';
    END IF;
    RETURN v_tenant;
END
$$;

DO $$
DECLARE
    v_table text;
    v_schema text := current_schema();
    v_tables text[] := ARRAY['streams', 'events', 'snapshots', 'projection_checkpoints',
        'parked_events', 'saga_states', 'saga_outbox', 'saga_deadlines', 'projection_layouts',
        'event_types', 'event_types_counted', 'subject_keys', 'subject_streams',
        'forgotten_subjects', 'events_archive', 'maintenance_log'];
    v_occupied boolean;
BEGIN
    -- Nothing may be written while the store turns: rows written before would belong to no
    -- tenant, so the store must hold none (but the counting row of event_types_counted, which
    -- is the store's; each tenant gets its own when it first asks).
    FOREACH v_table IN ARRAY v_tables LOOP
        EXECUTE pg_catalog.format('LOCK TABLE %I IN ACCESS EXCLUSIVE MODE', v_table);
        IF v_table OPERATOR(pg_catalog.<>) 'event_types_counted' THEN
            EXECUTE pg_catalog.format('SELECT EXISTS (SELECT FROM %I)', v_table) INTO v_occupied;
            IF v_occupied THEN
                RAISE EXCEPTION 'it holds rows in %, which would belong to no tenant: install row tenancy when the store is created', v_table
                    USING ERRCODE = 'ES021';
            END IF;
        END IF;
    END LOOP;
    DELETE FROM event_types_counted;

    FOREACH v_table IN ARRAY v_tables LOOP
        -- A constant default first (no rewrite), then the session's tenant for new rows.
        EXECUTE pg_catalog.format(
            'ALTER TABLE %I ADD COLUMN tenant_id text NOT NULL DEFAULT %L', v_table, '');
        EXECUTE pg_catalog.format(
            'ALTER TABLE %I ALTER COLUMN tenant_id SET DEFAULT %I.current_tenant()',
            v_table, v_schema);
        EXECUTE pg_catalog.format(
            'ALTER TABLE %I ADD CONSTRAINT %I CHECK (tenant_id <> %L)',
            v_table, v_table || '_tenant_named', '');
        -- FORCE: the owner (when not a superuser) is filtered too.
        EXECUTE pg_catalog.format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', v_table);
        EXECUTE pg_catalog.format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', v_table);
        EXECUTE pg_catalog.format(
            'CREATE POLICY tenant_rows ON %I '
            'USING (tenant_id = pg_catalog.current_setting(%L, true)) '
            'WITH CHECK (tenant_id = pg_catalog.current_setting(%L, true))',
            v_table, 'es.tenant', 'es.tenant');
    END LOOP;
END
$$;

-- Every unique key leads with the tenant: two tenants may hold the same stream id, event id,
-- projection or saga instance, and no write of one tenant can collide with (or detect) a row
-- of another, not even keys drawn from an identity, which a session may override. Names stay
-- as they were. The events' primary key, led by the tenant, is also each tenant's global log
-- in order.
ALTER TABLE events DROP CONSTRAINT events_pkey,
    ADD CONSTRAINT events_pkey PRIMARY KEY (tenant_id, transaction_id, position);
ALTER TABLE saga_outbox DROP CONSTRAINT saga_outbox_pkey,
    ADD CONSTRAINT saga_outbox_pkey PRIMARY KEY (tenant_id, seq);
ALTER TABLE maintenance_log DROP CONSTRAINT maintenance_log_pkey,
    ADD CONSTRAINT maintenance_log_pkey PRIMARY KEY (tenant_id, id);
ALTER TABLE subject_keys DROP CONSTRAINT subject_keys_key_id_key,
    ADD CONSTRAINT subject_keys_key_id_key UNIQUE (tenant_id, key_id);
ALTER TABLE streams DROP CONSTRAINT streams_pkey,
    ADD CONSTRAINT streams_pkey PRIMARY KEY (tenant_id, stream_id);
ALTER TABLE events DROP CONSTRAINT events_event_id_key,
    ADD CONSTRAINT events_event_id_key UNIQUE (tenant_id, event_id);
ALTER TABLE events DROP CONSTRAINT events_stream_version_key,
    ADD CONSTRAINT events_stream_version_key UNIQUE (tenant_id, stream_id, stream_version);
ALTER TABLE snapshots DROP CONSTRAINT snapshots_pkey,
    ADD CONSTRAINT snapshots_pkey PRIMARY KEY (tenant_id, stream_id);
ALTER TABLE projection_checkpoints DROP CONSTRAINT projection_checkpoints_pkey,
    ADD CONSTRAINT projection_checkpoints_pkey PRIMARY KEY (tenant_id, projection);
ALTER TABLE parked_events DROP CONSTRAINT parked_events_pkey,
    ADD CONSTRAINT parked_events_pkey PRIMARY KEY (tenant_id, projection, event_id);
ALTER TABLE saga_states DROP CONSTRAINT saga_states_pkey,
    ADD CONSTRAINT saga_states_pkey PRIMARY KEY (tenant_id, saga, instance);
ALTER TABLE saga_outbox DROP CONSTRAINT saga_outbox_command_key,
    ADD CONSTRAINT saga_outbox_command_key UNIQUE (tenant_id, saga, command_id);
ALTER TABLE saga_deadlines DROP CONSTRAINT saga_deadlines_pkey,
    ADD CONSTRAINT saga_deadlines_pkey PRIMARY KEY (tenant_id, saga, instance, name);
ALTER TABLE projection_layouts DROP CONSTRAINT projection_layouts_pkey,
    ADD CONSTRAINT projection_layouts_pkey PRIMARY KEY (tenant_id, projection);
ALTER TABLE event_types DROP CONSTRAINT event_types_pkey,
    ADD CONSTRAINT event_types_pkey PRIMARY KEY (tenant_id, category, event_type, schema_version);
ALTER TABLE event_types_counted DROP CONSTRAINT event_types_counted_pkey,
    ADD CONSTRAINT event_types_counted_pkey PRIMARY KEY (tenant_id, id);
ALTER TABLE subject_keys DROP CONSTRAINT subject_keys_pkey,
    ADD CONSTRAINT subject_keys_pkey PRIMARY KEY (tenant_id, subject);
ALTER TABLE subject_streams DROP CONSTRAINT subject_streams_pkey,
    ADD CONSTRAINT subject_streams_pkey PRIMARY KEY (tenant_id, key_id, stream_id);
ALTER TABLE forgotten_subjects DROP CONSTRAINT forgotten_subjects_pkey,
    ADD CONSTRAINT forgotten_subjects_pkey PRIMARY KEY (tenant_id, subject_hash);
ALTER TABLE events_archive DROP CONSTRAINT events_archive_pkey,
    ADD CONSTRAINT events_archive_pkey PRIMARY KEY (tenant_id, stream_id, stream_version);

DROP INDEX events_correlation_id;
CREATE INDEX events_correlation_id ON events (tenant_id, correlation_id);
DROP INDEX saga_deadlines_due;
CREATE INDEX saga_deadlines_due ON saga_deadlines (tenant_id, saga, due) WHERE fired_at IS NULL;
DROP INDEX saga_outbox_instance;
CREATE INDEX saga_outbox_instance ON saga_outbox (tenant_id, saga, instance, seq)
    WHERE dead_at IS NULL;
DROP INDEX saga_outbox_ready;
CREATE INDEX saga_outbox_ready ON saga_outbox (tenant_id, saga, seq) WHERE ready AND dead_at IS NULL;
DROP INDEX streams_by_category;
CREATE INDEX streams_by_category ON streams
    (tenant_id, (split_part(stream_id, '-', 1)) COLLATE "C", stream_id COLLATE "C");
DROP INDEX subject_streams_stream_id;
CREATE INDEX subject_streams_stream_id ON subject_streams (tenant_id, stream_id);
DROP INDEX maintenance_log_stream;
CREATE INDEX maintenance_log_stream ON maintenance_log (tenant_id, stream_id);

-- The maintenance functions run as the owner, whom a superuser's ownership lets past every
-- policy: they name the session's tenant themselves, so archiving or removing a stream of one
-- tenant never touches another tenant's stream of the same id.
CREATE OR REPLACE FUNCTION archive_stream(p_stream_id text, p_reason text)
RETURNS maintenance_log LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_tenant text := current_tenant();
    v_stream streams%ROWTYPE;
    v_log maintenance_log%ROWTYPE;
BEGIN
    SELECT * INTO v_stream FROM streams
    WHERE tenant_id = v_tenant AND stream_id = p_stream_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'stream % does not exist', p_stream_id USING ERRCODE = 'ES010';
    END IF;
    IF v_stream.archived_at IS NOT NULL THEN
        RAISE EXCEPTION 'stream % is archived already', p_stream_id USING ERRCODE = 'ES012';
    END IF;
    PERFORM pg_catalog.set_config('es.maintenance', 'remove_events', true);
    WITH moved AS (
        DELETE FROM events WHERE tenant_id = v_tenant AND stream_id = p_stream_id
        RETURNING position, transaction_id, event_id, stream_id, stream_version, event_type,
            schema_version, recorded_at, correlation_id, causation_id, metadata, payload
    ), kept AS (
        INSERT INTO events_archive (position, transaction_id, event_id, stream_id,
            stream_version, event_type, schema_version, recorded_at, correlation_id,
            causation_id, metadata, payload, tenant_id)
        SELECT *, v_tenant FROM moved
        RETURNING position, stream_version
    )
    INSERT INTO maintenance_log (operation, stream_id, events, first_position, last_position,
        first_version, last_version, reason, tenant_id)
    SELECT 'archive', p_stream_id, count(*), min(position), max(position),
        min(stream_version), max(stream_version), p_reason, v_tenant
    FROM kept
    RETURNING * INTO v_log;
    PERFORM pg_catalog.set_config('es.maintenance', '', true);
    UPDATE streams SET archived_at = clock_timestamp()
    WHERE tenant_id = v_tenant AND stream_id = p_stream_id;
    RETURN v_log;
END
$$;

CREATE OR REPLACE FUNCTION hard_delete_stream(p_stream_id text, p_reason text)
RETURNS maintenance_log LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_tenant text := current_tenant();
    v_stream streams%ROWTYPE;
    v_log maintenance_log%ROWTYPE;
BEGIN
    SELECT * INTO v_stream FROM streams
    WHERE tenant_id = v_tenant AND stream_id = p_stream_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'stream % does not exist', p_stream_id USING ERRCODE = 'ES010';
    END IF;
    IF v_stream.deleted_at IS NULL AND v_stream.archived_at IS NULL THEN
        RAISE EXCEPTION 'stream % is live: delete or archive it first', p_stream_id
            USING ERRCODE = 'ES011';
    END IF;
    PERFORM pg_catalog.set_config('es.maintenance', 'remove_events', true);
    WITH live AS (
        DELETE FROM events WHERE tenant_id = v_tenant AND stream_id = p_stream_id
        RETURNING position, stream_version
    ), archived AS (
        DELETE FROM events_archive WHERE tenant_id = v_tenant AND stream_id = p_stream_id
        RETURNING position, stream_version
    ), removed AS (
        SELECT * FROM live UNION ALL SELECT * FROM archived
    )
    INSERT INTO maintenance_log (operation, stream_id, events, first_position, last_position,
        first_version, last_version, reason, tenant_id)
    SELECT 'hard_delete', p_stream_id, count(*), min(position), max(position),
        min(stream_version), max(stream_version), p_reason, v_tenant
    FROM removed
    RETURNING * INTO v_log;
    PERFORM pg_catalog.set_config('es.maintenance', '', true);
    DELETE FROM snapshots WHERE tenant_id = v_tenant AND stream_id = p_stream_id;
    DELETE FROM streams WHERE tenant_id = v_tenant AND stream_id = p_stream_id;
    RETURN v_log;
END
$$;

-- CREATE OR REPLACE dropped the maintenance functions' pinned search path: pin it again.
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

-- A tenant's session reads its own entry in the tenant list; the owner reads them all.
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON tenants
    USING (tenant_id = pg_catalog.current_setting('es.tenant', true));
