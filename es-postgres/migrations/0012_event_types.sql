-- The event types stored, per stream category and schema version, with how many events of
-- each: what start-up checks compare a service's registry against (can it read every type
-- stored in the categories it reads?). Kept up to date by whoever asks
-- (PgEventStore::stored_types counts the events appended since the last ask), not by appends,
-- which pay nothing for it.
CREATE TABLE event_types (
    category       text    NOT NULL,
    event_type     text    NOT NULL,
    schema_version integer NOT NULL,
    events         bigint  NOT NULL,
    CONSTRAINT event_types_pkey PRIMARY KEY (category, event_type, schema_version)
);

-- Where the counting got to in the global log; one row.
CREATE TABLE event_types_counted (
    id             boolean NOT NULL DEFAULT true CHECK (id),
    transaction_id bigint  NOT NULL DEFAULT 0,
    position       bigint  NOT NULL DEFAULT 0,
    CONSTRAINT event_types_counted_pkey PRIMARY KEY (id)
);
INSERT INTO event_types_counted DEFAULT VALUES;
