-- Followers are woken by a notification the store sends at most once per interval while
-- appends happen (see es-postgres/src/wakeup.rs), no longer by one per appending statement: a
-- notifying commit takes a cluster-wide lock through its WAL flush, which serialised
-- concurrent writers. Followers of older releases fall back to polling.
DROP TRIGGER IF EXISTS events_appended ON events;
DROP FUNCTION IF EXISTS notify_events_appended();
