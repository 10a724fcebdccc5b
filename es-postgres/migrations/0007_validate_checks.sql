-- no-transaction
-- Validates the checks migration 0006 added, each in a transaction of its own that takes only a
-- SHARE UPDATE EXCLUSIVE lock: appends and reads go on while the stored rows are scanned. Rows
-- stored before the checks that violate one leave it unvalidated (it still holds for new
-- rows), with a warning; readers hand such rows to their error policy.
DO $$
BEGIN
    ALTER TABLE events VALIDATE CONSTRAINT events_metadata_is_object;
EXCEPTION WHEN check_violation THEN
    RAISE WARNING 'stored events violate events_metadata_is_object; readers hand them to their error policy';
END
$$;

DO $$
BEGIN
    ALTER TABLE events VALIDATE CONSTRAINT events_stream_id_length;
EXCEPTION WHEN check_violation THEN
    RAISE WARNING 'stored events violate events_stream_id_length; readers hand them to their error policy';
END
$$;

DO $$
BEGIN
    ALTER TABLE events VALIDATE CONSTRAINT events_position_positive;
EXCEPTION WHEN check_violation THEN
    RAISE WARNING 'stored events violate events_position_positive; readers hand them to their error policy';
END
$$;

DO $$
BEGIN
    ALTER TABLE events VALIDATE CONSTRAINT events_recorded_at_finite;
EXCEPTION WHEN check_violation THEN
    RAISE WARNING 'stored events violate events_recorded_at_finite; readers hand them to their error policy';
END
$$;
