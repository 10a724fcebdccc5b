-- Where each projection has read the global log to. Written in the same transaction as the
-- projection's read-model writes, so the two never disagree.
CREATE TABLE projection_checkpoints (
    projection      text        NOT NULL,
    transaction_id  bigint      NOT NULL,
    position        bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT projection_checkpoints_pkey PRIMARY KEY (projection)
);

-- Events a projection could not apply, set aside by its error policy to be replayed later.
CREATE TABLE parked_events (
    projection      text        NOT NULL,
    event_id        uuid        NOT NULL,
    transaction_id  bigint      NOT NULL,
    position        bigint      NOT NULL,
    stream_id       text        NOT NULL,
    event_type      text        NOT NULL,
    error           text        NOT NULL,
    attempts        integer     NOT NULL,
    parked_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT parked_events_pkey PRIMARY KEY (projection, event_id)
);
