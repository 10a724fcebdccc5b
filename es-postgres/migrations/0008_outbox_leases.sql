-- The saga outbox without long transactions: a dispatcher claims a command with a lease
-- (claimed_by, claimed_until) in one short statement, runs it outside any transaction, and
-- removes it (or records its failure) in another. A lease that expires (its dispatcher died)
-- is claimed again. A command that keeps failing waits longer each time (next_attempt_at) and
-- after its dispatcher's attempt cap is dead-lettered (dead_at), listable and retryable, so
-- it never blocks the commands behind it.
ALTER TABLE saga_outbox
    ADD COLUMN claimed_by       text,
    ADD COLUMN claimed_until    timestamptz,
    ADD COLUMN next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN dead_at          timestamptz;

-- Per instance, commands run in the order they were issued: only an instance's oldest live
-- command is ready; when it is done (or dead-lettered) the next one becomes ready. The
-- dispatcher claims among ready commands only, so its scan never walks an instance's backlog.
ALTER TABLE saga_outbox ADD COLUMN ready boolean NOT NULL DEFAULT true;
-- Commands already waiting: only each instance's oldest is ready.
UPDATE saga_outbox o SET ready = (o.seq = (SELECT min(e.seq) FROM saga_outbox e
    WHERE e.saga = o.saga AND e.instance = o.instance));
CREATE INDEX saga_outbox_instance ON saga_outbox (saga, instance, seq) WHERE dead_at IS NULL;
CREATE INDEX saga_outbox_ready ON saga_outbox (saga, seq) WHERE ready AND dead_at IS NULL;

-- A deadline whose reaction failed is tried again later, and the failure is recorded; the
-- firing loop goes on with the others meanwhile.
ALTER TABLE saga_deadlines
    ADD COLUMN attempts         integer     NOT NULL DEFAULT 0,
    ADD COLUMN last_error       text,
    ADD COLUMN next_attempt_at  timestamptz;
