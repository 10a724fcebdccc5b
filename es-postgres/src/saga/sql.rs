//! The saga runner's statements, built once per store schema.

use crate::SchemaName;

pub(crate) struct Statements {
    pub(crate) lock_state: String,
    pub(crate) read_state: String,
    pub(crate) save_state: String,
    pub(crate) enqueue: String,
    pub(crate) claim: String,
    pub(crate) share_state: String,
    pub(crate) advance: String,
    pub(crate) extend: String,
    pub(crate) done: String,
    pub(crate) failed: String,
    pub(crate) outbox_status: String,
    pub(crate) dead_letters: String,
    pub(crate) retry_dead: String,
    pub(crate) instance_of_command: String,
    pub(crate) discard_dead: String,
    pub(crate) reset_states: String,
    pub(crate) reset_outbox: String,
    pub(crate) reset_deadlines: String,
    pub(crate) drop_deadlines: String,
    pub(crate) upsert_deadlines: String,
    pub(crate) due_deadlines: String,
    pub(crate) lock_deadline: String,
    pub(crate) mark_fired: String,
    pub(crate) deadline_failed: String,
    pub(crate) pending_deadlines: String,
    pub(crate) deadline_status: String,
}

impl Statements {
    pub(crate) fn new(schema: &SchemaName) -> Self {
        let s = schema.quoted();
        let due = crate::convert::finite("due");
        Self {
            lock_state: format!(
                "SELECT state::text FROM {s}.saga_states WHERE saga = $1 AND instance = $2 FOR UPDATE"
            ),
            read_state: format!(
                "SELECT state::text FROM {s}.saga_states WHERE saga = $1 AND instance = $2"
            ),
            save_state: format!(
                "INSERT INTO {s}.saga_states (saga, instance, state) VALUES ($1, $2, $3::json) \
                 ON CONFLICT ON CONSTRAINT saga_states_pkey DO UPDATE SET state = EXCLUDED.state, updated_at = now()"
            ),
            // Ready when the instance has no live command before it. Runs in the feed's
            // transaction, which holds the instance's state row: a dispatcher finishing the
            // instance's previous command waits for it, then makes this one ready.
            enqueue: format!(
                "INSERT INTO {s}.saga_outbox (saga, command_id, instance, command, correlation_id, \
                 causation_id, ready) \
                 SELECT $1, $2, $3, $4::json, $5, $6, NOT EXISTS (SELECT 1 FROM {s}.saga_outbox \
                     WHERE saga = $1 AND instance = $3 AND dead_at IS NULL) \
                 ON CONFLICT ON CONSTRAINT saga_outbox_command_key DO NOTHING"
            ),
            // One short statement: claims up to $4 ready commands that are due, never one this
            // dispatcher ($2) runs ($5), and not leased by a live dispatcher but this one: a
            // claim whose commit's reply was lost (the connection cut) would otherwise hold up
            // its instance for the whole lease. SKIP LOCKED: dispatchers claiming at once take
            // different rows.
            claim: format!(
                "UPDATE {s}.saga_outbox o \
                 SET claimed_by = $2, claimed_until = clock_timestamp() + $3 * interval '1 millisecond', \
                     attempts = o.attempts + 1 \
                 WHERE o.seq IN ( \
                     SELECT c.seq FROM {s}.saga_outbox c \
                     WHERE c.saga = $1 AND c.ready AND c.dead_at IS NULL \
                       AND c.next_attempt_at <= clock_timestamp() \
                       AND c.seq <> ALL($5::bigint[]) \
                       AND (c.claimed_until IS NULL OR c.claimed_until < clock_timestamp() \
                            OR c.claimed_by = $2) \
                     ORDER BY c.seq LIMIT $4 FOR UPDATE SKIP LOCKED) \
                 RETURNING o.seq, o.command_id, o.command::text, o.correlation_id, \
                     o.causation_id, o.attempts, o.instance"
            ),
            // Finishing a command waits for a feed transaction enqueueing the instance's next
            // one (it holds the state row), so that one is seen and made ready.
            share_state: format!(
                "SELECT 1 FROM {s}.saga_states WHERE saga = $1 AND instance = $2 FOR SHARE"
            ),
            advance: format!(
                "UPDATE {s}.saga_outbox SET ready = true \
                 WHERE seq = (SELECT min(seq) FROM {s}.saga_outbox \
                     WHERE saga = $1 AND instance = $2 AND dead_at IS NULL) AND NOT ready"
            ),
            extend: format!(
                "UPDATE {s}.saga_outbox \
                 SET claimed_until = clock_timestamp() + $3 * interval '1 millisecond' \
                 WHERE seq = $1 AND claimed_by = $2"
            ),
            done: format!("DELETE FROM {s}.saga_outbox WHERE seq = $1 AND claimed_by = $2"),
            // The claim counted the attempt. $4: the wait before the next attempt (ms); $5:
            // the attempt cap, 0 to dead-letter at once.
            failed: format!(
                "UPDATE {s}.saga_outbox SET last_error = $3, \
                     claimed_by = NULL, claimed_until = NULL, \
                     next_attempt_at = clock_timestamp() + $4 * interval '1 millisecond', \
                     dead_at = CASE WHEN attempts >= $5 THEN clock_timestamp() END \
                 WHERE seq = $1 AND claimed_by = $2 RETURNING dead_at IS NOT NULL"
            ),
            outbox_status: format!(
                "SELECT count(*) FILTER (WHERE dead_at IS NULL), \
                   count(*) FILTER (WHERE dead_at IS NOT NULL), \
                   extract(epoch FROM clock_timestamp() - min(created_at) FILTER (WHERE dead_at IS NULL))::float8 \
                 FROM {s}.saga_outbox WHERE saga = $1"
            ),
            dead_letters: format!(
                "SELECT command_id, instance, command::text, attempts, last_error, created_at, \
                   dead_at FROM {s}.saga_outbox WHERE saga = $1 AND dead_at IS NOT NULL \
                 ORDER BY seq"
            ),
            // One command at a time, under its instance's state row locked for update (what
            // finishing a command takes in share mode): it is ready only when no other command
            // of its instance is live, or it would run beside them.
            retry_dead: format!(
                "UPDATE {s}.saga_outbox o SET dead_at = NULL, attempts = 0, next_attempt_at = now(), \
                   claimed_by = NULL, claimed_until = NULL, \
                   ready = NOT EXISTS (SELECT 1 FROM {s}.saga_outbox e \
                       WHERE e.saga = o.saga AND e.instance = o.instance AND e.dead_at IS NULL \
                         AND e.seq <> o.seq) \
                 WHERE saga = $1 AND command_id = $2 AND dead_at IS NOT NULL"
            ),
            instance_of_command: format!(
                "SELECT instance FROM {s}.saga_outbox WHERE saga = $1 AND command_id = $2"
            ),
            discard_dead: format!(
                "DELETE FROM {s}.saga_outbox \
                 WHERE saga = $1 AND command_id = ANY($2) AND dead_at IS NOT NULL"
            ),
            reset_states: format!("DELETE FROM {s}.saga_states WHERE saga = $1"),
            reset_outbox: format!("DELETE FROM {s}.saga_outbox WHERE saga = $1"),
            reset_deadlines: format!("DELETE FROM {s}.saga_deadlines WHERE saga = $1"),
            drop_deadlines: format!(
                "DELETE FROM {s}.saga_deadlines \
                 WHERE saga = $1 AND instance = $2 AND NOT (name = ANY($3))"
            ),
            // An unchanged deadline keeps its fire id and fired mark; a new due time re-arms it.
            upsert_deadlines: format!(
                "INSERT INTO {s}.saga_deadlines AS d (saga, instance, name, due, fire_id, \
                     correlation_id, causation_id) \
                 SELECT $1, $2, w.name, w.due, w.fire_id, w.correlation_id, w.causation_id \
                 FROM UNNEST($3::text[], $4::timestamptz[], $5::uuid[], $6::uuid[], $7::uuid[]) \
                     AS w(name, due, fire_id, correlation_id, causation_id) \
                 ON CONFLICT ON CONSTRAINT saga_deadlines_pkey DO UPDATE SET due = EXCLUDED.due, \
                     fire_id = EXCLUDED.fire_id, correlation_id = EXCLUDED.correlation_id, \
                     causation_id = EXCLUDED.causation_id, fired_at = NULL, attempts = 0, \
                     last_error = NULL, next_attempt_at = NULL \
                 WHERE d.due <> EXCLUDED.due"
            ),
            due_deadlines: format!(
                "SELECT instance, name FROM {s}.saga_deadlines \
                 WHERE saga = $1 AND fired_at IS NULL AND due <= $2 \
                   AND (next_attempt_at IS NULL OR next_attempt_at <= $2) \
                   AND (instance, name) > ($4, $5) \
                 ORDER BY instance, name LIMIT $3"
            ),
            lock_deadline: format!(
                "SELECT {due}, fire_id, correlation_id, causation_id FROM {s}.saga_deadlines \
                 WHERE saga = $1 AND instance = $2 AND name = $3 AND fired_at IS NULL \
                   AND due <= $4 FOR UPDATE"
            ),
            mark_fired: format!(
                "UPDATE {s}.saga_deadlines SET fired_at = now() \
                 WHERE saga = $1 AND instance = $2 AND name = $3"
            ),
            // The wait doubles with each failure (1 s, 2 s, 4 s...), capped at an hour.
            deadline_failed: format!(
                "UPDATE {s}.saga_deadlines SET attempts = attempts + 1, last_error = $4, \
                   next_attempt_at = clock_timestamp() \
                     + least(interval '1 second' * power(2, least(attempts, 20)), interval '1 hour') \
                 WHERE saga = $1 AND instance = $2 AND name = $3 AND fired_at IS NULL \
                 RETURNING attempts"
            ),
            deadline_status: format!(
                "SELECT count(*), count(*) FILTER (WHERE due <= clock_timestamp()), min({due}), \
                   count(*) FILTER (WHERE attempts > 0) \
                 FROM {s}.saga_deadlines WHERE saga = $1 AND fired_at IS NULL"
            ),
            pending_deadlines: format!(
                "SELECT name, {due} FROM {s}.saga_deadlines \
                 WHERE saga = $1 AND instance = $2 AND fired_at IS NULL ORDER BY due, name"
            ),
        }
    }
}
