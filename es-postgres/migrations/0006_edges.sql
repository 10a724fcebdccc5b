-- Guarantees at the edges of the store (see ARCHITECTURE.md, "Invariants").

-- Within a stream, global order must equal version order. Readers order the log by
-- (transaction_id, position), so a transaction that took its id early (it wrote something
-- else first) and appends after a newer transaction committed to the same stream would put
-- its events before that one's. The streams row keeps the transaction id the stream's newest
-- events are ordered under; an append orders its events under the greater of its own id and
-- that one (computed on the row as locked), which keeps version order and stays gap-safe:
-- readers pass that id only when every older transaction, the appending one included, ended.
ALTER TABLE streams ADD COLUMN transaction_id bigint NOT NULL DEFAULT 0;
UPDATE streams s SET transaction_id = e.transaction_id
FROM (SELECT stream_id, max(transaction_id) AS transaction_id FROM events GROUP BY stream_id) e
WHERE e.stream_id = s.stream_id;

-- The database refuses rows its readers cannot read. Added NOT VALID so that the migration
-- never fails on rows written before it, and takes its exclusive lock only for a moment; the
-- next migration validates them where the stored rows allow it, without blocking writers.
ALTER TABLE events
    ADD CONSTRAINT events_metadata_is_object CHECK (json_typeof(metadata) = 'object') NOT VALID,
    ADD CONSTRAINT events_stream_id_length CHECK (octet_length(stream_id) BETWEEN 1 AND 512) NOT VALID,
    ADD CONSTRAINT events_position_positive CHECK (transaction_id > 0 AND position > 0) NOT VALID,
    ADD CONSTRAINT events_recorded_at_finite
        CHECK (recorded_at BETWEEN '4000-01-01 BC' AND '100000-01-01') NOT VALID;

-- An event's time is read from the clock when the append writes it, not when its transaction
-- began: a long transaction no longer stamps its events with a time long past.
ALTER TABLE events ALTER COLUMN recorded_at SET DEFAULT clock_timestamp();

-- How many parts each projection is split into, so that runners configured with another
-- number are refused instead of applying events twice.
CREATE TABLE projection_layouts (
    projection  text     NOT NULL,
    parts       integer  NOT NULL CHECK (parts >= 1),
    CONSTRAINT projection_layouts_pkey PRIMARY KEY (projection)
);

-- A rebuild in progress: set when a rebuild resets the read model, cleared when it has caught
-- up, so a rebuild interrupted by a crash resumes instead of starting over.
ALTER TABLE projection_checkpoints ADD COLUMN rebuild_started_at timestamptz;
