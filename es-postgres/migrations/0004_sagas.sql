-- Saga (process manager) instances: one state per saga and instance, written in the same
-- transaction as the saga's checkpoint and the commands it issued.
CREATE TABLE saga_states (
    saga        text        NOT NULL,
    instance    text        NOT NULL,
    state       json        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT saga_states_pkey PRIMARY KEY (saga, instance)
);

-- Commands a saga issued and has not yet seen executed: its outbox. A row is removed once its
-- command ran; a crash before that delivers it again, which idempotent commands make harmless.
CREATE TABLE saga_outbox (
    seq             bigint      GENERATED ALWAYS AS IDENTITY,
    saga            text        NOT NULL,
    command_id      uuid        NOT NULL,
    instance        text        NOT NULL,
    command         json        NOT NULL,
    correlation_id  uuid        NOT NULL,
    causation_id    uuid        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    CONSTRAINT saga_outbox_pkey PRIMARY KEY (seq),
    CONSTRAINT saga_outbox_command_key UNIQUE (saga, command_id)
);

-- Tracing a workflow: every event of one correlation id.
CREATE INDEX events_correlation_id ON events (correlation_id);
