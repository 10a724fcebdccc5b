-- Deadlines saga instances wait on, kept equal to what the saga lists for each instance's state
-- in the transaction that saves the state. A deadline that fired stays (fired_at set) while the
-- saga still lists it, so it fires once.
CREATE TABLE saga_deadlines (
    saga            text        NOT NULL,
    instance        text        NOT NULL,
    name            text        NOT NULL,
    due             timestamptz NOT NULL,
    fire_id         uuid        NOT NULL,
    correlation_id  uuid        NOT NULL,
    causation_id    uuid        NOT NULL,
    fired_at        timestamptz,
    CONSTRAINT saga_deadlines_pkey PRIMARY KEY (saga, instance, name)
);

-- The firing loop's question: what is due and has not fired?
CREATE INDEX saga_deadlines_due ON saga_deadlines (saga, due) WHERE fired_at IS NULL;
