-- no-transaction
-- Validates the check 0010 added, taking only a SHARE UPDATE EXCLUSIVE lock: appends and reads
-- go on while the stored rows are scanned. Stored rows that violate it (written before the
-- checks existed) leave it unvalidated, with a warning; it still holds for new rows, and
-- readers hand such rows to their error policy.
DO $$
BEGIN
    ALTER TABLE events VALIDATE CONSTRAINT events_row_is_valid;
EXCEPTION WHEN check_violation THEN
    RAISE WARNING 'stored events violate events_row_is_valid; readers hand them to their error policy';
END
$$;
