//! Bulk import: whole new streams written with `COPY`, for loading history from another system
//! or restoring an export, at several times the rate of appends.

use std::collections::HashSet;
use std::fmt::Write as _;

use es_core::{ConflictError, ExpectedVersion, NewEvent, StoreError, StreamId, validate_append};
use sqlx::{AssertSqlSafe, Connection};
use uuid::Uuid;

use crate::PgEventStore;
use crate::convert::to_i64;
use crate::error::store_error;

/// What an import wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Streams created.
    pub streams: u64,
    /// Events written.
    pub events: u64,
}

/// How many bytes of `COPY` data to gather before sending them.
const SEND_CHUNK: usize = 1 << 20;

impl PgEventStore {
    /// Writes `streams`, each a stream that must not exist yet with all its events from version
    /// 1, in one transaction: every event is stored, or none is.
    ///
    /// Events go through `COPY`, so an import skips the per-append statement work; each call
    /// still gets one transaction id, so its events keep their order in the global log, and
    /// followers are woken once. Import in chunks (tens of thousands of events per call) to
    /// bound memory and the size of a transaction to redo after a failure: a chunk either
    /// committed whole or not at all, and re-running a committed chunk fails with a conflict on
    /// its first stream.
    ///
    /// Refused, with nothing written: an invalid event (as for appends), the same event id or
    /// stream twice in the import ([`StoreError::InvalidEvent`]), a stream that already exists
    /// ([`StoreError::Conflict`] naming it), an event id already stored
    /// ([`StoreError::EventIdReused`] naming it).
    pub async fn import(
        &self,
        streams: &[(StreamId, Vec<NewEvent>)],
    ) -> Result<ImportReport, StoreError> {
        let mut report = ImportReport::default();
        let mut ids = HashSet::new();
        let mut names = HashSet::with_capacity(streams.len());
        for (stream, events) in streams {
            validate_append(stream, events)?;
            let invalid = |event: &NewEvent, reason: &str| StoreError::InvalidEvent {
                event_id: event.event_id,
                stream: stream.clone(),
                reason: reason.to_owned(),
            };
            if let Some(first) = events.first()
                && !names.insert(stream.as_str())
            {
                return Err(invalid(first, "the stream appears twice in one import"));
            }
            for event in events {
                if !ids.insert(event.event_id) {
                    return Err(invalid(
                        event,
                        "the same event id appears twice in one import",
                    ));
                }
            }
            report.streams += u64::from(!events.is_empty());
            report.events += events.len() as u64;
        }
        if report.events == 0 {
            return Ok(report);
        }
        // Personal fields sealed as appends seal them, before a connection is held (the keys
        // are taken from the pool).
        let mut sealed_streams: Vec<Option<Vec<NewEvent>>> = Vec::with_capacity(streams.len());
        for (stream, events) in streams {
            sealed_streams.push(self.sealed(None, stream, events).await?);
        }

        let schema = self.schema().quoted();
        let mut conn = self.pool().acquire().await.map_err(store_error)?;
        self.check_tenancy(&mut conn)
            .await
            .map_err(crate::types::refused)?;
        let mut tx = conn.begin().await.map_err(store_error)?;

        let (names, versions): (Vec<&str>, Vec<i64>) = streams
            .iter()
            .filter(|(_, events)| !events.is_empty())
            .map(|(stream, events)| (stream.as_str(), to_i64(events.len() as u64)))
            .unzip();
        let created: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "INSERT INTO {schema}.streams (stream_id, version, transaction_id) \
             SELECT s.stream_id, s.version, pg_current_xact_id()::text::bigint \
             FROM UNNEST($1::text[], $2::bigint[]) AS s(stream_id, version) \
             ON CONFLICT ON CONSTRAINT streams_pkey DO NOTHING RETURNING stream_id"
        )))
        .bind(&names)
        .bind(&versions)
        .fetch_all(&mut *tx)
        .await
        .map_err(store_error)?;
        if created.len() < names.len() {
            let created: HashSet<&str> = created.iter().map(String::as_str).collect();
            let existing = names
                .iter()
                .find(|name| !created.contains(*name))
                .copied()
                .unwrap_or_default();
            let actual: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT version FROM {schema}.streams WHERE stream_id = $1"
            )))
            .bind(existing)
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
            let stream = streams
                .iter()
                .find(|(s, _)| s.as_str() == existing)
                .map(|(s, _)| s.clone())
                .ok_or_else(|| internal("an imported stream went missing"))?;
            return Err(ConflictError {
                stream,
                expected: ExpectedVersion::NoStream,
                actual: actual.map(|v| v.max(0) as u64),
            }
            .into());
        }

        const COLUMNS: &str = "event_id, stream_id, stream_version, event_type, \
             schema_version, correlation_id, causation_id, metadata, payload";
        // PostgreSQL refuses COPY into a table row-level security holds this session to (a
        // row tenant's): such an import is copied into a table of the transaction's own, then
        // inserted in the order sent.
        let held: bool = sqlx::query_scalar("SELECT row_security_active($1::text::regclass)")
            .bind(format!("{schema}.events"))
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?;
        let target = if held {
            sqlx::query("DROP TABLE IF EXISTS pg_temp.es_import")
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            sqlx::query(
                "CREATE TEMP TABLE es_import (ord bigint GENERATED ALWAYS AS IDENTITY, \
                     event_id uuid, stream_id text, stream_version bigint, event_type text, \
                     schema_version integer, correlation_id uuid, causation_id uuid, \
                     metadata json, payload json) ON COMMIT DROP",
            )
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
            "pg_temp.es_import".to_owned()
        } else {
            format!("{schema}.events")
        };
        let mut copy = tx
            .copy_in_raw(&format!("COPY {target} ({COLUMNS}) FROM STDIN"))
            .await
            .map_err(store_error)?;
        let mut buffer = String::with_capacity(SEND_CHUNK + 4096);
        let mut sent = Ok(());
        'rows: for ((stream, events), sealed) in streams.iter().zip(&sealed_streams) {
            let events = sealed.as_deref().unwrap_or(events);
            for (index, event) in events.iter().enumerate() {
                copy_row(&mut buffer, stream, index as u64 + 1, event);
                if buffer.len() >= SEND_CHUNK {
                    if let Err(e) = copy.send(buffer.as_bytes()).await {
                        sent = Err(e);
                        break 'rows;
                    }
                    buffer.clear();
                }
            }
        }
        if sent.is_ok() && !buffer.is_empty() {
            sent = copy.send(buffer.as_bytes()).await.map(|_| ());
        }
        let mut copied = match sent {
            Ok(()) => copy.finish().await.map(|_| ()),
            Err(e) => {
                let _ = copy.abort("the import failed while sending rows").await;
                Err(e)
            }
        };
        if copied.is_ok() && held {
            copied = sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {schema}.events ({COLUMNS}) \
                 SELECT {COLUMNS} FROM pg_temp.es_import ORDER BY ord"
            )))
            .execute(&mut *tx)
            .await
            .map(|_| ());
        }
        match copied {
            Ok(_) => {}
            Err(err) if is_event_id_conflict(&err) => {
                // Looked up on the import's own connection: a second one may not be free
                // (a pool of one would wait out its acquire timeout).
                tx.rollback().await.map_err(store_error)?;
                return Err(self.reused_id(&mut conn, streams).await);
            }
            Err(err) => return Err(store_error(err)),
        }
        tx.commit().await.map_err(store_error)?;
        self.wake_followers();
        Ok(report)
    }

    /// The first imported event whose id is already stored, as an error.
    async fn reused_id(
        &self,
        conn: &mut sqlx::PgConnection,
        streams: &[(StreamId, Vec<NewEvent>)],
    ) -> StoreError {
        let ids: Vec<Uuid> = streams
            .iter()
            .flat_map(|(_, events)| events.iter().map(|e| e.event_id))
            .collect();
        let found: Result<Option<Uuid>, _> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT event_id FROM {}.events WHERE event_id = ANY($1) LIMIT 1",
            self.schema().quoted()
        )))
        .bind(&ids)
        .fetch_optional(&mut *conn)
        .await;
        match found {
            Ok(Some(id)) => {
                let stream = streams
                    .iter()
                    .find(|(_, events)| events.iter().any(|e| e.event_id == id))
                    .map(|(s, _)| s.clone());
                match stream {
                    Some(stream) => StoreError::EventIdReused {
                        event_id: id,
                        stream,
                        reason: "imports write new events only, and this id is already stored"
                            .to_owned(),
                    },
                    None => internal("an imported event went missing"),
                }
            }
            Ok(None) => internal("an event id of the import was stored, then vanished"),
            Err(err) => store_error(err),
        }
    }
}

fn internal(reason: &str) -> StoreError {
    StoreError::Backend {
        source: reason.into(),
        transient: false,
    }
}

fn is_event_id_conflict(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if db.code().as_deref() == Some(crate::error::UNIQUE_VIOLATION)
            && db.constraint() == Some("events_event_id_key"))
}

/// Appends one row in `COPY`'s text format.
fn copy_row(out: &mut String, stream: &StreamId, version: u64, event: &NewEvent) {
    // Writing to a String cannot fail.
    let _ = write!(out, "{}\t", event.event_id);
    escape(out, stream.as_str());
    let _ = write!(out, "\t{version}\t");
    escape(out, &event.event_type);
    let _ = write!(
        out,
        "\t{}\t{}\t",
        event.schema_version, event.correlation_id
    );
    match event.causation_id {
        Some(id) => {
            let _ = write!(out, "{id}");
        }
        None => out.push_str("\\N"),
    }
    out.push('\t');
    escape(out, event.metadata.as_json());
    out.push('\t');
    escape(out, event.payload.get());
    out.push('\n');
}

/// `COPY` text format: backslash, tab, newline and carriage return are escaped.
fn escape(out: &mut String, value: &str) {
    if !value.contains(['\\', '\t', '\n', '\r']) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn copy_text_escapes_what_copy_would_misread() {
        let mut out = String::new();
        super::escape(&mut out, "{\"a\":\"x\\\"y\",\n\t\"b\":1}\r");
        assert_eq!(out, "{\"a\":\"x\\\\\"y\",\\n\\t\"b\":1}\\r");
        let mut plain = String::new();
        super::escape(&mut plain, "plain");
        assert_eq!(plain, "plain");
    }
}
