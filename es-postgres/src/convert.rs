//! Between the store's unsigned numbers and PostgreSQL's signed `bigint` columns.
//!
//! Stored values are never negative (the schema's checks and identity columns see to it), so
//! negative values read back clamp to 0, and values past `i64::MAX` written clamp to it.

use es_core::Position;

/// A `u64` as a `bigint` parameter.
pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A position's `(transaction_id, position)` columns.
pub(crate) fn position_to_columns(position: Position) -> (i64, i64) {
    (to_i64(position.transaction), to_i64(position.sequence))
}

/// A position from its `(transaction_id, position)` columns.
pub(crate) fn position_from_columns(transaction: i64, sequence: i64) -> Position {
    Position::new(transaction.max(0) as u64, sequence.max(0) as u64)
}

/// A number of seconds read from the database as a duration; `None` for what is not one
/// (negative values clamp to zero; NaN, infinities and overflows are `None`).
pub(crate) fn seconds(value: Option<f64>) -> Option<std::time::Duration> {
    value.and_then(|s| std::time::Duration::try_from_secs_f64(s.max(0.0)).ok())
}

/// `column` as SQL that reads `NULL` for a timestamp no Rust date can hold (`infinity`,
/// `-infinity`, years beyond ±100,000), so a hostile or hand-written value decodes to an error
/// naming the row instead of a panic in the driver.
pub(crate) fn finite(column: &str) -> String {
    format!(
        "CASE WHEN {column} BETWEEN '4000-01-01 BC'::timestamptz AND '100000-01-01'::timestamptz \
         THEN {column} END"
    )
}
