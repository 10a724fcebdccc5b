-- Crypto-shredding: one key per data subject. Forgetting a subject deletes its row: its key
-- and the subject's name are gone, and every field sealed with the key reads as redacted.
CREATE TABLE subject_keys (
    subject     text        NOT NULL,
    key_id      uuid        NOT NULL,
    key         bytea       NOT NULL CHECK (octet_length(key) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT subject_keys_pkey PRIMARY KEY (subject),
    CONSTRAINT subject_keys_key_id_key UNIQUE (key_id)
);

-- Which streams hold data sealed with which key: a snapshot of a stream is sealed with the keys
-- of all of them, and forgetting drops the snapshots of the subject's streams. Rows stay after
-- forgetting (they name only the key id), so a later snapshot of such a stream is refused.
CREATE TABLE subject_streams (
    key_id     uuid NOT NULL,
    stream_id  text NOT NULL,
    CONSTRAINT subject_streams_pkey PRIMARY KEY (key_id, stream_id)
);

CREATE INDEX subject_streams_stream_id ON subject_streams (stream_id);

-- Subjects forgotten, by a name-based UUID of the subject (its name itself is gone): what they
-- write afterwards is sealed with a key nobody keeps, so a command that loaded their data
-- before the forgetting cannot bring it back. `readmit` removes the row.
CREATE TABLE forgotten_subjects (
    subject_hash  uuid        NOT NULL,
    forgotten_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT forgotten_subjects_pkey PRIMARY KEY (subject_hash)
);
