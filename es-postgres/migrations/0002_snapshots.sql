-- The newest snapshot of each stream. Snapshots only shorten replays: losing one costs a full
-- replay, never correctness, so they live apart from the immutable events.
CREATE TABLE snapshots (
    stream_id         text        NOT NULL,
    stream_version    bigint      NOT NULL CHECK (stream_version >= 1),
    snapshot_version  integer     NOT NULL,
    state             json        NOT NULL,
    taken_at          timestamptz NOT NULL,
    CONSTRAINT snapshots_pkey PRIMARY KEY (stream_id)
);
